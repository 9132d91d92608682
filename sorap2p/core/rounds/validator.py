"""The validator's round machine: observe, check, vote, and submit the quorum proof.

Submission rotates: validators are ordered by peer id; for round r the validator
at index ``r mod n`` submits as soon as it holds k approving signatures for its digest; the
one at rotation position p (distance from that index) submits after ``p * backup_ms`` if no
proof was observed by then. A duplicate submission is refused by the contract (the node
checks with ``eth_call`` first), so the worst case costs nothing but a call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sorap2p.core.ids import PeerId, RoundId, SubnetId
from sorap2p.core.messages import GlobalModel, Rankings, RoundOpen, ValidationVote
from sorap2p.core.rounds.events import (
    AnnounceReceived,
    CastVote,
    CheckDone,
    CheckRound,
    ModelPublished,
    ProofObserved,
    RaiseDispute,
    RankingsPublished,
    RoundFinished,
    RoundOpened,
    SetTimer,
    SubmitProof,
    TimerFired,
    VoteSeen,
    WorkFailed,
)
from sorap2p.core.rounds.fsm import Machine, Rule, Table, rotation_position


class ValState(enum.Enum):
    IDLE = "idle"
    OBSERVING = "observing"
    CHECKING = "checking"
    VOTED = "voted"
    FINALIZED = "finalized"


@dataclass(frozen=True, slots=True)
class ValidatorParams:
    subnet: SubnetId
    me: PeerId
    validators: tuple[PeerId, ...]  # the validator set (any order)
    quorum: int
    aggregator: PeerId | None = None
    model_grace_ms: int = 60_000  # after the deadline, how long to wait for the model
    backup_ms: int = 15_000
    vote_timeout_ms: int = 180_000
    sorted_validators: tuple[PeerId, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sorted_validators", tuple(sorted(set(self.validators))))

    def position(self, round: RoundId) -> int:
        """Our distance from the round's primary submitter in the rotation."""
        return rotation_position(self.sorted_validators, self.me, round.number)


MODEL = "model"
SUBMIT = "submit"
VOTES = "votes"


