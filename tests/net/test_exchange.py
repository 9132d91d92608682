"""The CAR block-exchange protocol: parallel, verified, resumable (real hosts, real stores)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.core.cid import Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.net.exchange import (
    CAR_PROTOCOL,
    CarRequest,
    ExchangeConfig,
    FetchError,
    Status,
    fetch_dag,
    serve_car,
)
from sorap2p.net.host import Host, open_host
from sorap2p.store import Blockstore, iter_dag
from sorap2p.store.car import encode_header, encode_section
from sorap2p.store.errors import BlockNotFound
from sorap2p.store.unixfs import Profile, cat, import_bytes

SMALL = Profile("test", 1, True, 4096, 8)  # 3 levels for ~200 KiB
CFG = ExchangeConfig(read_batch_bytes=16 << 10, idle_timeout=5.0)


@given(st.binary(min_size=32, max_size=32), st.integers(0, 1 << 40), st.integers(0, 1 << 40))
def test_car_request_round_trip(digest: bytes, skip: int, limit: int) -> None:
    req = CarRequest(Cid.from_digest(digest), skip, limit)
    assert CarRequest.decode(req.encode()) == req


@given(st.binary(max_size=80))
def test_car_request_garbage_raises_remote_error(blob: bytes) -> None:
    with suppress(RemoteProtocolError, IndexError):
        CarRequest.decode(blob)


def make_store(path: Path, data: bytes) -> tuple[Blockstore, Cid]:
    store = Blockstore(path)
    return store, import_bytes(store, data, SMALL).root


class Tampering:
    """A block source that flips a byte of one block (what a lying peer sends)."""

    def __init__(self, inner: Blockstore, victim: Cid) -> None:
        self.inner, self.victim = inner, victim

    def has(self, cid: Cid) -> bool:
        return self.inner.has(cid)

    def get(self, cid: Cid) -> bytes:
        data = self.inner.get(cid)
        if cid == self.victim:
            return bytes([data[0] ^ 1]) + data[1:]
        return data


class Flaky:
    """Fails once (the server resets the stream) after ``after`` blocks."""

    def __init__(self, inner: Blockstore, after: int) -> None:
        self.inner, self.after, self.count, self.failed = inner, after, 0, False

    def has(self, cid: Cid) -> bool:
        return self.inner.has(cid)

    def get(self, cid: Cid) -> bytes:
        self.count += 1
        if not self.failed and self.count > self.after:
            self.failed = True
            raise BlockNotFound(cid)
        return self.inner.get(cid)


@asynccontextmanager
async def providers(sources: list[Any]) -> AsyncIterator[tuple[Host, list[Host], list[Any]]]:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_host(IdentityKey.generate()))
        hosts, servers = [], []
        for src in sources:
            h = await stack.enter_async_context(open_host(IdentityKey.generate()))
            servers.append(await stack.enter_async_context(serve_car(h, src, CFG)))
            await client.connect(h.listen_addrs()[0])
            hosts.append(h)
        yield client, hosts, servers


@pytest.mark.net
async def test_fetch_from_three_providers_in_parallel(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    sources = [make_store(tmp_path / f"p{i}", data)[0] for i in range(3)]
    root = make_store(tmp_path / "p0", data)[1]
    sink = Blockstore(tmp_path / "sink")
    async with providers(sources) as (client, hosts, servers):
        report = await fetch_dag(client, sink, root, [h.peer_id for h in hosts], CFG)
    assert cat(sink, root) == data
    assert report.blocks == len(list(iter_dag(sources[0], root)))
    assert len([p for p, n in report.by_provider.items() if n]) >= 2  # work was shared
    assert not report.failures
    assert sum(s.served for s in servers) >= 2


@pytest.mark.net
async def test_tampered_block_is_refused_and_fetched_from_another_provider(
    tmp_path: Path,
) -> None:
    data = os.urandom(100_000)
    good, root = make_store(tmp_path / "good", data)
    bad_store, _ = make_store(tmp_path / "bad", data)
    victim = list(iter_dag(bad_store, root))[-1]  # a leaf
    sink = Blockstore(tmp_path / "sink")
    async with providers([Tampering(bad_store, victim), good]) as (client, hosts, _):
        bad, honest = hosts[0].peer_id, hosts[1].peer_id
        cfg = ExchangeConfig(read_batch_bytes=4096, max_parallel=1)
        report = await fetch_dag(client, sink, root, [bad, honest], cfg)
    assert cat(sink, root) == data
    assert "invalid" in report.failures[bad]
    assert sink.get(victim) == good.get(victim)


@pytest.mark.net
async def test_only_tampering_providers_fail_the_fetch(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    store, root = make_store(tmp_path / "bad", data)
    victim = list(iter_dag(store, root))[-1]
    sink = Blockstore(tmp_path / "sink")
    async with providers([Tampering(store, victim)]) as (client, hosts, _):
        with pytest.raises(FetchError):
            await fetch_dag(client, sink, root, [hosts[0].peer_id], CFG)
    assert not sink.has(victim)


@pytest.mark.net
async def test_broken_transfer_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    store, root = make_store(tmp_path / "p", data)
    flaky = Flaky(store, after=40)
    sink = Blockstore(tmp_path / "sink")
    cfg = ExchangeConfig(read_batch_bytes=4096, max_parallel=1)
    async with providers([flaky]) as (client, hosts, servers):
        report = await fetch_dag(client, sink, root, [hosts[0].peer_id], cfg)
    assert flaky.failed
    assert cat(sink, root) == data
    assert report.failures[hosts[0].peer_id].startswith("connection broke")
    # resumed, not restarted: the server sent little more than the DAG once
    assert servers[0].bytes_sent < 1.3 * report.bytes


@pytest.mark.net
async def test_missing_root_and_unsolicited_blocks(tmp_path: Path) -> None:
    data = os.urandom(20_000)
    store, root = make_store(tmp_path / "p", data)
    empty = Blockstore(tmp_path / "empty")
    stranger = Cid.hash(b"not part of the DAG")
    sink = Blockstore(tmp_path / "sink")
    async with providers([empty, store]) as (client, hosts, _):
        report = await fetch_dag(client, sink, root, [h.peer_id for h in hosts], CFG)
        assert "NOT_FOUND" in report.failures.get(hosts[0].peer_id, "NOT_FOUND")
        assert cat(sink, root) == data

    async def liar(raw: Any) -> None:
        from sorap2p.net.streams import Stream

        s = Stream(raw)
        await s.receive_some()
        await s.send_all(bytes([Status.OK]) + encode_header([root]))
        await s.send_all(encode_section(stranger, b"not part of the DAG"))
        await s.aclose()

    sink2 = Blockstore(tmp_path / "sink2")
    async with open_host(IdentityKey.generate()) as lh, open_host(IdentityKey.generate()) as c:
        from libp2p.custom_types import TProtocol

        lh.raw.set_stream_handler(TProtocol(CAR_PROTOCOL), liar)
        await c.connect(lh.listen_addrs()[0])
        with pytest.raises(FetchError, match="unsolicited"):
            await fetch_dag(c, sink2, root, [lh.peer_id], CFG)
    assert not sink2.has(stranger)


@pytest.mark.net
async def test_blocks_larger_than_a_send_batch_and_stage_timings(tmp_path: Path) -> None:
    """The server sends a block larger than its batch buffer as a section of its own (here
    every block is); the report says how much CPU verifying and storing took."""
    data = os.urandom(150_000)
    store, root = make_store(tmp_path / "p", data)
    sink = Blockstore(tmp_path / "sink")
    cfg = ExchangeConfig(read_batch_bytes=1024, idle_timeout=5.0)
    async with providers([store]) as (client, hosts, servers):
        report = await fetch_dag(client, sink, root, [hosts[0].peer_id], cfg)
    assert cat(sink, root) == data
    assert report.blocks == len(list(iter_dag(store, root)))
    assert servers[0].bytes_sent > report.bytes
    assert report.verify_cpu_s > 0 and report.store_cpu_s > 0


class ShiftingSizes(Blockstore):
    """A store whose files change between the size check and the read (a block replaced
    under the server): the read straight into the send buffer must notice."""

    def size(self, cid: Cid) -> int:
        return super().size(cid) + 1


@pytest.mark.net
async def test_a_block_that_changes_while_read_fails_that_transfer_only(tmp_path: Path) -> None:
    data = os.urandom(60_000)
    good, root = make_store(tmp_path / "good", data)
    shifting = ShiftingSizes(tmp_path / "shifting")
    import_bytes(shifting, data, SMALL)
    sink = Blockstore(tmp_path / "sink")
    cfg = ExchangeConfig(read_batch_bytes=16 << 10, idle_timeout=5.0, max_parallel=1)
    async with providers([shifting, good]) as (client, hosts, _):
        report = await fetch_dag(client, sink, root, [h.peer_id for h in hosts], cfg)
    assert cat(sink, root) == data
    assert "connection broke" in report.failures[hosts[0].peer_id]
