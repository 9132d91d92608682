"""Yamux flow control (sorap2p.net.muxer) over real Noise + Yamux connections on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.net.host import Host
from sorap2p.net.muxer import ChunkBuffer, FrameBody
from sorap2p.net.streams import Stream, open_stream
from tests.net.helpers_net import create_hosts

pytestmark = pytest.mark.net

PROTO = "/sorap2p/test-bulk/1.0.0"
MAX_FRAME_ACCEPTED = 16 << 20  # py-libp2p 0.8.1 closes the connection above this


class Sink:
    """Server side: reads a stream to its end with ``read_size`` reads."""

    def __init__(self, read_size: int) -> None:
        self.read_size = read_size
        self.received = 0
        self.digest = hashlib.sha256()
        self.raw: Any = None
        self.done = trio.Event()
        self.error: BaseException | None = None

    async def handle(self, raw: Any) -> None:
        self.raw = raw
        stream = Stream(raw)
        try:
            while chunk := await stream.receive_some(self.read_size):
                self.received += len(chunk)
                self.digest.update(chunk)
        except ConnectionError as exc:
            self.error = exc
        self.done.set()


async def open_bulk(hosts: list[Host], sink: Sink) -> Stream:
    from libp2p.custom_types import TProtocol

    server, client = hosts
    server.raw.set_stream_handler(TProtocol(PROTO), sink.handle)
    peer = await client.connect(server.listen_addrs()[0])
    return await open_stream(client, peer, [PROTO])


async def test_one_40_mib_write_arrives_intact() -> None:
    payload = os.urandom(40 << 20)
    sink = Sink(1 << 20)
    async with create_hosts(2) as hosts:
        stream = await open_bulk(hosts, sink)
        with trio.fail_after(120):
            await stream.send_all(payload)
            await stream.send_eof()
            await sink.done.wait()
        assert sink.error is None
        assert sink.received == len(payload)
        assert sink.digest.digest() == hashlib.sha256(payload).digest()
        assert hosts[1].is_connected(hosts[0].peer_id)


async def burst_write(stream: Stream, sink: Sink, data: bytes) -> list[int]:
    """Write like js-libp2p's yamux: each write is ONE DATA frame as large as the whole
    send window. Between writes, wait until the reader has consumed everything and every
    window update has arrived, so that each frame is as large as the receiver's grant.
    Returns the frame sizes."""
    from libp2p.stream_muxer.yamux import yamux as y

    ys = stream._raw.muxed_stream
    frames: list[int] = []
    sent = 0
    while sent < len(data):
        with trio.fail_after(30):
            while not (
                sink.raw is not None
                and sink.received == sent
                and ys.send_window == sink.raw.muxed_stream.recv_window
            ):
                if sent == 0 and ys.send_window > 0:
                    break
                await trio.sleep(0.001)
        n = min(ys.send_window, len(data) - sent)
        assert n > 0
        ys.send_window -= n
        header = struct.pack(y.YAMUX_HEADER_FORMAT, 0, y.TYPE_DATA, 0, ys.stream_id, n)
        await ys.conn._write_frame(header + data[sent : sent + n])
        frames.append(n)
        sent += n
    return frames


@pytest.mark.parametrize("read_size", [1 << 20, 64 << 10])
async def test_a_sender_writing_whole_windows_is_never_granted_an_oversized_frame(
    read_size: int,
) -> None:
    # py-libp2p 0.8.1 alone grants more than 16 MiB of credit (17 MiB measured with 1 MiB
    # reads) and then closes the connection on the frame it invited: 40 MiB written in
    # whole-window frames broke the connection after ~20 MiB in every run.
    payload = os.urandom(40 << 20)
    sink = Sink(read_size)
    async with create_hosts(2) as hosts:
        stream = await open_bulk(hosts, sink)
        frames = await burst_write(stream, sink, payload)
        await stream.send_eof()
        with trio.fail_after(30):
            await sink.done.wait()
        assert sink.error is None
        assert sink.received == len(payload)
        assert sink.digest.digest() == hashlib.sha256(payload).digest()
        assert hosts[1].is_connected(hosts[0].peer_id)
        # the window did grow (the test exercised large frames) but never past the cap
        assert max(frames) > 4 << 20
        assert max(frames) <= MAX_FRAME_ACCEPTED
        assert sink.raw.muxed_stream.target_recv_window <= MAX_FRAME_ACCEPTED


async def test_writer_waits_for_credit_and_streams_share_the_connection() -> None:
    # a reader that stops reading: the writer blocks on the window (no error, no busy
    # loop) and a second stream on the same connection still works meanwhile
    payload = os.urandom(4 << 20)
    sink = Sink(1 << 20)
    gate = trio.Event()

    async def slow_handle(raw: Any) -> None:
        await gate.wait()
        await sink.handle(raw)

    async with create_hosts(2) as hosts:
        from libp2p.custom_types import TProtocol

        hosts[0].raw.set_stream_handler(TProtocol(PROTO), slow_handle)
        hosts[0].raw.set_stream_handler(TProtocol(PROTO + "/echo"), _echo)
        peer = await hosts[1].connect(hosts[0].listen_addrs()[0])
        stream = await open_stream(hosts[1], peer, [PROTO])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_all_then_eof, stream, payload)
            echo = await open_stream(hosts[1], peer, [PROTO + "/echo"])
            with trio.fail_after(10):
                await echo.send_all(b"ping")
                await echo.send_eof()
                assert await echo.receive_some(16) == b"ping"
            ys = stream._raw.muxed_stream
            with trio.fail_after(10):
                while ys.send_window > 0:  # noqa: ASYNC110 - polling a libp2p counter
                    await trio.sleep(0.005)
            gate.set()
        with trio.fail_after(30):
            await sink.done.wait()
        assert sink.received == len(payload)
        assert sink.digest.digest() == hashlib.sha256(payload).digest()


async def _send_all_then_eof(stream: Stream, data: bytes) -> None:
    with trio.fail_after(60):
        await stream.send_all(data)
        await stream.send_eof()


async def _echo(raw: Any) -> None:
    s = Stream(raw)
    data = await s.receive_some(16)
    await s.send_all(data)
    await s.aclose()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("extend"), st.binary(max_size=40)),
            st.tuples(st.just("body"), st.lists(st.binary(max_size=20), max_size=4)),
            st.tuples(st.just("take"), st.integers(-5, 70)),
            st.tuples(st.just("all"), st.none()),
            st.tuples(st.just("clear"), st.none()),
        ),
        max_size=30,
    )
)
def test_chunk_buffer_behaves_as_the_bytearray_it_replaces(ops: list[tuple[str, Any]]) -> None:
    """Every operation py-libp2p's Yamux performs on a stream buffer gives the result the
    ``bytearray`` would (reads as ``read_stream`` does them: ``bytes(buf[:n])``, ``del``)."""
    buf, model = ChunkBuffer(), bytearray()
    for op, arg in ops:
        if op == "extend":
            buf.extend(bytearray(arg) if len(arg) % 2 else arg)
            model.extend(arg)
        elif op == "body":
            parts = [memoryview(p) if i % 2 else p for i, p in enumerate(arg)]
            buf.extend(FrameBody(parts))
            model.extend(b"".join(arg))
        elif op == "take":
            assert bytes(buf[:arg]) == bytes(model[:arg])
            del buf[:arg]
            del model[:arg]
        elif op == "all":
            assert bytes(buf) == bytes(model)
        else:
            buf.clear()
            model.clear()
        assert len(buf) == len(model)
        assert bool(buf) == bool(model)
    assert bytes(buf) == bytes(model)


async def test_stream_buffers_are_chunk_buffers_on_both_sides() -> None:
    sink = Sink(1 << 20)
    async with create_hosts(2) as hosts:
        stream = await open_bulk(hosts, sink)
        await stream.send_all(b"x" * 100_000)
        await stream.send_eof()
        with trio.fail_after(30):
            await sink.done.wait()
        assert sink.received == 100_000
        for side in (stream._raw, sink.raw):
            buffers = side.muxed_conn.stream_buffers
            assert all(isinstance(b, ChunkBuffer) for b in buffers.values())
