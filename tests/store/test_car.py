"""CAR v1: incremental reading and writing, verification, and parity with @ipld/car."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.cid import DAG_CBOR, DAG_PB, RAW, Cid
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.store import (
    END,
    NEED_DATA,
    Blockstore,
    CarBlock,
    CarHeader,
    CarReader,
    CarWriter,
    cat,
    export_car,
    import_bytes,
    import_car,
    iter_car,
    iter_dag,
)
from sorap2p.store.car import encode_header
from sorap2p.store.errors import CodecError
from tests.store.interop import js_read_car, run_node

blocks_st = st.lists(
    st.tuples(st.binary(max_size=300), st.sampled_from([RAW, DAG_PB, DAG_CBOR])),
    max_size=8,
)


def _car(roots: list[Cid], blocks: list[tuple[Cid, bytes]]) -> bytes:
    out = io.BytesIO()
    writer = CarWriter(out.write, roots)
    for cid, data in blocks:
        writer.add(cid, data)
    assert writer.bytes_written == len(out.getvalue())
    return out.getvalue()


def _parse(data: bytes, step: int) -> list[CarHeader | CarBlock]:
    reader = CarReader()
    events: list[CarHeader | CarBlock] = []
    pos = 0
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            reader.receive_data(data[pos : pos + step])
            pos += step
        elif event is END:
            return events
        else:
            assert isinstance(event, CarHeader | CarBlock)
            events.append(event)


@settings(max_examples=60, deadline=None)
@given(blocks_st, st.integers(min_value=1, max_value=97), st.integers(min_value=0, max_value=3))
def test_round_trip_fed_in_pieces(spec: list[tuple[bytes, int]], step: int, nroots: int) -> None:
    blocks = [(Cid.hash(data, codec), data) for data, codec in spec]
    roots = [c for c, _ in blocks[:nroots]] or [Cid.hash(b"root")]
    events = _parse(_car(roots, blocks), step)
    assert events[0] == CarHeader(tuple(roots))
    assert events[1:] == [CarBlock(c, d) for c, d in blocks]


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _parse(data, 7)


def test_truncated_and_tampered_cars_are_rejected() -> None:
    cid = Cid.hash(b"block")
    good = _car([cid], [(cid, b"block")])
    with pytest.raises(CodecError, match="truncated"):
        _parse(good[:-2], 5)
    tampered = good[:-1] + b"X"
    with pytest.raises(CodecError, match="does not hash"):
        _parse(tampered, 1000)
    with pytest.raises(CodecError, match="empty"):
        _parse(b"", 10)


def test_header_bytes() -> None:
    cid = Cid.parse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
    header = encode_header([cid])
    # varint(len) {"roots": [tag42(0x00 || cid)], "version": 1}
    assert header[1:8] == b"\xa2eroots"
    assert header.endswith(b"gversion\x01")


def test_export_import_between_stores(tmp_path: Path) -> None:
    src = Blockstore(tmp_path / "a")
    data = os.urandom(3 << 20)
    root = import_bytes(src, data).root
    export_car(src, [root], tmp_path / "f.car")
    with open(tmp_path / "f.car", "rb") as f:
        events = list(iter_car(f, read_size=4096))
    assert [e.cid for e in events if isinstance(e, CarBlock)] == list(iter_dag(src, root))
    dst = Blockstore(tmp_path / "b")
    result = import_car(dst, tmp_path / "f.car")
    assert result.roots == (root,) and result.blocks == 4
    assert cat(dst, root) == data


def test_our_car_is_read_by_ipld_car(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "s")
    root = import_bytes(store, os.urandom((2 << 20) + 5)).root
    manifest = store.put(b"\xa1aa\xd8\x2a\x58\x25\x00" + root.raw, DAG_CBOR)
    export_car(store, [manifest], tmp_path / "ours.car")
    seen = js_read_car(tmp_path / "ours.car")
    assert seen["roots"] == [str(manifest)]
    assert [b["cid"] for b in seen["blocks"]] == [str(c) for c in iter_dag(store, manifest)]
    assert all(b["sha256ok"] for b in seen["blocks"])


def test_car_written_by_ipld_car_is_read_by_us(tmp_path: Path) -> None:
    blobs = [os.urandom(n) for n in (0, 10, 20000)]
    cids = [Cid.hash(b) for b in blobs]
    pairs = [f"{c}={b.hex()}" for c, b in zip(cids, blobs, strict=True)]
    run_node("car-tool.mjs", "write", str(tmp_path / "js.car"), str(cids[0]), *pairs)
    store = Blockstore(tmp_path / "s")
    result = import_car(store, tmp_path / "js.car")
    assert result.roots == (cids[0],) and result.blocks == 3
    assert [store.get(c) for c in cids] == blobs
    # and byte for byte what we would have written
    assert (tmp_path / "js.car").read_bytes() == _car(
        [cids[0]], list(zip(cids, blobs, strict=True))
    )


def test_reader_keeps_bytes_but_copies_buffers_the_caller_may_reuse() -> None:
    blocks = [(Cid.hash(d), d) for d in (b"a" * 5000, b"b" * 3, os.urandom(70_000))]
    car = _car([blocks[0][0]], blocks)
    reader = CarReader()
    buf = bytearray(car[:40_000])
    reader.receive_data(buf)
    buf[:] = b"\0" * len(buf)  # the caller reuses its buffer
    reader.receive_data(memoryview(car)[40_000:])
    reader.receive_data(b"")
    events = []
    while (event := reader.next_event()) is not END:
        assert event is not NEED_DATA
        events.append(event)
    assert events[1:] == [CarBlock(c, d) for c, d in blocks]
    assert all(type(e.data) is bytes for e in events[1:] if isinstance(e, CarBlock))
