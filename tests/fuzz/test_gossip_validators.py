"""Every gossip validator (one per message kind) under arbitrary and mutated input.

Whatever arrives, a validator returns ACCEPT, REJECT or IGNORE and never raises: arbitrary
messages correctly signed by subnet members, the same re-authored by another peer or for
another subnet, valid messages with their bytes mutated (flips, truncation, insertion,
splices), and messages of one kind on another kind's topic. ``scripts/fuzz.sh`` runs these
with many more examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core import messages as m
from sorap2p.core.codec import encode
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.gossip_rules import GossipRules, SubnetView
from sorap2p.core.ids import Role, RoundId, SubnetId
from sorap2p.core.topics import TopicKind
from sorap2p.core.validation import Validation, Verdict
from sorap2p.testing.factories import SUBNET, Cast, eth_address, round_open
from sorap2p.testing.strategies import message_of

CAST = Cast.make(validators=3, trainers=3)
AGG = CAST.aggregator
MEMBERS = (AGG, *CAST.validators, *CAST.trainers)
NOW = 100_000
KINDS = list(TopicKind)
OUTCOMES = set(Validation)


def fresh_rules(open_membership: bool) -> tuple[GossipRules, m.RoundOpen]:
    """Rules with round 1 open (its RoundOpen accepted), as a running node has them."""
    if open_membership:
        view = SubnetView(SUBNET)
    else:
        members = {AGG.peer_id: Role.AGGREGATOR}
        members |= {t.peer_id: Role.TRAINER for t in CAST.trainers}
        members |= {v.peer_id: Role.VALIDATOR for v in CAST.validators}
        addrs = {eth_address(i): v.peer_id for i, v in enumerate(CAST.validators)}
        view = SubnetView(
            SUBNET, AGG.peer_id, members, addrs, tuple(v.peer_id for v in CAST.validators)
        )
    rules = GossipRules(lambda: view, lambda: NOW, recover=lambda digest, sig: sig[:20])
    ro = round_open(AGG, 1, CAST.recipients(), opened_at=NOW - 5_000)
    assert rules.for_kind(TopicKind.ROUNDS)(AGG.peer_id, encode(ro)).result is Validation.ACCEPT
    return rules, ro


def check(rules: GossipRules, kind: TopicKind, origin: Any, data: bytes) -> Verdict:
    out = rules.for_kind(kind)(origin, data)  # must not raise
    assert isinstance(out, Verdict) and out.result in OUTCOMES, out
    return out


@st.composite
def signed_messages(draw: st.DrawFn, kind: TopicKind) -> tuple[IdentityKey, Any]:
    """An arbitrary message of ``kind``, in our subnet, often for the open round and
    pointing at its model, correctly signed by some member of the subnet."""
    msg = draw(message_of(kind.message_type))
    signer = draw(st.sampled_from(MEMBERS))
    changes: dict[str, Any] = {"subnet": SUBNET}
    if draw(st.booleans()) and hasattr(msg, "round"):
        changes["round"] = RoundId(draw(st.sampled_from([0, 1, 2])))
    if draw(st.booleans()) and hasattr(msg, "base_model"):
        changes["base_model"] = round_open(AGG, 1, ()).global_model
    if draw(st.booleans()) and hasattr(msg, "timestamp"):
        changes["timestamp"] = NOW - draw(st.integers(0, 10_000))
    msg = dataclasses.replace(msg, **changes)
    return signer, m.sign(signer, msg)


kinds = st.sampled_from(KINDS)


@settings(max_examples=150, deadline=None)
@given(kinds, st.data(), st.booleans())
def test_signed_arbitrary_messages_get_a_verdict(
    kind: TopicKind, data: st.DataObject, open_membership: bool
) -> None:
    rules, _ = fresh_rules(open_membership)
    signer, msg = data.draw(signed_messages(kind))
    raw = encode(msg)
    first = check(rules, kind, signer.peer_id, raw)
    # the same bytes again are never accepted twice... unless re-announcing is allowed
    second = check(rules, kind, signer.peer_id, raw)
    if first.result is Validation.ACCEPT and kind is not TopicKind.UPDATES:
        assert second.result is Validation.IGNORE, (kind, second)
    # re-authored by another peer (a relay claiming it): always rejected
    other = data.draw(st.sampled_from([k for k in MEMBERS if k is not signer]))
    assert check(rules, kind, other.peer_id, raw).result is Validation.REJECT
    # the same message for another subnet, correctly signed: rejected
    elsewhere = m.sign(signer, dataclasses.replace(msg, subnet=SubnetId("elsewhere")))
    assert check(rules, kind, signer.peer_id, encode(elsewhere)).result is Validation.REJECT


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=9)),
        st.tuples(st.just("splice"), st.integers(0, 1 << 16), st.integers(0, 1 << 16)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(raw: bytes, ops: list[tuple[str, int, Any]]) -> bytes:
    buf = bytearray(raw)
    for op, at, arg in ops:
        i = at % (len(buf) + 1)
        if op == "flip" and buf:
            buf[i % len(buf)] ^= arg
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = arg
        elif op == "splice" and buf:
            j = arg % len(buf)
            buf[i:i] = buf[min(i, j) : max(i, j)]
    return bytes(buf)


@settings(max_examples=300, deadline=None)
@given(kinds, st.data(), mutations)
def test_mutated_messages_get_a_verdict(
    kind: TopicKind, data: st.DataObject, ops: list[tuple[str, int, Any]]
) -> None:
    rules, _ = fresh_rules(open_membership=False)
    signer, msg = data.draw(signed_messages(kind))
    raw = encode(msg)
    bad = mutate(raw, ops)
    out = check(rules, kind, signer.peer_id, bad)
    if bad != raw and out.result is Validation.ACCEPT:
        # a mutation can only be accepted if it decodes to the same signed message
        # (the codec is canonical, so this means the bytes did not really change)
        raise AssertionError(f"mutated {kind.value} accepted: {raw.hex()} -> {bad.hex()}")


@settings(max_examples=150, deadline=None)
@given(kinds, kinds, st.data())
def test_a_kind_on_another_kinds_topic_is_rejected(
    carried: TopicKind, topic: TopicKind, data: st.DataObject
) -> None:
    rules, _ = fresh_rules(open_membership=True)
    signer, msg = data.draw(signed_messages(carried))
    out = check(rules, topic, signer.peer_id, encode(msg))
    if carried is not topic:
        assert out.result is Validation.REJECT, (carried, topic, out)


@settings(max_examples=300, deadline=None)
@given(kinds, st.binary(max_size=2_000), st.booleans())
def test_arbitrary_bytes_are_rejected(kind: TopicKind, data: bytes, open_membership: bool) -> None:
    rules, _ = fresh_rules(open_membership)
    assert check(rules, kind, AGG.peer_id, data).result is Validation.REJECT


def test_every_kind_is_covered() -> None:
    rules, _ = fresh_rules(open_membership=False)
    assert {k: rules.for_kind(k) for k in TopicKind}.keys() == set(KINDS)
