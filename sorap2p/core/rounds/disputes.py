"""A validator's book of disputes: who opens the on-chain dispute of a refused round, which
verdict this validator signs, and who submits the quorum-signed verdict (sans-IO).

The flow (protocols/rounds.md, "Disputes and slashing"):

1. A validator whose check refuses a round (wrong aggregate, fake rankings...) gossips a
   `Dispute` and schedules the on-chain ``openDispute``: validators take turns by rotation
   (ordered by peer id; for round r the one at index ``r mod n`` first, the one at distance p
   after ``p * backup_ms``) and a turn is skipped once the chain shows a dispute of the round.
   The ledger keeps at most one open dispute per round, so a late duplicate only costs a
   failed ``eth_call``.
2. Every validator that checked the disputed round signs a verdict: upheld when its own check
   refused the round, rejected when it approved it. A validator that did not check the round
   abstains. The verdict's content is deterministic (offender = the round's aggregator,
   slash amount = the subnet's policy), so honest validators sign the same EIP-712 digest.
3. Once k signatures over the digest this validator signed are known, the submitter chosen by
   the same rotation over the dispute id posts ``resolveDispute``; backups follow after
   ``p * backup_ms``; the chain's ``DisputeResolved`` closes the entry.

Times are unix milliseconds passed in by the caller; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from sorap2p.core.ids import PeerId, RoundId
from sorap2p.core.rounds.fsm import rotation_position

MAX_EARLY_DISPUTES: Final = 64


@dataclass(frozen=True, slots=True)
class DisputeParams:
    me: PeerId
    validators: tuple[PeerId, ...]  # the validator set (any order)
    quorum: int
    backup_ms: int = 15_000
    retry_ms: int = 60_000  # a failed submission is tried again after this long
    sorted_validators: tuple[PeerId, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sorted_validators", tuple(sorted(set(self.validators))))

    def position(self, turn: int) -> int:
        """Our distance from the primary of rotation ``turn`` (n when we are not in the set)."""
        return rotation_position(self.sorted_validators, self.me, turn)


@dataclass(frozen=True, slots=True)
class OpenDispute:
    """Action: open the on-chain dispute of ``round`` (unless the chain already has one)."""

    round: RoundId
    accused: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class SignVerdict:
    """Action: build, sign and gossip our verdict on ``dispute_id``."""

    dispute_id: int
    round: RoundId
    upheld: bool
    offender: PeerId


@dataclass(frozen=True, slots=True)
class SubmitVerdict:
    """Action: post ``resolveDispute`` with these signatures over ``digest``."""

    dispute_id: int
    digest: bytes
    signatures: tuple[bytes, ...]


@dataclass(slots=True)
class _Challenge:
    accused: PeerId
    reason: str
    due_ms: int
    done: bool = False


@dataclass(slots=True)
class _Open:
    round: RoundId
    digest: bytes = b""  # the digest we signed ("" until we sign; abstaining keeps it empty)
    signatures: dict[bytes, bytes] = field(default_factory=dict)  # eth address -> signature
    submit_at_ms: int | None = None


class DisputeBook:
    """Everything a validator tracks about disputes of its subnet."""

    def __init__(self, params: DisputeParams) -> None:
        self.params = params
        self.judged: dict[RoundId, tuple[bool, PeerId]] = {}  # round -> (approved, aggregator)
        self.challenges: dict[RoundId, _Challenge] = {}
        self.open: dict[int, _Open] = {}
        self.resolved: dict[int, bool] = {}  # dispute id -> upheld
        # votes seen before we signed (or before the chain event reached us), by dispute
        self.early: dict[int, dict[bytes, tuple[bytes, bytes]]] = {}

    # -- our own judgement -----------------------------------------------------------------
    def round_checked(
        self, round: RoundId, approved: bool, aggregator: PeerId, reason: str, now: int
    ) -> None:
        """Record our check of a round; a refusal schedules our turn to open its dispute."""
        self.judged[round] = (approved, aggregator)
        if not approved and round not in self.challenges:
            due = now + self.params.position(round.number) * self.params.backup_ms
            self.challenges[round] = _Challenge(aggregator, reason, due)

    def challenges_due(self, now: int) -> list[OpenDispute]:
        """Our turns to open a dispute that have come (each returned once)."""
        out = []
        for round, c in self.challenges.items():
            if not c.done and now >= c.due_ms:
                c.done = True
                out.append(OpenDispute(round, c.accused, c.reason))
        return out

    # -- chain events ----------------------------------------------------------------------
    def dispute_opened(self, dispute_id: int, round: RoundId) -> SignVerdict | None:
        """A ``DisputeOpened`` of our subnet; returns our verdict to sign, if we judged it."""
        if dispute_id in self.open or dispute_id in self.resolved:
            return None
        self.open[dispute_id] = _Open(round)
        challenge = self.challenges.get(round)
        if challenge is not None:
            challenge.done = True  # somebody opened it: our turn is skipped
        judged = self.judged.get(round)
        if judged is None:
            return None  # we did not check this round: abstain
        approved, aggregator = judged
        return SignVerdict(dispute_id, round, not approved, aggregator)

    def dispute_resolved(self, dispute_id: int, upheld: bool) -> None:
        self.open.pop(dispute_id, None)
        self.resolved[dispute_id] = upheld

    # -- votes -----------------------------------------------------------------------------
    def signed(self, dispute_id: int, digest: bytes, address: bytes, signature: bytes) -> None:
        """Our own verdict signature (after `SignVerdict`); votes seen earlier now count."""
        entry = self.open.get(dispute_id)
        if entry is None or entry.digest:
            return
        entry.digest = digest
        entry.signatures[address] = signature
        for addr, (d, sig) in self.early.pop(dispute_id, {}).items():
            if d == digest:
                entry.signatures.setdefault(addr, sig)

    def vote(self, dispute_id: int, digest: bytes, address: bytes, signature: bytes) -> None:
        """A verdict vote from the network (its signature already checked by the gossip rules)."""
        if dispute_id in self.resolved:
            return
        entry = self.open.get(dispute_id)
        if entry is not None and entry.digest:
            if digest == entry.digest:
                entry.signatures.setdefault(address, signature)
            return
        # before the chain event reached us or before we signed: keep it until then
        if dispute_id not in self.early and len(self.early) >= MAX_EARLY_DISPUTES:
            self.early.pop(min(self.early))
        self.early.setdefault(dispute_id, {}).setdefault(address, (digest, signature))

    def submissions_due(self, now: int) -> list[SubmitVerdict]:
        """Verdicts with k signatures whose submission turn has come."""
        out = []
        for dispute_id, entry in self.open.items():
            if not entry.digest or len(entry.signatures) < self.params.quorum:
                continue
            if entry.submit_at_ms is None:
                position = self.params.position(dispute_id)
                entry.submit_at_ms = now + position * self.params.backup_ms
            if now >= entry.submit_at_ms:
                entry.submit_at_ms = now + self.params.retry_ms
                sigs = tuple(entry.signatures[a] for a in sorted(entry.signatures))
                out.append(SubmitVerdict(dispute_id, entry.digest, sigs))
        return out
