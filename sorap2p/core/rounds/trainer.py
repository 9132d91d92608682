"""The trainer's round machine: on RoundOpen train, then announce before the deadline."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sorap2p.core.ids import PeerId, RoundId, SubnetId
from sorap2p.core.messages import RoundOpen
from sorap2p.core.rounds.events import (
    CancelWork,
    Publish,
    RoundFinished,
    RoundOpened,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
    WorkFailed,
)
from sorap2p.core.rounds.fsm import Machine, Rule, Table


class TrainerState(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    ANNOUNCED = "announced"


@dataclass(frozen=True, slots=True)
class TrainerParams:
    subnet: SubnetId
    me: PeerId
    aggregator: PeerId | None = None  # accept RoundOpen only from this peer (None: any staked)
    min_time_left_ms: int = 1_000  # do not start training with less time than this left


DEADLINE = "deadline"


class TrainerMachine(Machine[TrainerState]):
    TABLE = Table(
        "trainer",
        [
            Rule(
                TrainerState.IDLE,
                RoundOpened,
                (TrainerState.IDLE, TrainerState.TRAINING),
                "on_open",
                "a new round for us: train",
            ),
            Rule(
                TrainerState.ANNOUNCED,
                RoundOpened,
                (TrainerState.ANNOUNCED, TrainerState.TRAINING),
                "on_open",
                "the next round: train",
            ),
            Rule(
                TrainerState.TRAINING,
                RoundOpened,
                (TrainerState.TRAINING,),
                "on_open_busy",
                "a newer round supersedes the one in training",
            ),
            Rule(
                TrainerState.TRAINING,
                TrainingDone,
                (TrainerState.ANNOUNCED, TrainerState.IDLE, TrainerState.TRAINING),
                "on_done",
                "announce the update if still before the deadline",
            ),
            Rule(
                TrainerState.TRAINING,
                WorkFailed,
                (TrainerState.IDLE,),
                "on_failed",
                "training failed",
            ),
            Rule(
                TrainerState.TRAINING,
                TimerFired,
                (TrainerState.TRAINING, TrainerState.IDLE),
                "on_deadline",
                "deadline passed: abandon training",
            ),
        ],
    )

    def __init__(self, params: TrainerParams) -> None:
        super().__init__(TrainerState.IDLE)
        self.params = params
        self.current: RoundOpen | None = None
        self.last_round: RoundId | None = None  # highest round we trained or skipped

    def _acceptable(self, msg: RoundOpen, now: int) -> bool:
        p = self.params
        if msg.subnet != p.subnet:
            return False
        if p.aggregator is not None and msg.signer != p.aggregator:
            return False
        if self.last_round is not None and msg.round <= self.last_round:
            return False
        if not any(r.peer != p.me for r in msg.recipients):
            return False
        return msg.deadline - now >= p.min_time_left_ms

    def on_open(self, ev: RoundOpened, now: int) -> tuple[TrainerState, list[Any]]:
        msg = ev.message
        if not self._acceptable(msg, now):
            return self.state, []
        self.current = msg
        self.last_round = msg.round
        return TrainerState.TRAINING, [Train(msg), SetTimer(DEADLINE, msg.round, msg.deadline)]

    def on_open_busy(self, ev: RoundOpened, now: int) -> tuple[TrainerState, list[Any]]:
        old = self.current
        if old is None or not self._acceptable(ev.message, now):
            return TrainerState.TRAINING, []
        self.current = ev.message
        self.last_round = ev.message.round
        return TrainerState.TRAINING, [
            CancelWork(old.round),
            RoundFinished(old.round, False, "superseded by a newer round"),
            Train(ev.message),
            SetTimer(DEADLINE, ev.message.round, ev.message.deadline),
        ]

    def on_done(self, ev: TrainingDone, now: int) -> tuple[TrainerState, list[Any]]:
        cur = self.current
        a = ev.announce
        if cur is None or a.round != cur.round:
            return TrainerState.TRAINING, []
        if now > cur.deadline:
            return TrainerState.IDLE, [RoundFinished(cur.round, False, "finished after deadline")]
        return TrainerState.ANNOUNCED, [Publish(a), RoundFinished(cur.round, True)]

    def on_failed(self, ev: WorkFailed, now: int) -> tuple[TrainerState, list[Any]]:
        assert self.current is not None
        return TrainerState.IDLE, [RoundFinished(self.current.round, False, ev.reason)]

    def on_deadline(self, ev: TimerFired, now: int) -> tuple[TrainerState, list[Any]]:
        cur = self.current
        if cur is None or ev.round != cur.round or ev.name != DEADLINE:
            return TrainerState.TRAINING, []
        return TrainerState.IDLE, [
            CancelWork(cur.round),
            RoundFinished(cur.round, False, "deadline passed"),
        ]
