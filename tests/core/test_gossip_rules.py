"""The per-kind gossip validators: every REJECT and IGNORE path, and fuzzed input."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core import messages as m
from sorap2p.core.codec import encode
from sorap2p.core.gossip_rules import (
    CLOCK_SKEW_MS,
    ROUND_HISTORY,
    STALE_REPLAY_MS,
    GossipRules,
    SubnetView,
)
from sorap2p.core.ids import Role, RoundId, SubnetId
from sorap2p.core.topics import TopicKind
from sorap2p.core.validation import Validation
from sorap2p.testing.factories import SUBNET, Cast, announce, cid, eth_address, round_open

CAST = Cast.make()
AGG = CAST.aggregator
T0, T1 = CAST.trainers[0], CAST.trainers[1]
V0 = CAST.validators[0]


def view(open_membership: bool = False) -> SubnetView:
    if open_membership:
        return SubnetView(SUBNET)
    members = {AGG.peer_id: Role.AGGREGATOR}
    members |= {t.peer_id: Role.TRAINER for t in CAST.trainers}
    members |= {v.peer_id: Role.VALIDATOR for v in CAST.validators}
    addrs = {eth_address(i): v.peer_id for i, v in enumerate(CAST.validators)}
    return SubnetView(SUBNET, AGG.peer_id, members, addrs)


def rules(now: int = 1_000, **kw: object) -> GossipRules:
    v = view(**kw)  # type: ignore[arg-type]
    return GossipRules(lambda: v, lambda: now, recover=lambda digest, sig: sig[:20])


def verdict(r: GossipRules, kind: TopicKind, origin: object, msg: object) -> tuple[str, str]:
    out = r.for_kind(kind)(origin, encode(msg))  # type: ignore[arg-type]
    return out.result.value, out.reason


def opened(r: GossipRules) -> m.RoundOpen:
    ro = round_open(AGG, 1, CAST.recipients())
    assert verdict(r, TopicKind.ROUNDS, AGG.peer_id, ro)[0] == "accept"
    return ro


def test_round_open_rules() -> None:
    r = rules()
    ro = opened(r)
    assert verdict(r, TopicKind.ROUNDS, AGG.peer_id, ro) == ("ignore", "duplicate")
    # not the aggregator
    assert verdict(r, TopicKind.ROUNDS, T0.peer_id, round_open(T0, 2, ()))[0] == "reject"
    # the gossip author differs from the signer (a relay re-authoring someone's message)
    assert verdict(r, TopicKind.ROUNDS, T0.peer_id, ro)[1] == "signer is not the gossip author"
    # forged recipient key
    bad = m.sign(
        AGG,
        dataclasses.replace(
            ro,
            round=RoundId(2),
            recipients=(dataclasses.replace(ro.recipients[0], x25519=b"\x00" * 32),),
        ),
    )
    assert verdict(r, TopicKind.ROUNDS, AGG.peer_id, bad)[0] == "reject"
    # tampered after signing
    tampered = dataclasses.replace(ro, min_participants=9)
    assert verdict(r, TopicKind.ROUNDS, AGG.peer_id, tampered)[1].startswith("bad signature")
    # wrong subnet
    other = m.sign(AGG, dataclasses.replace(ro, subnet=SubnetId("other")))
    assert "subnet" in verdict(r, TopicKind.ROUNDS, AGG.peer_id, other)[1]
    # an older round than the latest is ignored, a closed one too
    newer = round_open(AGG, 5, CAST.recipients())
    assert verdict(r, TopicKind.ROUNDS, AGG.peer_id, newer)[0] == "accept"
    assert verdict(r, TopicKind.ROUNDS, AGG.peer_id, round_open(AGG, 4, CAST.recipients()))[0] == (
        "ignore"
    )
    late = rules(now=10_000_000)
    assert verdict(late, TopicKind.ROUNDS, AGG.peer_id, ro) == ("ignore", "round already closed")
    # wrong message type on the topic
    assert verdict(r, TopicKind.ROUNDS, T0.peer_id, announce(T0, ro))[0] == "reject"


def test_update_announce_rules() -> None:
    r = rules(now=2_000)
    ro_before = round_open(AGG, 1, CAST.recipients())
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, announce(T0, ro_before)) == (
        "ignore",
        "round not open",
    )
    ro = opened(r)
    a = announce(T0, ro)
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, a)[0] == "accept"
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, announce(T0, ro, label="2")) == (
        "ignore",
        "second update of a trainer in one round",
    )
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, a) == ("ignore", "duplicate")
    # a validator is not a trainer
    assert verdict(r, TopicKind.UPDATES, V0.peer_id, announce(V0, ro))[0] == "reject"
    wrong_base = m.sign(T1, dataclasses.replace(announce(T1, ro), base_model=cid("x")))
    assert "global model" in verdict(r, TopicKind.UPDATES, T1.peer_id, wrong_base)[1]
    outside = announce(T1, ro, at=ro.deadline + 100_000)
    assert "window" in verdict(r, TopicKind.UPDATES, T1.peer_id, outside)[1]
    too_long = m.sign(T1, dataclasses.replace(announce(T1, ro), train_ms=10**9))
    assert "training time" in verdict(r, TopicKind.UPDATES, T1.peer_id, too_long)[1]


def test_open_membership_accepts_any_signer() -> None:
    r = rules(open_membership=True)
    ro = round_open(T0, 1, CAST.recipients())
    assert verdict(r, TopicKind.ROUNDS, T0.peer_id, ro)[0] == "accept"
    assert verdict(r, TopicKind.UPDATES, T1.peer_id, announce(T1, ro))[0] == "accept"


def model_msgs(ro: m.RoundOpen, signer: object = AGG) -> tuple[m.GlobalModel, m.Rankings]:
    gm = m.sign(
        signer,
        m.GlobalModel(  # type: ignore[arg-type]
            subnet=SUBNET,
            round=ro.round,
            model=cid("m1"),
            parent=ro.global_model,
            strategy="fedavg",
            updates=(),
            num_samples=0,
            metadata=cid("meta"),
            created_at=1,
            signer=AGG.peer_id,
        ),
    )
    rk = m.sign(
        signer,
        m.Rankings(  # type: ignore[arg-type]
            subnet=SUBNET,
            round=ro.round,
            model=cid("m1"),
            entries=(),
            signer=AGG.peer_id,
        ),
    )
    return gm, rk


def test_model_and_rankings_rules() -> None:
    r = rules()
    ro = round_open(AGG, 1, CAST.recipients())
    gm, rk = model_msgs(ro)
    assert verdict(r, TopicKind.MODELS, AGG.peer_id, gm) == ("ignore", "unknown round")
    opened(r)
    assert verdict(r, TopicKind.MODELS, AGG.peer_id, gm)[0] == "accept"
    assert verdict(r, TopicKind.MODELS, AGG.peer_id, gm) == ("ignore", "duplicate")
    assert verdict(r, TopicKind.RANKINGS, AGG.peer_id, rk)[0] == "accept"
    fake_gm, fake_rk = model_msgs(ro, signer=T0)
    assert verdict(r, TopicKind.MODELS, T0.peer_id, fake_gm)[0] == "reject"
    assert verdict(r, TopicKind.RANKINGS, T0.peer_id, fake_rk)[0] == "reject"


def vote(i: int, ro: m.RoundOpen, sig_addr: bytes | None = None) -> m.ValidationVote:
    addr = eth_address(i)
    sig = (sig_addr or addr) + b"\x00" * 45
    return m.sign(
        CAST.validators[i],
        m.ValidationVote(
            subnet=SUBNET,
            round=ro.round,
            model=cid("m1"),
            approve=True,
            record_digest=b"d" * 32,
            eth_address=addr,
            eth_signature=sig,
            reason="",
            signer=CAST.validators[i].peer_id,
        ),
    )


def test_vote_rules() -> None:
    r = rules()
    ro = opened(r)
    assert verdict(r, TopicKind.VOTES, V0.peer_id, vote(0, ro))[0] == "accept"
    assert verdict(r, TopicKind.VOTES, V0.peer_id, vote(0, ro)) == ("ignore", "duplicate")
    forged = vote(1, ro, sig_addr=eth_address(2))
    assert "EIP-712" in verdict(r, TopicKind.VOTES, CAST.validators[1].peer_id, forged)[1]
    # a validator claiming another validator's address
    stolen = m.sign(
        CAST.validators[1],
        dataclasses.replace(
            vote(1, ro), eth_address=eth_address(2), eth_signature=eth_address(2) * 3 + b"\0" * 5
        ),
    )
    assert (
        "registered address" in verdict(r, TopicKind.VOTES, CAST.validators[1].peer_id, stolen)[1]
    )
    assert verdict(r, TopicKind.VOTES, T0.peer_id, m.sign(T0, vote(2, ro)))[0] == "reject"


def test_proof_and_dispute_rules() -> None:
    r = rules()
    ro = opened(r)
    proof = m.sign(
        V0,
        m.QuorumProof(
            subnet=SUBNET,
            round=ro.round,
            record_digest=b"d" * 32,
            signatures=(b"\x01" * 65,),
            tx_hash=b"",
            signer=V0.peer_id,
        ),
    )
    assert verdict(r, TopicKind.PROOFS, V0.peer_id, proof)[0] == "accept"
    assert verdict(r, TopicKind.PROOFS, V0.peer_id, proof)[0] == "ignore"
    assert verdict(r, TopicKind.PROOFS, T0.peer_id, m.sign(T0, proof))[0] == "reject"
    d = m.sign(
        T0,
        m.Dispute(
            subnet=SUBNET,
            round=ro.round,
            accused=AGG.peer_id,
            reason="x",
            evidence=cid("e"),
            tx_hash=b"",
            signer=T0.peer_id,
        ),
    )
    assert verdict(r, TopicKind.DISPUTES, T0.peer_id, d)[0] == "accept"
    from sorap2p.testing.factories import key

    outsider = key(999)
    d2 = m.sign(outsider, d)
    assert verdict(r, TopicKind.DISPUTES, outsider.peer_id, d2)[0] == "reject"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(list(TopicKind)))
def test_garbage_is_rejected_never_raises(data: bytes, kind: TopicKind) -> None:
    r = rules()
    out = r.for_kind(kind)(T0.peer_id, data)
    assert out.result is Validation.REJECT


def test_same_update_may_be_reannounced_after_the_window() -> None:
    clock = [2_000]
    v = view()
    r = GossipRules(lambda: v, lambda: clock[0])
    ro = opened(r)
    a = announce(T0, ro)
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, a)[0] == "accept"
    clock[0] += 1_000
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, a) == ("ignore", "duplicate")
    clock[0] += 4_000
    assert verdict(r, TopicKind.UPDATES, T0.peer_id, a)[0] == "accept"


def verdict_vote(i: int, sig_addr: bytes | None = None, upheld: bool = True) -> m.VerdictVote:
    addr = eth_address(i)
    return m.sign(
        CAST.validators[i],
        m.VerdictVote(
            subnet=SUBNET,
            dispute_id=1,
            round=RoundId(1),
            validator_set_version=1,
            upheld=upheld,
            offender=b"\x07" * 20,
            slash_amount=(10**15 if upheld else 0).to_bytes(32, "big"),
            verdict_digest=b"v" * 32,
            eth_address=addr,
            eth_signature=(sig_addr or addr) + b"\x00" * 45,
            signer=CAST.validators[i].peer_id,
        ),
    )


def test_verdict_vote_rules() -> None:
    r = rules()
    v1 = CAST.validators[1]
    assert verdict(r, TopicKind.VERDICTS, V0.peer_id, verdict_vote(0)) == ("accept", "")
    assert verdict(r, TopicKind.VERDICTS, V0.peer_id, verdict_vote(0)) == ("ignore", "duplicate")
    # one verdict per validator and dispute: a changed mind is not forwarded
    changed = verdict_vote(0, upheld=False)
    assert verdict(r, TopicKind.VERDICTS, V0.peer_id, changed) == ("ignore", "duplicate")
    forged = verdict_vote(1, sig_addr=eth_address(2))
    assert "EIP-712" in verdict(r, TopicKind.VERDICTS, v1.peer_id, forged)[1]
    stolen = m.sign(
        v1,
        dataclasses.replace(
            verdict_vote(1), eth_address=eth_address(2), eth_signature=eth_address(2) + bytes(45)
        ),
    )
    assert "registered address" in verdict(r, TopicKind.VERDICTS, v1.peer_id, stolen)[1]
    by_trainer = m.sign(T0, verdict_vote(2))
    assert verdict(r, TopicKind.VERDICTS, T0.peer_id, by_trainer)[0] == "reject"
    relayed = verdict_vote(2)
    assert verdict(r, TopicKind.VERDICTS, T0.peer_id, relayed)[0] == "reject"


def test_rejected_verdict_slashes_nothing() -> None:
    import pytest

    from sorap2p.core.errors import RemoteProtocolError

    with pytest.raises(RemoteProtocolError, match="slashes nothing"):
        dataclasses.replace(verdict_vote(0, upheld=False), slash_amount=b"\x01" * 32)


def test_late_announces_are_ignored_replays_rejected() -> None:
    """A late announce may be an honest forward that a healed partition delivers late:
    IGNOREd (no penalty) until STALE_REPLAY_MS after its round's deadline, REJECTed after;
    one of a round older than a full history of deadlines is REJECTed too."""
    clock = [0]
    v = view()
    r = GossipRules(lambda: v, lambda: clock[0])
    rounds = r.for_kind(TopicKind.ROUNDS)
    updates = r.for_kind(TopicKind.UPDATES)
    first = round_open(AGG, 1, CAST.recipients(), opened_at=0, duration=1_000)
    assert rounds(AGG.peer_id, encode(first)).result is Validation.ACCEPT
    late = announce(T0, first)
    clock[0] = first.deadline + CLOCK_SKEW_MS + 1
    assert updates(T0.peer_id, encode(late)).reason == "announce after the round's deadline"
    assert updates(T0.peer_id, encode(late)).result is Validation.IGNORE
    clock[0] = first.deadline + STALE_REPLAY_MS + 1
    assert updates(T0.peer_id, encode(late)).result is Validation.REJECT
    # a long run: round 1's deadline falls out of the history
    for n in range(2, ROUND_HISTORY + 3):
        ro = round_open(AGG, n, CAST.recipients(), opened_at=clock[0], duration=1_000)
        r.remember_round(ro)
    assert len(r.deadlines) == ROUND_HISTORY and RoundId(1) not in r.deadlines
    verdict_ = updates(T0.peer_id, encode(late))
    assert verdict_.result is Validation.REJECT and "older than any" in verdict_.reason
    # a node that joined late never judges rounds before it joined
    fresh = GossipRules(lambda: v, lambda: clock[0])
    fresh.remember_round(ro)
    assert fresh.for_kind(TopicKind.UPDATES)(T0.peer_id, encode(late)).result is (Validation.IGNORE)
