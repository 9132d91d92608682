"""The aggregator role: open rounds, collect and open updates, aggregate, publish the new
global model with its rankings and metadata, and move on once the round is proven.

Its round machine is persisted after every transition (``HOME/aggregator-state.json``) and
resumed after a restart; in-flight fetches and aggregation are started again."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trio

from sorap2p.core import messages as m
from sorap2p.core.cid import Cid
from sorap2p.core.crypto import x25519_public_from_peer
from sorap2p.core.errors import SoraError
from sorap2p.core.ids import PeerId, Role, RoundId
from sorap2p.core.rounds.aggregator import AggregatorMachine, AggregatorParams, AggState
from sorap2p.core.rounds.events import (
    Aggregate,
    Aggregated,
    AnnounceReceived,
    FetchUpdate,
    OpenRound,
    Persist,
    ProofObserved,
    Publish,
    RoundFinished,
    SetTimer,
    UpdateChecked,
    WorkFailed,
)
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.node import work
from sorap2p.node.driver import Driver
from sorap2p.node.home import write_atomic
from sorap2p.node.logs import bind
from sorap2p.node.proofs import ProofBackend
from sorap2p.node.roles.common import (
    Tasks,
    pump,
    refetching,
    wait_for_validator_set,
    watch_for_proof,
)
from sorap2p.node.services import Services

_log = logging.getLogger(__name__)
STATE_FILE = "aggregator-state.json"


def aggregator_params(services: Services, root_data: Cid | None = None) -> AggregatorParams:
    cfg = services.config
    return AggregatorParams(
        subnet=services.subnet,
        me=services.identity.peer_id,
        model=cfg.learn.model,
        round_ms=int(cfg.round.duration_s * 1000),
        min_participants=cfg.round.min_participants,
        strategy=cfg.round.strategy,
        strategy_params=cfg.round.params(),
        training=m.TrainingParams(
            epochs=cfg.learn.epochs,
            batch_size=cfg.learn.batch_size,
            lr=cfg.learn.lr,
            prox_mu=cfg.learn.prox_mu,
            momentum=cfg.learn.momentum,
        ),
        expected_participants=cfg.round.expected_participants,
        fetch_grace_ms=int(cfg.round.fetch_grace_s * 1000),
        proof_timeout_ms=int(cfg.round.proof_timeout_s * 1000),
        root_data=root_data,
    )


def recipients(services: Services) -> tuple[m.Recipient, ...]:
    """The aggregator itself plus every validator of the subnet."""
    me = services.identity
    out = [m.Recipient(me.peer_id, Role.AGGREGATOR, me.x25519_public)]
    validators = services.view.get().validator_addresses.values() or [
        PeerId.parse(p) for p in services.config.round.validators
    ]
    for peer in sorted(set(validators)):
        out.append(m.Recipient(peer, Role.VALIDATOR, x25519_public_from_peer(peer)))
    return tuple(out)


@dataclass
class Head:
    """The last proven global model (the next round starts from it)."""

    model: Cid
    round: int


def _write_state(path: Path, snap: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(snap), durable=True)


async def run_aggregator(
    services: Services, proofs: ProofBackend | None = None, *, ready: trio.Event | None = None
) -> None:
    log = bind(
        _log, role="aggregator", subnet=str(services.subnet), peer=str(services.identity.peer_id)
    )
    cfg = services.config
    ctx = work.model_context(cfg.learn.model, cfg.learn.seed)
    params = services.params
    head = params.head()
    if head is None:
        genesis = await trio.to_thread.run_sync(
            work.store_genesis, services.blocks, cfg.learn.model, cfg.learn.seed
        )
        head = await trio.to_thread.run_sync(params.add_global, RoundId(0), genesis)
        log.info("genesis model %s", genesis)
    current = Head(Cid.parse(head.root), head.round)
    state_path = services.home.path / STATE_FILE
    root_cid = None  # the subnet's root dataset, for strategies with a reference delta
    if work.strategy_needs_reference(cfg.round.strategy, cfg.round.params()):
        root = await trio.to_thread.run_sync(
            work.root_dataset, cfg.learn.dataset, cfg.round.root_size, cfg.learn.seed
        )
        root_cid = await trio.to_thread.run_sync(work.store_root_data, services.blocks, root)
        log.info("root dataset of %d samples: %s", cfg.round.root_size, root_cid)
    agg_params = aggregator_params(services, root_cid)
    if state_path.is_file():
        machine = AggregatorMachine.restore(agg_params, json.loads(state_path.read_text()))
        if machine.round_open is not None:
            services.rules.remember_round(machine.round_open)
        log.info("resumed in state %s", machine.state.name)
    else:
        machine = AggregatorMachine(agg_params)
    rows: dict[Cid, torch.Tensor] = {}
    finished = trio.Event()
    status: dict[str, Any] = services.extras.setdefault("status", {})
    status.update(role=Role.AGGREGATOR.value, rounds=[], head_round=head.round)
    last_opened = {
        "round": max(head.round, machine.round_open.round.number if machine.round_open else 0)
    }

    async with trio.open_nursery() as nursery:
        tasks = Tasks(nursery)

        async def fetch(announce: m.UpdateAnnounce) -> None:
            row = torch.empty(ctx.spec.size, dtype=torch.float32)

            async def get() -> None:
                await services.fetch_dag(announce.update, [announce.signer])

            async def open_it() -> None:
                await trio.to_thread.run_sync(
                    work.open_update, services.blocks, services.identity, announce.update, ctx, row
                )

            try:
                await refetching(get, open_it, f"update {announce.update}", log)
            except (SoraError, OSError) as exc:
                log.warning("update %s of %s refused: %s", announce.update, announce.signer, exc)
                await driver.feed(UpdateChecked(announce.update, False, str(exc)[:200]))
                return
            rows[announce.update] = row
            await driver.feed(UpdateChecked(announce.update, True))

        async def byzantine_choice(
            ro: m.RoundOpen, updates: list[m.UpdateAnnounce]
        ) -> tuple[list[m.UpdateAnnounce], dict[Cid, torch.Tensor]]:
            """The updates to aggregate: all of them, unless this aggregator is Byzantine
            (tests and demos): drop_update silently leaves out the first one; fake_update
            injects one of its own that no trainer announced."""
            picked = dict(rows)
            if cfg.node.behaviour == "drop_update" and len(updates) > 1:
                return updates[1:], picked
            if cfg.node.behaviour == "fake_update":
                forged, row = await trio.to_thread.run_sync(
                    work.forge_update, services.blocks, services.identity, ro, ctx, services.now()
                )
                picked[forged.update] = row
                return sorted([*updates, forged], key=lambda a: a.update), picked
            return updates, picked

        async def aggregate(action: Aggregate) -> None:
            ro = action.round_open
            try:
                missing = [a for a in action.updates if a.update not in rows]
                for a in missing:  # after a restart: open them again
                    await fetch(a)
                updates, picked = await byzantine_choice(ro, list(action.updates))
                stacked = torch.stack([picked[a.update] for a in updates])
                global_vec = await trio.to_thread.run_sync(
                    work.load_vector, services.blocks, ro.global_model, ctx
                )
                rejected = {c: "refused" for c, ok in machine.checked.items() if not ok}
                root = None
                if ro.root_data is not None:
                    root = await trio.to_thread.run_sync(
                        work.load_root_data, services.blocks, ro.root_data
                    )
                res = await trio.to_thread.run_sync(
                    work.aggregate_round,
                    services.blocks,
                    ro,
                    updates,
                    stacked,
                    global_vec,
                    ctx,
                    rejected,
                    root,
                )
            except Exception as exc:
                log.exception("round %s: aggregation failed", ro.round)
                await driver.feed(WorkFailed(f"aggregation failed: {exc}"[:200]))
                return
            if cfg.node.behaviour == "wrong_model":  # Byzantine aggregator (tests, demos)
                bad = res.vector + 0.01 * torch.sign(res.vector)
                bad_cid = await trio.to_thread.run_sync(
                    work.store_vector, services.blocks, bad, ctx, ro.round.number
                )
                res = dataclasses.replace(res, model=bad_cid, vector=bad)
            elif cfg.node.behaviour == "fake_rankings":  # the worst trainer ranked first
                fake = tuple(
                    dataclasses.replace(e, rank=i + 1) for i, e in enumerate(reversed(res.ranking))
                )
                res = dataclasses.replace(res, ranking=fake)
            gm = m.GlobalModel(
                subnet=ro.subnet,
                round=ro.round,
                model=res.model,
                parent=ro.global_model,
                strategy=ro.strategy,
                updates=tuple(a.update for a in updates),
                num_samples=sum(a.num_samples for a in updates),
                metadata=res.metadata,
                created_at=services.now(),
                signer=services.identity.peer_id,
            )
            rk = m.Rankings(
                subnet=ro.subnet,
                round=ro.round,
                model=res.model,
                entries=res.ranking,
                signer=services.identity.peer_id,
            )
            services.extras["last_result"] = res
            log.info("round %s: aggregated %d updates into %s", ro.round, len(updates), res.model)
            await driver.feed(Aggregated(gm, rk))

        async def republish(ro: m.RoundOpen) -> None:
            """Publish the round's RoundOpen again every ``round.reannounce_s`` until its
            deadline: a peer that joined (or restarted) after the first copy still hears
            of the round; peers that have it IGNORE the copy as a duplicate."""
            while True:
                await trio.sleep(cfg.round.reannounce_s)
                current_open = machine.round_open
                if (
                    machine.state is not AggState.COLLECTING
                    or current_open is None
                    or current_open.round != ro.round
                    or services.now() >= ro.deadline
                ):
                    return
                try:
                    await services.publish(ro, repeat=True)
                except SoraError as exc:  # no peers yet: the next copy may go out
                    log.debug("round %s: RoundOpen not re-published: %s", ro.round, exc)

        async def perform(action: Any) -> None:
            if isinstance(action, Publish):
                await services.publish(action.message)
                if isinstance(action.message, m.RoundOpen):
                    ro_msg = action.message
                    tasks.start(("reopen", ro_msg.round), lambda: republish(ro_msg))
                if isinstance(action.message, m.GlobalModel):
                    r = action.message.round
                    if proofs is not None:
                        backend = proofs
                        tasks.start(
                            ("watch", r), lambda: watch_for_proof(services, backend, r, driver)
                        )
            elif isinstance(action, Persist):
                _write_state(state_path, machine.snapshot())
            elif isinstance(action, FetchUpdate):
                tasks.start(("fetch", action.announce.update), lambda: fetch(action.announce))
            elif isinstance(action, Aggregate):
                tasks.start(("aggregate", action.round_open.round), lambda: aggregate(action))
            elif isinstance(action, RoundFinished):
                tasks.cancel(("watch", action.round))
                await round_finished(action)

        async def round_finished(ev: RoundFinished) -> None:
            entry = {
                "round": ev.round.number,
                "ok": ev.ok,
                "reason": ev.reason,
                "at": services.now(),
            }
            if ev.ok and machine.published is not None:
                gm = machine.published.model
                rec = await trio.to_thread.run_sync(
                    lambda: params.add_global(
                        ev.round,
                        gm.model,
                        meta={
                            "parent_round": current.round,
                            "updates": len(gm.updates),
                            "metadata": str(gm.metadata),
                        },
                    ),
                )
                current.model, current.round = gm.model, rec.round
                status["head_round"] = rec.round
                entry["model"] = str(gm.model)
                log.info("round %s finalized: model %s", ev.round, gm.model)
            else:
                log.warning("round %s failed: %s", ev.round, ev.reason)
            for c in list(rows):
                del rows[c]
            status["rounds"].append(entry)
            finished.set()

        driver = Driver(machine, perform, services.clock)
        services.extras["driver"] = driver
        await nursery.start(driver.run)
        await nursery.start(
            pump, services, TopicKind.UPDATES, driver, lambda msg, now: AnnounceReceived(msg, now)
        )
        await nursery.start(
            pump,
            services,
            TopicKind.PROOFS,
            driver,
            lambda msg, now: ProofObserved(msg.round, msg.tx_hash),
        )
        for action in machine.resume(services.now()):
            if isinstance(action, SetTimer):  # the deadline or proof timer of the round
                driver.arm(action)
            else:
                await perform(action)
        resumed = machine.round_open
        if machine.state is AggState.COLLECTING and resumed is not None:
            tasks.start(("reopen", resumed.round), lambda: republish(resumed))
        if ready is not None:
            ready.set()
        log.info("aggregator ready (head round %d)", current.round)

        await wait_for_validator_set(services, cfg.round.start_timeout_s)
        if cfg.round.start_peers:
            with trio.move_on_after(cfg.round.start_timeout_s):
                await services.gossip.wait_for_topic_peers(
                    Topic(services.subnet, TopicKind.ROUNDS), cfg.round.start_peers
                )
            await trio.sleep(2.0)  # let late joiners refresh their registry view
        limit = cfg.round.rounds  # the last round number to run (0: forever)
        while True:
            if machine.state is not AggState.IDLE:
                finished = trio.Event()
                await finished.wait()
                continue
            if limit and last_opened["round"] >= limit:
                break
            await trio.sleep(cfg.round.pause_s)
            number = last_opened["round"] + 1
            last_opened["round"] = number
            finished = trio.Event()
            log.info("opening round %d from model %s", number, current.model)
            await driver.feed(OpenRound(RoundId(number), current.model, recipients(services)))
            await finished.wait()
        status["done"] = True
        log.info("round %d reached: done", last_opened["round"])
        nursery.cancel_scope.cancel()
