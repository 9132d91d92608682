"""Bitswap 1.2: wire format, py <-> py exchange, refusal of tampered and unsolicited blocks,
and interop with Helia 7 / js-libp2p 3 (a real node process on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.core.cid import DAG_PB, RAW, Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.net.bitswap import (
    BITSWAP_120,
    Bitswap,
    BitswapConfig,
    FetchError,
    Message,
    MessageReader,
    Presence,
    Want,
    WantType,
    bitswap_fetch,
    cid_prefix,
    decode_message,
    encode_message,
    frame,
    serve_bitswap,
)
from sorap2p.net.host import Host, open_host
from sorap2p.net.streams import Stream, open_stream
from sorap2p.store import Blockstore, iter_dag
from sorap2p.store.unixfs import Profile, cat, import_bytes
from tests.net.helpers_net import eventually

SMALL = Profile("test", 1, True, 4096, 8)  # ~50 blocks in 3 levels for 150 KiB
CFG = BitswapConfig(idle_timeout=5.0, window=16)
REPO = Path(__file__).resolve().parents[2]
INTEROP = REPO / "interop"


# -- wire format -------------------------------------------------------------------

cids = st.builds(Cid.hash, st.binary(max_size=64), st.sampled_from([RAW, DAG_PB]))


@given(
    st.lists(
        st.builds(Want, cids, st.sampled_from(WantType), st.booleans(), st.booleans()),
        max_size=5,
    ),
    st.lists(st.binary(max_size=300), max_size=4),
    st.lists(st.tuples(cids, st.sampled_from(Presence)), max_size=4),
)
def test_message_round_trip(
    wants: list[Want], blobs: list[bytes], presences: list[tuple[Cid, Presence]]
) -> None:
    blocks = [(Cid.hash(b, RAW), b) for b in blobs]
    msg = Message(wants=wants, blocks=blocks, presences=presences)
    back = decode_message(encode_message(msg))
    assert back.wants == wants
    assert back.blocks == blocks
    assert back.presences == presences
    assert back.rejected_blocks == 0


def test_cidv0_block_keeps_its_version() -> None:
    data = b"\x0a\x02\x08\x01"  # a tiny dag-pb node
    v0 = Cid.decode(b"\x12\x20" + hashlib.sha256(data).digest())
    assert cid_prefix(v0) == b"\x00\x70\x12\x20"
    back = decode_message(encode_message(Message(blocks=[(v0, data)])))
    assert back.blocks == [(v0, data)]


def test_tampered_payload_gets_another_cid_and_bad_prefixes_are_rejected() -> None:
    data = b"payload" * 10
    cid = Cid.hash(data)
    body = bytearray(encode_message(Message(blocks=[(cid, data)])))
    body[-1] ^= 1  # last byte of the data
    ((got, _),) = decode_message(bytes(body)).blocks
    assert got != cid
    # identity-hash prefix: refused, not trusted
    prefix = b"\x01\x55\x00\x05"
    block = b"\x0a\x04" + prefix + b"\x12\x05hello"
    msg = decode_message(b"\x1a" + bytes([len(block)]) + block)
    assert msg.blocks == [] and msg.rejected_blocks == 1
    oversized = decode_message(encode_message(Message(blocks=[(cid, data)])), max_block=10)
    assert oversized.blocks == [] and oversized.rejected_blocks == 1


@given(st.binary(max_size=200))
def test_garbage_raises_only_remote_protocol_error(blob: bytes) -> None:
    with suppress(RemoteProtocolError):
        decode_message(blob)


def test_message_reader_splits_and_caps() -> None:
    reader = MessageReader(max_message=100)
    stream = frame(b"a" * 10) + frame(b"b" * 100)
    assert reader.feed(stream[:5]) == []
    assert reader.feed(stream[5:]) == [b"a" * 10, b"b" * 100]
    with pytest.raises(RemoteProtocolError):
        reader.feed(frame(b"c" * 101))


# -- py <-> py ---------------------------------------------------------------------


class Tampering:
    """A block source that flips a byte of one block (what a lying peer sends)."""

    def __init__(self, inner: Blockstore, victim: Cid) -> None:
        self.inner, self.victim = inner, victim

    def has(self, cid: Cid) -> bool:
        return self.inner.has(cid)

    def get(self, cid: Cid) -> bytes:
        data = self.inner.get(cid)
        return bytes([data[0] ^ 1]) + data[1:] if cid == self.victim else data


@asynccontextmanager
async def providers(sources: list[Any]) -> AsyncIterator[tuple[Host, list[Host], list[Bitswap]]]:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_host(IdentityKey.generate()))
        hosts, engines = [], []
        for src in sources:
            h = await stack.enter_async_context(open_host(IdentityKey.generate()))
            engines.append(await stack.enter_async_context(serve_bitswap(h, src, CFG)))
            await client.connect(h.listen_addrs()[0])
            hosts.append(h)
        yield client, hosts, engines


@pytest.mark.net
async def test_two_hosts_exchange_a_multi_block_dag(tmp_path: Path) -> None:
    data = os.urandom(150_000)
    source = Blockstore(tmp_path / "src")
    root = import_bytes(source, data, SMALL).root
    expected = len(list(iter_dag(source, root)))
    assert expected > 30
    sink = Blockstore(tmp_path / "sink")
    async with providers([source]) as (client, hosts, engines):
        fetched = await bitswap_fetch(client, sink, root, [hosts[0].peer_id], CFG)
        await eventually(lambda: engines[0].stats["blocks_sent"] == expected)
        # a second fetch of the same DAG asks for nothing
        assert await bitswap_fetch(client, sink, root, [hosts[0].peer_id], CFG) == 0
    assert fetched == expected
    assert cat(sink, root) == data


@pytest.mark.net
async def test_tampered_block_is_refused_and_fetched_from_another_provider(
    tmp_path: Path,
) -> None:
    data = os.urandom(60_000)
    good = Blockstore(tmp_path / "good")
    root = import_bytes(good, data, SMALL).root
    victim = list(iter_dag(good, root))[-1]  # a leaf
    sink = Blockstore(tmp_path / "sink")
    async with providers([Tampering(good, victim)]) as (client, hosts, _):
        with pytest.raises(FetchError, match="misbehaved"):
            await bitswap_fetch(client, sink, root, [hosts[0].peer_id], CFG)
    assert not sink.has(victim)
    async with providers([Tampering(good, victim), good]) as (client, hosts, _):
        await bitswap_fetch(client, sink, root, [h.peer_id for h in hosts], CFG)
    assert cat(sink, root) == data
    assert sink.get(victim) == good.get(victim)


@pytest.mark.net
async def test_unsolicited_block_is_not_stored(tmp_path: Path) -> None:
    sink = Blockstore(tmp_path / "sink")
    data = b"nobody asked for this"
    cid = Cid.hash(data)
    async with (
        open_host(IdentityKey.generate()) as a,
        open_host(IdentityKey.generate()) as b,
        serve_bitswap(b, sink, CFG) as engine,
    ):
        await a.connect(b.listen_addrs()[0])
        stream = await open_stream(a, b.peer_id, [BITSWAP_120])
        await stream.send_all(frame(encode_message(Message(blocks=[(cid, data)]))))
        await stream.send_eof()
        await eventually(lambda: engine.stats["unwanted_blocks"] == 1)
    assert not sink.has(cid)


@pytest.mark.net
async def test_replies_go_on_a_new_stream_with_presences(tmp_path: Path) -> None:
    from libp2p.custom_types import TProtocol

    source = Blockstore(tmp_path / "src")
    block, have = b"a block" * 100, b"have it"
    a, b = source.put(block), source.put(have)
    absent = Cid.hash(b"absent")
    send, recv = trio.open_memory_channel[Message](8)

    async def inbound(raw: Any) -> None:  # what the server sends us on ITS stream
        stream, reader = Stream(raw), MessageReader(1 << 20)
        while data := await stream.receive_some():
            for body in reader.feed(data):
                await send.send(decode_message(body))

    async with providers([source]) as (client, hosts, _):
        client.raw.set_stream_handler(TProtocol(BITSWAP_120), inbound)
        ours = await open_stream(client, hosts[0].peer_id, [BITSWAP_120])
        wants = [Want(a), Want(b, WantType.HAVE), Want(absent)]
        await ours.send_all(frame(encode_message(Message(wants=wants))))
        await ours.send_eof()
        got = Message()
        with trio.fail_after(10):
            while len(got.blocks) + len(got.presences) < 3:
                msg = await recv.receive()
                got.blocks += msg.blocks
                got.presences += msg.presences
            assert await ours.receive_some() == b""  # nothing came back on our own stream
    assert got.blocks == [(a, block)]
    assert sorted(got.presences) == sorted([(b, Presence.HAVE), (absent, Presence.DONT_HAVE)])


@pytest.mark.net
async def test_missing_block_fails_with_dont_have(tmp_path: Path) -> None:
    source = Blockstore(tmp_path / "src")
    absent = Cid.hash(b"not there")
    async with providers([source]) as (client, hosts, _):
        with trio.fail_after(4), pytest.raises(FetchError, match="no provider has"):
            await bitswap_fetch(client, Blockstore(tmp_path / "sink"), absent, [hosts[0].peer_id])


# -- Helia interop -------------------------------------------------------------------


def _helia_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for pkg in ("helia", "@helia/bitswap", "@libp2p/gossipsub", "@libp2p/tcp"):
        if not (INTEROP / "node_modules" / pkg / "package.json").exists():
            return f"interop/node_modules lacks {pkg}: run scripts/setup.sh (npm ci in interop/)"
    return None


helia_needed = pytest.mark.skipif(_helia_missing() is not None, reason=str(_helia_missing()))


class HeliaPeer:
    """interop/helia-peer.mjs as a child process, one JSON line per command."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""
        self.gossip: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError("helia-peer.mjs exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        obj: dict[str, Any] = json.loads(line)
        return obj

    async def reply(self) -> dict[str, Any]:
        while True:
            obj = await self._line()
            if "gossip" in obj:
                self.gossip.append(obj)
                continue
            return obj

    async def command(self, line: str, within: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with trio.fail_after(within):
            await self.proc.stdin.send_all(line.encode() + b"\n")
            obj = await self.reply()
        assert "error" not in obj, obj
        return obj


@asynccontextmanager
async def helia_peer() -> AsyncIterator[HeliaPeer]:
    import subprocess

    proc = await trio.lowlevel.open_process(
        ["node", str(INTEROP / "helia-peer.mjs")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=INTEROP,
    )
    peer = HeliaPeer(proc)
    try:
        with trio.fail_after(30):
            peer.info = await peer.reply()
        assert peer.info["ready"] and peer.info["addrs"][0].startswith("/ip4/127.0.0.1/")
        yield peer
    finally:
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                with trio.move_on_after(1):
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await proc.stdin.send_all(b"quit\n")
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@helia_needed
@pytest.mark.net
@pytest.mark.slow
async def test_helia_dials_us_and_fetches_our_dag(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    store = Blockstore(tmp_path / "src")
    root = import_bytes(store, data, SMALL).root
    blocks = len(list(iter_dag(store, root)))
    async with (
        open_host(IdentityKey.generate()) as host,
        serve_bitswap(host, store) as engine,
        helia_peer() as js,
    ):
        got = await js.command(f"connect {host.listen_addrs()[0]}")
        assert got["peer"] == str(host.peer_id)  # Noise + Yamux handshake with our identity
        got = await js.command(f"getdag {root} 30000", within=60)
        assert got["leaves_sha256"] == hashlib.sha256(data).hexdigest()
        assert got["blocks"] == blocks
        # our counter moves after the last write returns
        await eventually(lambda: engine.stats["blocks_sent"] >= blocks)


@helia_needed
@pytest.mark.net
@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "chunk", "links"),
    [
        (400_000, 65536, 8),  # 3 levels
        # 1 MiB blocks, 24 of them: without the byte window Helia writes > 16 MiB Yamux
        # frames, and py-libp2p drops the connection
        (24 << 20, 1 << 20, 1024),
    ],
)
async def test_we_dial_helia_and_fetch_its_dag(
    tmp_path: Path, size: int, chunk: int, links: int
) -> None:
    sink = Blockstore(tmp_path / "sink")
    async with (
        open_host(IdentityKey.generate()) as host,
        serve_bitswap(host, sink) as engine,
        helia_peer() as js,
    ):
        added = await js.command(f"add {size} seed-1 {chunk} {links}", within=60)
        root = Cid.parse(added["cid"])
        js_peer = await host.connect(js.info["addrs"][0])
        assert str(js_peer) == js.info["peer"]
        with trio.fail_after(60):
            fetched = await engine.fetch(sink, root, [js_peer])
    assert fetched == len(list(iter_dag(sink, root))) >= size // chunk
    assert hashlib.sha256(cat(sink, root)).hexdigest() == added["sha256"]


@helia_needed
@pytest.mark.net
@pytest.mark.slow
async def test_gossip_both_ways_with_js_libp2p() -> None:
    from sorap2p.core.ids import SubnetId
    from sorap2p.core.topics import Topic, TopicKind
    from sorap2p.core.validation import Verdict
    from sorap2p.net.gossip import ValidatorRegistry, open_gossip

    topic = Topic(SubnetId("interop"), TopicKind.UPDATES)
    registry = ValidatorRegistry({TopicKind.UPDATES: lambda origin, data: Verdict.accept()})
    async with (
        open_host(IdentityKey.generate()) as host,
        open_gossip(host, registry) as gossip,
        helia_peer() as js,
    ):
        sub = await gossip.subscribe(topic)
        await js.command(f"subscribe {topic}")
        await js.command(f"connect {host.listen_addrs()[0]}")
        # js -> py: publish until the mesh has formed and one message arrives (StrictSign)
        got = None
        with trio.fail_after(30):
            while got is None:
                await js.command(f"publish {topic} {b'from-js'.hex()}")
                with trio.move_on_after(0.5):
                    got = await sub.receive()
        assert got.data == b"from-js" and str(got.origin) == js.info["peer"]
        # py -> js
        with trio.fail_after(30):
            while not js.gossip:
                await gossip.publish(topic, b"from-py")
                await js.command("peers")  # drains lines, collecting gossip
                if not js.gossip:
                    await trio.sleep(0.2)
        assert js.gossip[0]["gossip"] == str(topic)
        assert bytes.fromhex(js.gossip[0]["data_hex"]) == b"from-py"
