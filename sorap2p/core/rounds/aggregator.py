"""The aggregator's round machine: open, collect, aggregate, publish, await the proof."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sorap2p.core.cid import Cid
from sorap2p.core.codec import decode, encode
from sorap2p.core.ids import PeerId, RoundId, SubnetId
from sorap2p.core.messages import GlobalModel, Rankings, RoundOpen, TrainingParams, UpdateAnnounce
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
    TimerFired,
    UpdateChecked,
    WorkFailed,
)
from sorap2p.core.rounds.fsm import Machine, Rule, Table


class AggState(enum.Enum):
    IDLE = "idle"
    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    PUBLISHED = "published"


@dataclass(frozen=True, slots=True)
class AggregatorParams:
    subnet: SubnetId
    me: PeerId  # the aggregator's own peer id (signer of what it publishes)
    model: str
    round_ms: int
    min_participants: int
    strategy: str
    training: TrainingParams
    strategy_params: dict[str, float] = field(default_factory=dict)
    expected_participants: int = 0  # aggregate early once this many updates checked (0: never)
    fetch_grace_ms: int = 10_000  # after the deadline, wait this long for in-flight fetches
    proof_timeout_ms: int = 120_000
    root_data: Cid | None = None  # the root dataset named in RoundOpen (FLTrust strategies)


DEADLINE = "deadline"
GRACE = "grace"
PROOF = "proof"


class AggregatorMachine(Machine[AggState]):
    TABLE = Table(
        "aggregator",
        [
            Rule(
                AggState.IDLE,
                OpenRound,
                (AggState.COLLECTING,),
                "on_open",
                "publish RoundOpen, arm deadline",
            ),
            Rule(
                AggState.COLLECTING,
                AnnounceReceived,
                (AggState.COLLECTING,),
                "on_announce",
                "first valid announce per trainer: fetch it",
            ),
            Rule(
                AggState.COLLECTING,
                UpdateChecked,
                (AggState.COLLECTING, AggState.AGGREGATING),
                "on_checked",
                "aggregate early when all expected updates are in",
            ),
            Rule(
                AggState.COLLECTING,
                TimerFired,
                (AggState.COLLECTING, AggState.AGGREGATING, AggState.IDLE),
                "on_collect_timer",
                "deadline: wait for in-flight fetches, aggregate, or fail below minimum",
            ),
            Rule(
                AggState.AGGREGATING,
                Aggregated,
                (AggState.PUBLISHED,),
                "on_aggregated",
                "publish GlobalModel and Rankings, arm proof timeout",
            ),
            Rule(AggState.AGGREGATING, WorkFailed, (AggState.IDLE,), "on_failed", "round fails"),
            Rule(
                AggState.PUBLISHED,
                ProofObserved,
                (AggState.PUBLISHED, AggState.IDLE),
                "on_proof",
                "round finalized on chain",
            ),
            Rule(
                AggState.PUBLISHED,
                TimerFired,
                (AggState.PUBLISHED, AggState.IDLE),
                "on_proof_timer",
                "no quorum proof in time: round fails",
            ),
        ],
    )

    def __init__(self, params: AggregatorParams) -> None:
        super().__init__(AggState.IDLE)
        self.params = params
        self.round_open: RoundOpen | None = None
        self.announces: dict[Cid, UpdateAnnounce] = {}
        self.trainers: set[PeerId] = set()
        self.checked: dict[Cid, bool] = {}
        self.model: Cid | None = None
        self.published: Aggregated | None = None
        self.last_finalized: RoundId | None = None

    # -- handlers ----------------------------------------------------------------------
    def on_open(self, ev: OpenRound, now: int) -> tuple[AggState, list[Any]]:
        p = self.params
        msg = RoundOpen(
            subnet=p.subnet,
            round=ev.round,
            global_model=ev.global_model,
            model=p.model,
            opened_at=now,
            deadline=now + p.round_ms,
            min_participants=p.min_participants,
            recipients=ev.recipients,
            strategy=p.strategy,
            strategy_params=dict(p.strategy_params),
            training=p.training,
            signer=p.me,
            root_data=p.root_data,
        )
        self.round_open = msg
        self.announces.clear()
        self.trainers.clear()
        self.checked.clear()
        self.model = None
        return AggState.COLLECTING, [
            Publish(msg),
            SetTimer(DEADLINE, ev.round, msg.deadline),
            Persist(),
        ]

    def on_announce(self, ev: AnnounceReceived, now: int) -> tuple[AggState, list[Any]]:
        ro = self._open()
        a = ev.message
        if (
            a.round != ro.round
            or a.subnet != ro.subnet
            or a.base_model != ro.global_model
            or a.signer in self.trainers
            or a.update in self.announces
            or not ro.opened_at <= a.timestamp <= ro.deadline
            or ev.received_at > ro.deadline
        ):
            return AggState.COLLECTING, []
        self.announces[a.update] = a
        self.trainers.add(a.signer)
        return AggState.COLLECTING, [FetchUpdate(a), Persist()]

    def on_checked(self, ev: UpdateChecked, now: int) -> tuple[AggState, list[Any]]:
        if ev.update not in self.announces or ev.update in self.checked:
            return AggState.COLLECTING, []
        self.checked[ev.update] = ev.ok
        good = sum(self.checked.values())
        expected = self.params.expected_participants
        if expected and good >= expected and good >= self.params.min_participants:
            return self._aggregate()
        return AggState.COLLECTING, [Persist()]

    def on_collect_timer(self, ev: TimerFired, now: int) -> tuple[AggState, list[Any]]:
        ro = self._open()
        if ev.round != ro.round:
            return AggState.COLLECTING, []
        pending = len(self.announces) - len(self.checked)
        if ev.name == DEADLINE and pending > 0:
            return AggState.COLLECTING, [
                SetTimer(GRACE, ro.round, ro.deadline + self.params.fetch_grace_ms)
            ]
        if ev.name not in (DEADLINE, GRACE):
            return AggState.COLLECTING, []
        good = sum(self.checked.values())
        if good < self.params.min_participants:
            return AggState.IDLE, [
                RoundFinished(
                    ro.round, False, f"{good} valid updates, need {self.params.min_participants}"
                ),
                Persist(),
            ]
        return self._aggregate()

    def on_aggregated(self, ev: Aggregated, now: int) -> tuple[AggState, list[Any]]:
        ro = self._open()
        self.model = ev.model.model
        self.published = ev
        return AggState.PUBLISHED, [
            Publish(ev.model),
            Publish(ev.rankings),
            SetTimer(PROOF, ro.round, now + self.params.proof_timeout_ms),
            Persist(),
        ]

    def on_failed(self, ev: WorkFailed, now: int) -> tuple[AggState, list[Any]]:
        return AggState.IDLE, [RoundFinished(self._open().round, False, ev.reason), Persist()]

    def on_proof(self, ev: ProofObserved, now: int) -> tuple[AggState, list[Any]]:
        ro = self._open()
        if ev.round != ro.round:
            return AggState.PUBLISHED, []
        self.last_finalized = ro.round
        return AggState.IDLE, [RoundFinished(ro.round, True), Persist()]

    def on_proof_timer(self, ev: TimerFired, now: int) -> tuple[AggState, list[Any]]:
        ro = self._open()
        if ev.round != ro.round or ev.name != PROOF:
            return AggState.PUBLISHED, []
        return AggState.IDLE, [RoundFinished(ro.round, False, "no quorum proof"), Persist()]

    # -- helpers -----------------------------------------------------------------------
    def _open(self) -> RoundOpen:
        assert self.round_open is not None
        return self.round_open

    def _aggregate(self) -> tuple[AggState, list[Any]]:
        ok = tuple(self.announces[c] for c in sorted(self.announces) if self.checked.get(c, False))
        return AggState.AGGREGATING, [Aggregate(self._open(), ok), Persist()]

    @property
    def accepted(self) -> tuple[UpdateAnnounce, ...]:
        return tuple(
            self.announces[c] for c in sorted(self.announces) if self.checked.get(c, False)
        )

    def resume(self, now: int) -> list[Any]:
        """Actions that re-start the work in flight after `restore` (a process restart)."""
        if self.round_open is None:
            return []
        ro = self.round_open
        if self.state is AggState.COLLECTING:
            pending = [
                FetchUpdate(a) for c, a in sorted(self.announces.items()) if c not in self.checked
            ]
            return [*pending, SetTimer(DEADLINE, ro.round, ro.deadline)]
        if self.state is AggState.AGGREGATING:
            return [Aggregate(ro, self.accepted)]
        if self.state is AggState.PUBLISHED and self.published is not None:
            return [
                Publish(self.published.model),
                Publish(self.published.rankings),
                SetTimer(PROOF, ro.round, now + self.params.proof_timeout_ms),
            ]
        return []

    # -- persistence -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able snapshot; `restore` rebuilds the machine after a restart."""
        return {
            "state": self.state.value,
            "round_open": encode(self.round_open).hex() if self.round_open else None,
            "announces": [encode(a).hex() for a in self.announces.values()],
            "checked": {str(c): ok for c, ok in self.checked.items()},
            "model": str(self.model) if self.model else None,
            "published": [encode(self.published.model).hex(), encode(self.published.rankings).hex()]
            if self.published
            else None,
            "last_finalized": self.last_finalized.number if self.last_finalized else None,
        }

    @classmethod
    def restore(cls, params: AggregatorParams, snap: dict[str, Any]) -> AggregatorMachine:
        m = cls(params)
        m.state = AggState(snap["state"])
        if snap["round_open"]:
            m.round_open = decode(bytes.fromhex(snap["round_open"]), RoundOpen)
        for raw in snap["announces"]:
            a = decode(bytes.fromhex(raw), UpdateAnnounce)
            m.announces[a.update] = a
            m.trainers.add(a.signer)
        m.checked = {Cid.parse(c): bool(ok) for c, ok in snap["checked"].items()}
        m.model = Cid.parse(snap["model"]) if snap["model"] else None
        if snap.get("published"):
            gm, rk = (bytes.fromhex(x) for x in snap["published"])
            m.published = Aggregated(decode(gm, GlobalModel), decode(rk, Rankings))
        if snap["last_finalized"] is not None:
            m.last_finalized = RoundId(snap["last_finalized"])
        return m
