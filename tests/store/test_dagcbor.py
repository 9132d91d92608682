"""The DAG-CBOR codec: canonical, strict, and equal to the reference ``dag-cbor`` package."""

from __future__ import annotations

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from sorap2p.core.cid import DAG_CBOR, RAW, Cid
from sorap2p.store import dagcbor
from sorap2p.store.errors import CodecError

cids = st.builds(Cid.hash, st.binary(max_size=8), st.sampled_from([RAW, DAG_CBOR]))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | cids
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def to_reference(v: dagcbor.Value) -> object:
    if isinstance(v, Cid):
        return CID.decode(v.raw)
    if isinstance(v, list):
        return [to_reference(x) for x in v]
    if isinstance(v, dict):
        return {k: to_reference(x) for k, x in v.items()}
    return v


@settings(deadline=None)
@given(values)
def test_round_trip_and_reference_bytes(value: dagcbor.Value) -> None:
    data = dagcbor.encode(value)
    assert dagcbor.decode(data) == value
    assert dag_cbor.encode(to_reference(value)) == data


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_codec_error(data: bytes) -> None:
    try:
        value = dagcbor.decode(data)
    except CodecError:
        return
    assert dagcbor.encode(value) == data  # whatever decodes is canonical


@pytest.mark.parametrize(
    "data",
    [
        b"\x18\x01",  # non-minimal integer
        b"\x9f\xff",  # indefinite array
        b"\xa2\x61b\x01\x61a\x02",  # keys out of order
        b"\xa2\x61a\x01\x61a\x02",  # duplicate key
        b"\xa1\x01\x02",  # integer key
        b"\xf9\x00\x00",  # half float
        b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
        b"\xc1\x00",  # tag other than 42
        b"\xd8\x2a\x41\x01",  # CID without the 0x00 prefix
        b"\xf7",  # undefined
        b"\x01\x02",  # trailing bytes
        b"\x62\xff\xfe",  # invalid UTF-8
    ],
)
def test_non_canonical_input_is_rejected(data: bytes) -> None:
    with pytest.raises(CodecError):
        dagcbor.decode(data)


def test_links_in_document_order() -> None:
    a, b, c = (Cid.hash(bytes([i])) for i in range(3))
    value: dagcbor.Value = {"zz": [a, {"x": b}], "a": c}
    assert dagcbor.iter_links(value) == [c, a, b]
