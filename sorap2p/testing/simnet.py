"""An in-memory subnet: the three round machines under real `Driver`s, wired by a fake
gossip bus and a fake chain. Work (training, fetching, aggregating, checking) is simulated
with configurable durations, so whole rounds run in milliseconds under `autojump_clock`.

This tests the protocol logic (timeouts, quorum, rotation, failures); the real network,
blockstore, torch and chain are tested elsewhere with real parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from sorap2p.core import messages as m
from sorap2p.core.cid import DAG_CBOR, Cid
from sorap2p.core.ids import PeerId, RoundId
from sorap2p.core.rounds.aggregator import AggregatorMachine, AggregatorParams
from sorap2p.core.rounds.events import (
    Aggregate,
    Aggregated,
    AnnounceReceived,
    CancelWork,
    CastVote,
    CheckDone,
    CheckRound,
    FetchUpdate,
    ModelPublished,
    OpenRound,
    Persist,
    ProofObserved,
    Publish,
    RaiseDispute,
    RankingsPublished,
    RoundFinished,
    RoundOpened,
    SubmitProof,
    Train,
    TrainingDone,
    UpdateChecked,
    VoteSeen,
)
from sorap2p.core.rounds.trainer import TrainerMachine, TrainerParams
from sorap2p.core.rounds.validator import ValidatorMachine, ValidatorParams
from sorap2p.node.driver import Driver, trio_clock_ms
from sorap2p.testing.factories import SUBNET, Cast, eth_address, training


@dataclass
class SimChain:
    """Accepts the first valid proof per round; counts refused duplicates."""

    quorum: int
    proofs: dict[RoundId, SubmitProof] = field(default_factory=dict)
    duplicates: int = 0
    disputes: list[RaiseDispute] = field(default_factory=list)
    on_proof: Callable[[RoundId], None] = lambda r: None

    def submit(self, proof: SubmitProof) -> bool:
        if proof.round in self.proofs or len(proof.signatures) < self.quorum:
            self.duplicates += 1
            return False
        self.proofs[proof.round] = proof
        self.on_proof(proof.round)
        return True


@dataclass
class SimConfig:
    validators: int = 3
    trainers: int = 5
    quorum: int = 2
    round_ms: int = 30_000
    train_ms: int = 5_000
    fetch_ms: int = 200
    check_ms: int = 1_000
    offline_validators: frozenset[int] = frozenset()
    dead_trainers: frozenset[int] = frozenset()  # never finish training
    wrong_model: bool = False  # the aggregator publishes a model validators reject


class SimNet:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.cast = Cast.make(cfg.validators, cfg.trainers)
        self.chain = SimChain(cfg.quorum, on_proof=self._proof_landed)
        self.finished: dict[str, list[RoundFinished]] = {}
        self.round_done = trio.Event()
        self.agg = Driver(
            AggregatorMachine(
                AggregatorParams(
                    subnet=SUBNET,
                    me=self.cast.aggregator.peer_id,
                    model="digits_cnn",
                    round_ms=cfg.round_ms,
                    min_participants=1,
                    strategy="fedavg",
                    training=training(),
                    expected_participants=cfg.trainers,
                    fetch_grace_ms=2_000,
                    proof_timeout_ms=60_000,
                )
            ),
            self._perform_agg,
            trio_clock_ms,
        )
        self.trainers = [
            Driver(
                TrainerMachine(TrainerParams(SUBNET, t.peer_id, self.cast.aggregator.peer_id)),
                self._trainer_perform(i),
                trio_clock_ms,
            )
            for i, t in enumerate(self.cast.trainers)
        ]
        peers = tuple(v.peer_id for v in self.cast.validators)
        self.validators = [
            Driver(
                ValidatorMachine(
                    ValidatorParams(
                        subnet=SUBNET,
                        me=v.peer_id,
                        validators=peers,
                        quorum=cfg.quorum,
                        aggregator=self.cast.aggregator.peer_id,
                        model_grace_ms=20_000,
                        backup_ms=3_000,
                        vote_timeout_ms=60_000,
                    )
                ),
                self._validator_perform(i),
                trio_clock_ms,
            )
            for i, v in enumerate(self.cast.validators)
        ]
        self._nursery: trio.Nursery | None = None

    # -- bus -------------------------------------------------------------------------------
    def _online_validators(self) -> list[Driver]:
        return [v for i, v in enumerate(self.validators) if i not in self.cfg.offline_validators]

    async def _broadcast(self, msg: Any, sender: PeerId) -> None:
        now = trio_clock_ms()
        if isinstance(msg, m.RoundOpen):
            for d in [*self.trainers, *self._online_validators()]:
                await d.feed(RoundOpened(msg))
        elif isinstance(msg, m.UpdateAnnounce):
            for d in [self.agg, *self._online_validators()]:
                await d.feed(AnnounceReceived(msg, now))
        elif isinstance(msg, m.GlobalModel):
            for d in self._online_validators():
                await d.feed(ModelPublished(msg))
        elif isinstance(msg, m.Rankings):
            for d in self._online_validators():
                await d.feed(RankingsPublished(msg))
        elif isinstance(msg, m.ValidationVote):
            for d in self._online_validators():
                await d.feed(VoteSeen(msg))

    def _proof_landed(self, round: RoundId) -> None:
        for d in [self.agg, *self._online_validators()]:
            d.feed_nowait(ProofObserved(round, b"\x01" * 32))

    def _finish(self, who: str, ev: RoundFinished) -> None:
        self.finished.setdefault(who, []).append(ev)
        if who == "aggregator":
            self.round_done.set()

    # -- performers --------------------------------------------------------------------
    def _spawn(self, fn: Callable[[], Any]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    async def _perform_agg(self, action: Any) -> None:
        key = self.cast.aggregator
        if isinstance(action, Publish):
            await self._broadcast(m.sign(key, action.message), key.peer_id)
        elif isinstance(action, FetchUpdate):

            async def fetch() -> None:
                await trio.sleep(self.cfg.fetch_ms / 1000)
                await self.agg.feed(UpdateChecked(action.announce.update, True))

            self._spawn(fetch)
        elif isinstance(action, Aggregate):
            ro = action.round_open
            label = b"wrong" if self.cfg.wrong_model else b"right"
            model = Cid.hash(label + ro.round.number.to_bytes(8, "big"), DAG_CBOR)
            gm = m.GlobalModel(
                subnet=SUBNET,
                round=ro.round,
                model=model,
                parent=ro.global_model,
                strategy=ro.strategy,
                updates=tuple(a.update for a in action.updates),
                num_samples=sum(a.num_samples for a in action.updates),
                metadata=Cid.hash(b"meta", DAG_CBOR),
                created_at=trio_clock_ms(),
                signer=key.peer_id,
            )
            rk = m.Rankings(
                subnet=SUBNET,
                round=ro.round,
                model=model,
                entries=tuple(
                    m.RankEntry(a.signer, a.update, 0, i + 1) for i, a in enumerate(action.updates)
                ),
                signer=key.peer_id,
            )
            await self.agg.feed(Aggregated(gm, rk))
        elif isinstance(action, RoundFinished):
            self._finish("aggregator", action)
        elif not isinstance(action, Persist):
            raise TypeError(f"unexpected aggregator action {action!r}")

    def _trainer_perform(self, i: int) -> Callable[[Any], Any]:
        key = self.cast.trainers[i]
        cancels: dict[RoundId, trio.CancelScope] = {}

        async def perform(action: Any) -> None:
            if isinstance(action, Train):
                ro = action.round_open
                if i in self.cfg.dead_trainers:
                    return

                async def train() -> None:
                    with trio.CancelScope() as scope:
                        cancels[ro.round] = scope
                        start = trio_clock_ms()
                        await trio.sleep(self.cfg.train_ms / 1000)
                        now = trio_clock_ms()
                        a = m.UpdateAnnounce(
                            subnet=SUBNET,
                            round=ro.round,
                            update=Cid.hash(
                                bytes(key.peer_id.raw) + ro.round.number.to_bytes(8, "big"),
                                DAG_CBOR,
                            ),
                            base_model=ro.global_model,
                            device_hash=hashlib.sha256(key.seed).digest(),
                            num_samples=100,
                            update_size=1000,
                            timestamp=now,
                            train_ms=now - start,
                            encrypted_metrics=b"",
                            signer=key.peer_id,
                        )
                        await self.trainers[i].feed(TrainingDone(a))

                self._spawn(train)
            elif isinstance(action, CancelWork):
                scope = cancels.pop(action.round, None)
                if scope is not None:
                    scope.cancel()
            elif isinstance(action, Publish):
                await self._broadcast(m.sign(key, action.message), key.peer_id)
            elif isinstance(action, RoundFinished):
                self._finish(f"trainer-{i}", action)

        return perform

    def _validator_perform(self, i: int) -> Callable[[Any], Any]:
        key = self.cast.validators[i]

        async def perform(action: Any) -> None:
            if isinstance(action, CheckRound):

                async def check() -> None:
                    await trio.sleep(self.cfg.check_ms / 1000)
                    ok = not self.cfg.wrong_model
                    digest = hashlib.sha256(action.model.model.raw).digest()
                    await self.validators[i].feed(
                        CheckDone(
                            ok,
                            digest,
                            "" if ok else "wrong aggregate",
                            None if ok else action.model.signer,
                        )
                    )

                self._spawn(check)
            elif isinstance(action, CastVote):
                vote = m.ValidationVote(
                    subnet=SUBNET,
                    round=action.round,
                    model=action.model,
                    approve=action.approve,
                    record_digest=action.record_digest,
                    eth_address=eth_address(i),
                    eth_signature=bytes([i + 1]) * 65 if action.approve else b"",
                    reason=action.reason,
                    signer=key.peer_id,
                )
                await self._broadcast(m.sign(key, vote), key.peer_id)
            elif isinstance(action, SubmitProof):
                self.chain.submit(action)
            elif isinstance(action, RaiseDispute):
                self.chain.disputes.append(action)
            elif isinstance(action, RoundFinished):
                self._finish(f"validator-{i}", action)

        return perform

    # -- running ---------------------------------------------------------------------------
    async def run_round(self, round: int, model: Cid) -> RoundFinished:
        """Open ``round`` and wait until the aggregator reports it finished."""
        self.round_done = trio.Event()
        await self.agg.feed(OpenRound(RoundId(round), model, self.cast.recipients()))
        await self.round_done.wait()
        return self.finished["aggregator"][-1]

    async def __aenter__(self) -> SimNet:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        for d in [self.agg, *self.trainers, *self.validators]:
            await self._nursery.start(d.run)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        await self._cm.__aexit__(None, None, None)