class ValidatorMachine(Machine[ValState]):
    TABLE = Table(
        "validator",
        [
            *(
                Rule(
                    s, RoundOpened, (ValState.OBSERVING, s), "on_open", "a newer round: observe it"
                )
                for s in ValState
            ),
            Rule(
                ValState.OBSERVING,
                AnnounceReceived,
                (ValState.OBSERVING,),
                "on_announce",
                "record announce and arrival time",
            ),
            Rule(
                ValState.OBSERVING,
                ModelPublished,
                (ValState.OBSERVING, ValState.CHECKING),
                "on_model",
                "check once model and rankings are in",
            ),
            Rule(
                ValState.OBSERVING,
                RankingsPublished,
                (ValState.OBSERVING, ValState.CHECKING),
                "on_rankings",
                "check once model and rankings are in",
            ),
            Rule(
                ValState.OBSERVING,
                VoteSeen,
                (ValState.OBSERVING,),
                "on_early_vote",
                "keep votes that arrive before our check",
            ),
            Rule(
                ValState.OBSERVING,
                TimerFired,
                (ValState.OBSERVING, ValState.IDLE),
                "on_model_timer",
                "no model in time: round failed",
            ),
            Rule(
                ValState.CHECKING,
                VoteSeen,
                (ValState.CHECKING,),
                "on_early_vote",
                "keep votes that arrive before our check",
            ),
            Rule(
                ValState.CHECKING,
                CheckDone,
                (ValState.VOTED,),
                "on_checked",
                "vote (and dispute when the round is wrong)",
            ),
            Rule(
                ValState.CHECKING,
                WorkFailed,
                (ValState.IDLE,),
                "on_check_failed",
                "could not check: abstain",
            ),
            Rule(
                ValState.VOTED,
                VoteSeen,
                (ValState.VOTED,),
                "on_vote",
                "k approvals: primary submits, backups arm timers",
            ),
            Rule(
                ValState.VOTED,
                TimerFired,
                (ValState.VOTED, ValState.IDLE),
                "on_voted_timer",
                "backup turn: submit; vote timeout: give up",
            ),
            Rule(
                ValState.VOTED,
                ProofObserved,
                (ValState.VOTED, ValState.FINALIZED),
                "on_proof",
                "proof on chain",
            ),
            Rule(
                ValState.CHECKING,
                ProofObserved,
                (ValState.CHECKING, ValState.FINALIZED),
                "on_proof",
                "proof on chain before our check finished",
            ),
        ],
    )

    def __init__(self, params: ValidatorParams) -> None:
        super().__init__(ValState.IDLE)
        self.params = params
        self.round_open: RoundOpen | None = None
        self.announces: dict[bytes, AnnounceReceived] = {}
        self.model: GlobalModel | None = None
        self.rankings: Rankings | None = None
        self.votes: dict[PeerId, ValidationVote] = {}  # by validator
        self.digest: bytes | None = None
        self.approved = False
        self.submitted = False
        self.submit_armed = False
        self.last_round: RoundId | None = None

    @property
    def round(self) -> RoundId | None:
        return self.round_open.round if self.round_open else None

    # -- handlers ----------------------------------------------------------------------
    def on_open(self, ev: RoundOpened, now: int) -> tuple[ValState, list[Any]]:
        msg = ev.message
        p = self.params
        if msg.subnet != p.subnet or (p.aggregator is not None and msg.signer != p.aggregator):
            return self.state, []
        if self.last_round is not None and msg.round <= self.last_round:
            return self.state, []
        self.round_open = msg
        self.last_round = msg.round
        self.announces.clear()
        self.votes.clear()
        self.model = self.rankings = None
        self.digest = None
        self.approved = self.submitted = self.submit_armed = False
        return ValState.OBSERVING, [
            SetTimer(MODEL, msg.round, msg.deadline + p.model_grace_ms),
        ]

    def on_announce(self, ev: AnnounceReceived, now: int) -> tuple[ValState, list[Any]]:
        a = ev.message
        ro = self.round_open
        if ro is None or a.round != ro.round:
            return ValState.OBSERVING, []
        self.announces.setdefault(a.update.raw, ev)
        return ValState.OBSERVING, []

    def on_model(self, ev: ModelPublished, now: int) -> tuple[ValState, list[Any]]:
        if self._mine(ev.message.round, ev.message.signer) and self.model is None:
            self.model = ev.message
        return self._maybe_check()

    def on_rankings(self, ev: RankingsPublished, now: int) -> tuple[ValState, list[Any]]:
        if self._mine(ev.message.round, ev.message.signer) and self.rankings is None:
            self.rankings = ev.message
        return self._maybe_check()

    def on_early_vote(self, ev: VoteSeen, now: int) -> tuple[ValState, list[Any]]:
        self._record_vote(ev.vote)
        return self.state, []

    def on_model_timer(self, ev: TimerFired, now: int) -> tuple[ValState, list[Any]]:
        if ev.name != MODEL or ev.round != self.round:
            return ValState.OBSERVING, []
        return ValState.IDLE, [RoundFinished(ev.round, False, "no global model in time")]

    def on_checked(self, ev: CheckDone, now: int) -> tuple[ValState, list[Any]]:
        ro, model = self.round_open, self.model
        assert ro is not None and model is not None
        self.digest = ev.record_digest
        self.approved = ev.approve
        actions: list[Any] = [
            CastVote(ro.round, model.model, ev.approve, ev.record_digest, ev.reason),
            SetTimer(VOTES, ro.round, now + self.params.vote_timeout_ms),
        ]
        if not ev.approve and ev.accused is not None:
            actions.append(RaiseDispute(ro.round, ev.accused, ev.reason))
        return ValState.VOTED, actions + self._quorum_actions(now)

    def on_check_failed(self, ev: WorkFailed, now: int) -> tuple[ValState, list[Any]]:
        assert self.round_open is not None
        return ValState.IDLE, [RoundFinished(self.round_open.round, False, ev.reason)]

    def on_vote(self, ev: VoteSeen, now: int) -> tuple[ValState, list[Any]]:
        self._record_vote(ev.vote)
        return ValState.VOTED, self._quorum_actions(now)

    def on_voted_timer(self, ev: TimerFired, now: int) -> tuple[ValState, list[Any]]:
        if ev.round != self.round:
            return ValState.VOTED, []
        if ev.name == SUBMIT and not self.submitted:
            proof = self._proof()
            if proof is not None:
                self.submitted = True
                return ValState.VOTED, [proof]
        if ev.name == VOTES:
            return ValState.IDLE, [RoundFinished(ev.round, False, "no quorum proof in time")]
        return ValState.VOTED, []

    def on_proof(self, ev: ProofObserved, now: int) -> tuple[ValState, list[Any]]:
        if ev.round != self.round:
            return self.state, []
        return ValState.FINALIZED, [RoundFinished(ev.round, True)]

    # -- helpers -----------------------------------------------------------------------
    def _mine(self, round: RoundId, signer: PeerId) -> bool:
        ro = self.round_open
        return ro is not None and round == ro.round and signer == ro.signer

    def _maybe_check(self) -> tuple[ValState, list[Any]]:
        ro, model, rankings = self.round_open, self.model, self.rankings
        if ro is None or model is None or rankings is None:
            return ValState.OBSERVING, []
        if rankings.model != model.model:
            return ValState.OBSERVING, []
        seen = tuple(self.announces[k] for k in sorted(self.announces))
        return ValState.CHECKING, [CheckRound(ro, model, rankings, seen)]

    def _record_vote(self, vote: ValidationVote) -> None:
        if vote.round != self.round or vote.signer not in self.params.sorted_validators:
            return
        self.votes.setdefault(vote.signer, vote)

    def _approvals(self) -> list[ValidationVote]:
        if not self.approved or self.digest is None:
            return []
        return [
            v
            for addr, v in sorted(self.votes.items())
            if v.approve and v.record_digest == self.digest
        ]

    def _proof(self) -> SubmitProof | None:
        approvals = self._approvals()
        k = self.params.quorum
        if len(approvals) < k or self.round is None or self.digest is None:
            return None
        # the first k approvals in peer-id order; the node orders them by signer address
        sigs = tuple(v.eth_signature for v in approvals[:k])
        return SubmitProof(self.round, self.digest, sigs)

    def _quorum_actions(self, now: int) -> list[Any]:
        if self.submitted or self.submit_armed or self.round is None:
            return []
        proof = self._proof()
        if proof is None:
            return []
        position = self.params.position(self.round)
        if position == 0:
            self.submitted = True
            return [proof]
        self.submit_armed = True
        return [SetTimer(SUBMIT, self.round, now + position * self.params.backup_ms)]
