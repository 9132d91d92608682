"""The trainer role: on RoundOpen fetch the global model, train on private data, encrypt
the delta for the round's recipients, store it, and announce it. Raw data never leaves."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import trio

from sorap2p.core import messages as m
from sorap2p.core.ids import Role
from sorap2p.core.rounds.events import (
    CancelWork,
    Publish,
    RoundFinished,
    RoundOpened,
    Train,
    TrainingDone,
    WorkFailed,
)
from sorap2p.core.rounds.trainer import TrainerMachine, TrainerParams
from sorap2p.core.topics import TopicKind
from sorap2p.learn.data import load_dataset, trainer_shard
from sorap2p.learn.train import DataLike, TrainConfig
from sorap2p.node import work
from sorap2p.node.driver import Driver
from sorap2p.node.logs import bind
from sorap2p.node.roles.common import Tasks, pump, refetching
from sorap2p.node.services import Services
from sorap2p.store.errors import StoreFullError

_log = logging.getLogger(__name__)


def store_full(exc: BaseException) -> StoreFullError | None:
    """The `StoreFullError` behind ``exc``: itself, a cause, or one of a group's (parallel
    fetches raise exception groups)."""
    todo, seen = [exc], set()
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, StoreFullError):
            return cur
        if isinstance(cur, BaseExceptionGroup):
            todo.extend(cur.exceptions)
        todo.extend(e for e in (cur.__cause__, cur.__context__) if e is not None)
    return None


@dataclass(frozen=True, slots=True)
class PrivateData:
    train: DataLike
    device_hash: bytes


def load_private_data(services: Services) -> PrivateData:
    """The trainer's local data: a user loader (``node.data``) or a demo shard."""
    cfg = services.config
    ref = cfg.node.data or cfg.learn.dataset
    splits = load_dataset(ref)
    train: DataLike = splits.train
    if not cfg.node.data and cfg.node.shards > 1:
        train = trainer_shard(
            splits.train,
            cfg.node.shard,
            cfg.node.shards,
            cfg.learn.dirichlet_alpha,
            cfg.learn.seed,
        )
    if cfg.node.behaviour == "label_flip":  # Byzantine trainer (tests, demos)
        train = work.flip_labels(train, splits.num_classes)
    salt = hashlib.sha256(services.identity.seed + b"/device-salt").digest()
    device = hashlib.sha256(salt + services.identity.peer_id.raw).digest()
    return PrivateData(train, device)


async def run_trainer(services: Services, *, data: PrivateData | None = None) -> None:
    log = bind(
        _log, role="trainer", subnet=str(services.subnet), peer=str(services.identity.peer_id)
    )
    private: PrivateData = (
        data if data is not None else await trio.to_thread.run_sync(load_private_data, services)
    )
    cfg = services.config.learn
    machine = TrainerMachine(
        TrainerParams(
            services.subnet,
            services.identity.peer_id,
            services.view.get().aggregator,
        )
    )
    status: dict[str, Any] = services.extras.setdefault("status", {})
    status.update(role=Role.TRAINER.value, rounds_trained=0, last_round=None)

    async with trio.open_nursery() as nursery:
        tasks = Tasks(nursery)

        async def fetch_and_train(ro: m.RoundOpen) -> work.TrainedUpdate:
            tc = TrainConfig(
                epochs=ro.training.epochs,
                batch_size=ro.training.batch_size,
                lr=ro.training.lr,
                prox_mu=ro.training.prox_mu,
                momentum=ro.training.momentum,
                num_threads=cfg.num_threads,
            )
            transform = work.adversarial_transform(
                services.config.node.behaviour, cfg.seed + ro.round.number
            )

            async def fetch() -> None:
                await services.fetch_dag(ro.global_model, [ro.signer])

            async def use() -> work.TrainedUpdate:
                up: work.TrainedUpdate = await trio.to_thread.run_sync(
                    work.train_update,
                    services.blocks,
                    services.identity,
                    ro,
                    private.train,
                    tc,
                    cfg.seed + ro.round.number,
                    transform,
                )
                return up

            return await refetching(fetch, use, f"round {ro.round}", log)

        async def train(ro: m.RoundOpen) -> None:
            started = services.now()
            try:
                up = await fetch_and_train(ro)
            except Exception as exc:
                full = store_full(exc)
                if full is not None:
                    log.error(  # noqa: TRY400 - one clear line; the cause is known
                        "round %s: skipped, the block store is full (%s); "
                        "free space and the next round runs again",
                        ro.round,
                        full,
                    )
                    await driver.feed(WorkFailed(f"block store full: {full}"[:200]))
                    return
                log.warning("round %s: training failed: %s", ro.round, exc)
                await driver.feed(WorkFailed(str(exc)[:200]))
                return
            now = services.now()
            agg = next((r for r in ro.recipients if r.role is Role.AGGREGATOR), ro.recipients[0])
            announce = m.UpdateAnnounce(
                subnet=ro.subnet,
                round=ro.round,
                update=up.update,
                base_model=ro.global_model,
                device_hash=private.device_hash,
                num_samples=up.num_samples,
                update_size=up.update_size,
                timestamp=now,
                train_ms=max(0, now - started),
                encrypted_metrics=work.seal_metrics(agg.x25519, up.train_loss, up.accuracy),
                signer=services.identity.peer_id,
            )
            log.info(
                "round %s: trained on %d samples (loss %.3f, local acc %.3f)",
                ro.round,
                up.num_samples,
                up.train_loss,
                up.accuracy,
            )
            await driver.feed(TrainingDone(announce))

        async def reannounce(msg: m.UpdateAnnounce, deadline: int) -> None:
            """Repeat the announce until the deadline: an aggregator that restarted mid-round
            missed it (gossip keeps no history)."""
            period = services.config.round.reannounce_s
            while services.now() + period * 1000 < deadline:
                await trio.sleep(period)
                try:
                    await services.publish(msg)
                except Exception as exc:
                    log.debug("re-announce failed: %s", exc)

        async def perform(action: Any) -> None:
            if isinstance(action, Train):
                tasks.start(action.round_open.round, lambda: train(action.round_open))
            elif isinstance(action, CancelWork):
                tasks.cancel(action.round)
            elif isinstance(action, Publish):
                await services.publish(action.message)
                cur = machine.current
                if isinstance(action.message, m.UpdateAnnounce) and cur is not None:
                    msg, deadline = action.message, cur.deadline
                    tasks.start(("reannounce", msg.round), lambda: reannounce(msg, deadline))
            elif isinstance(action, RoundFinished):
                status["last_round"] = action.round.number
                if action.ok:
                    status["rounds_trained"] += 1
                else:
                    log.info("round %s: no update sent (%s)", action.round, action.reason)

        driver = Driver(machine, perform, services.clock)
        services.extras["driver"] = driver
        await nursery.start(driver.run)
        await nursery.start(
            pump, services, TopicKind.ROUNDS, driver, lambda msg, now: RoundOpened(msg)
        )
        log.info("trainer ready")
