"""The envelope codec: round trips, canonical form, and hostile input."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core import messages as m
from sorap2p.core.cid import Cid
from sorap2p.core.codec import TYPES, decode, encode
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import RoundId, SubnetId
from sorap2p.testing.strategies import message_of, messages

KEY = IdentityKey(bytes(range(32)))


def announce(**kw: object) -> m.UpdateAnnounce:
    base = dict(
        subnet=SubnetId("digits"),
        round=RoundId(1),
        update=Cid.hash(b"update"),
        base_model=Cid.hash(b"model"),
        device_hash=b"\x11" * 32,
        num_samples=120,
        update_size=4096,
        timestamp=1_700_000_000_000,
        train_ms=900,
        encrypted_metrics=b"\x00" * 44,
        signer=KEY.peer_id,
    )
    base.update(kw)
    return m.UpdateAnnounce(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", list(TYPES), ids=lambda e: e.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(entry: object, data: st.DataObject) -> None:
    msg = data.draw(message_of(entry.cls))  # type: ignore[attr-defined]
    raw = encode(msg)
    assert decode(raw) == msg
    assert decode(raw, entry.cls) == msg  # type: ignore[attr-defined]
    assert encode(decode(raw)) == raw  # canonical: one encoding per message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_remote_errors(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(raw)


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_mutated_messages_raise_only_remote_errors(msg: object, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        out = decode(bytes(raw))
    except RemoteProtocolError:
        return
    assert encode(out) == bytes(raw)  # anything accepted is canonical


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.floats()
        | st.text()
        | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from([t.name for t in TYPES]),
)
def test_arbitrary_bodies_raise_only_remote_errors(body: object, name: str) -> None:
    raw = msgpack.packb({"v": 1, "type": name, "body": body}, use_bin_type=True)
    with contextlib.suppress(RemoteProtocolError):
        decode(raw)


def body_of(msg: object) -> dict[str, object]:
    obj = msgpack.unpackb(encode(msg), raw=False)
    body: dict[str, object] = obj["body"]
    return body


def repack(name: str, body: object, v: object = 1) -> bytes:
    out: bytes = msgpack.packb({"v": v, "type": name, "body": body}, use_bin_type=True)
    return out


def test_unknown_type_version_and_fields_are_named() -> None:
    body = body_of(announce())
    with pytest.raises(RemoteProtocolError, match="unknown message type 'nope'"):
        decode(repack("nope", body))
    with pytest.raises(RemoteProtocolError, match="unsupported envelope version 2"):
        decode(repack("update_announce", body, v=2))
    with pytest.raises(RemoteProtocolError, match=r"unknown fields \['extra'\]"):
        decode(repack("update_announce", {**body, "extra": 1}))
    missing = dict(body)
    del missing["train_ms"]
    with pytest.raises(RemoteProtocolError, match=r"missing fields \['train_ms'\]"):
        decode(repack("update_announce", missing))


def test_wrong_types_and_ranges_are_rejected() -> None:
    body = body_of(announce())
    cases = {
        "num_samples": "12",  # string for int
        "device_hash": b"\x00" * 31,  # wrong fixed size
        "update": b"\x01\x55\x12\x20" + b"\x00" * 31,  # truncated CID
        "subnet": "Bad_Subnet",
        "encrypted_metrics": b"x" * 257,
    }
    for key, value in cases.items():
        with pytest.raises(RemoteProtocolError, match=key):
            decode(repack("update_announce", {**body, key: value}))
    with pytest.raises(RemoteProtocolError, match="num_samples"):
        decode(repack("update_announce", {**body, "num_samples": 0}))
    with pytest.raises(RemoteProtocolError, match="expected an integer"):
        decode(repack("update_announce", {**body, "num_samples": True}))


def test_non_canonical_encodings_are_rejected() -> None:
    body = body_of(announce())
    reordered = dict(reversed(list(body.items())))
    with pytest.raises(RemoteProtocolError, match="non-canonical"):
        decode(repack("update_announce", reordered))
    # an int encoded wider than necessary
    raw = encode(announce(num_samples=5))
    packer_wide = raw.replace(b"\xabnum_samples\x05", b"\xabnum_samples\xcd\x00\x05")
    assert packer_wide != raw
    with pytest.raises(RemoteProtocolError, match="non-canonical"):
        decode(packer_wide)
    # trailing garbage
    with pytest.raises(RemoteProtocolError, match="malformed msgpack"):
        decode(raw + b"\x00")


def test_oversize_is_rejected_both_ways() -> None:
    big = m.GlobalModel(
        subnet=SubnetId("s"),
        round=RoundId(1),
        model=Cid.hash(b"m"),
        parent=Cid.hash(b"p"),
        strategy="fedavg",
        updates=tuple(sorted(Cid.hash(bytes([i, j])) for i in range(4) for j in range(256))),
        num_samples=1,
        metadata=Cid.hash(b"x"),
        created_at=1,
        signer=KEY.peer_id,
    )
    # 1024 CIDs fit the cap; one more item is refused before encoding
    assert len(encode(big)) <= TYPES.by_name("global_model").max_size
    with pytest.raises(LocalProtocolError, match="exceed 1024"):
        encode(dataclasses.replace(big, updates=tuple(sorted((*big.updates, Cid.hash(b"+"))))))
    entry = TYPES.by_name("update_announce")
    padded = repack("update_announce", {**body_of(announce()), "pad": b"x" * entry.max_size})
    with pytest.raises(RemoteProtocolError, match="exceeds its cap"):
        decode(padded)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decode(b"\x00" * (256 * 1024 + 1))


def test_expect_type_mismatch() -> None:
    with pytest.raises(RemoteProtocolError, match="expected RoundOpen"):
        decode(encode(announce()), m.RoundOpen)


def test_invalid_values_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        encode(announce(num_samples=-1))
    with pytest.raises(LocalProtocolError):
        encode(dataclasses.replace(announce(), device_hash=b"short"))


def test_invariants_are_enforced_on_decode() -> None:
    vote = m.ValidationVote(
        subnet=SubnetId("s"),
        round=RoundId(2),
        model=Cid.hash(b"m"),
        approve=False,
        record_digest=b"\x00" * 32,
        eth_address=b"\x00" * 20,
        eth_signature=b"",
        reason="wrong aggregate",
        signer=KEY.peer_id,
    )
    body = body_of(vote)
    with pytest.raises(RemoteProtocolError, match="65-byte"):
        decode(repack("validation_vote", {**body, "approve": True}))
