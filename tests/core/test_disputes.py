"""The validators' dispute book: rotation of who opens and who resolves, verdicts from each
validator's own check, and k equal signatures before a submission."""

from __future__ import annotations

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import PeerId, RoundId
from sorap2p.core.rounds.disputes import (
    DisputeBook,
    DisputeParams,
    OpenDispute,
    SignVerdict,
    SubmitVerdict,
)

PEERS = sorted(IdentityKey.generate().peer_id for _ in range(3))
AGG = IdentityKey.generate().peer_id
BACKUP = 1_000


def book(i: int, quorum: int = 2) -> DisputeBook:
    return DisputeBook(DisputeParams(PEERS[i], tuple(reversed(PEERS)), quorum, BACKUP, 5_000))


def addr(i: int) -> bytes:
    return bytes([i]) * 20


def test_refusal_schedules_the_challenge_by_rotation() -> None:
    r = RoundId(4)  # primary: index 4 % 3 = 1
    books = [book(i) for i in range(3)]
    for b in books:
        b.round_checked(r, False, AGG, "wrong aggregate", now=0)
    assert books[1].challenges_due(0) == [OpenDispute(r, AGG, "wrong aggregate")]
    assert books[1].challenges_due(10_000) == []  # once
    assert books[2].challenges_due(BACKUP - 1) == []
    assert books[2].challenges_due(BACKUP) == [OpenDispute(r, AGG, "wrong aggregate")]
    # validator 0 sees the dispute opened before its turn: its turn is skipped
    assert books[0].dispute_opened(7, r) == SignVerdict(7, r, True, AGG)
    assert books[0].challenges_due(10 * BACKUP) == []


def test_approval_never_challenges_and_signs_a_rejection() -> None:
    b = book(0)
    b.round_checked(RoundId(2), True, AGG, "", now=0)
    assert b.challenges_due(10**9) == []
    assert b.dispute_opened(3, RoundId(2)) == SignVerdict(3, RoundId(2), False, AGG)
    assert b.dispute_opened(3, RoundId(2)) is None  # once


def test_unjudged_round_abstains() -> None:
    b = book(0)
    assert b.dispute_opened(1, RoundId(9)) is None
    b.vote(1, b"d" * 32, addr(1), b"s1")
    b.vote(1, b"d" * 32, addr(2), b"s2")
    assert b.submissions_due(10**9) == []  # nothing signed by us: we never submit


def test_k_equal_signatures_then_rotation_submits_and_retries() -> None:
    digest, other = b"d" * 32, b"x" * 32
    b = book(2)  # dispute 1: primary index 1, we are at distance 1
    b.round_checked(RoundId(1), False, AGG, "wrong aggregate", now=0)
    # a vote that arrives before the chain event and before we signed still counts
    b.vote(1, digest, addr(0), b"s0")
    assert b.dispute_opened(1, RoundId(1)) == SignVerdict(1, RoundId(1), True, AGG)
    b.vote(1, other, addr(1), b"s1")  # a different verdict does not count
    assert b.submissions_due(0) == []
    b.signed(1, digest, addr(2), b"s2")
    assert b.submissions_due(100) == []  # k reached at 100: our turn is at 100 + BACKUP
    due = b.submissions_due(100 + BACKUP)
    assert due == [SubmitVerdict(1, digest, (b"s0", b"s2"))]
    assert b.submissions_due(100 + BACKUP + 1) == []
    assert len(b.submissions_due(100 + BACKUP + 5_000)) == 1  # retried until resolved
    b.dispute_resolved(1, True)
    assert b.submissions_due(10**9) == [] and b.resolved == {1: True}
    b.vote(1, digest, addr(1), b"late")  # after resolution: ignored
    assert 1 not in b.open and 1 not in b.early


def test_outsider_never_takes_a_turn_first() -> None:
    b = DisputeBook(DisputeParams(AGG, tuple(PEERS), 2, BACKUP))
    b.round_checked(RoundId(1), False, AGG, "r", now=0)
    assert b.challenges_due(2 * BACKUP) == []
    assert b.challenges_due(3 * BACKUP) != []


def test_early_votes_are_bounded() -> None:
    b = book(0)
    for d in range(1, 200):
        b.vote(d, b"d" * 32, addr(1), b"s")
    assert len(b.early) <= 64 and 199 in b.early


def test_peer_ids_sort() -> None:
    assert all(isinstance(p, PeerId) for p in PEERS)
