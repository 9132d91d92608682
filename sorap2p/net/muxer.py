"""Yamux with sound flow control: py-libp2p 0.8.1's muxer, two methods replaced.

The defect (py-libp2p 0.8.1, ``libp2p/stream_muxer/yamux/yamux.py``):

* ``Yamux.handle_incoming`` closes the whole connection when a DATA frame announces more
  than ``MAX_WINDOW_SIZE`` (16 MiB) bytes ("announced oversized DATA frame ... closing
  connection").
* ``YamuxStream._auto_tune_and_send_window_update`` can grant a peer more than 16 MiB of
  credit: its "partial slack" branch adds ``bytes_read`` on top of the GrowTo delta and
  its "pending flush" branch adds released bytes without comparing with the target, so
  ``recv_window`` drifts above the 16 MiB cap (17 MiB measured with 1 MiB reads).
* A sender that writes one DATA frame as large as its send window (js-libp2p's yamux
  does; the spec allows it) then writes a frame over 16 MiB after a pause, and the
  receiver drops the connection with every stream on it. py-libp2p's own writer cuts
  frames at 64 KiB, which is why two py-libp2p hosts never see it.

The fix, per stream (installed by `open_host` through ``muxer_opt``):

* Window updates follow go-yamux's ``sendWindowUpdate``: grant exactly
  ``target - (recv_window + buffered)`` once that is at least half the target, so the
  credit a peer holds plus what we buffer never exceeds ``target <= MAX_WINDOW_SIZE``:
  no compliant sender can produce a frame the receive check refuses, and a stream
  buffers at most 16 MiB. The target doubles (up to the cap) when updates follow each
  other within four round trips (the RTT estimate is floored at `MIN_RTT` so that
  loopback and LAN transfers reach the full window).
* Writes send frames of up to `MAX_FRAME` (~256 KiB) bytes, not 64 KiB (which Noise then
  splits into a 65,519-byte and a 17-byte message), slice a memoryview instead of
  copying (and over our Noise session, `sorap2p.net.noise`, hand header and payload over
  apart: no join), and a writer waiting for credit wakes on the window update instead of
  polling every 10 ms.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from typing import Any, Final

import trio

# DATA payload per frame we write. Larger frames cost less Python per byte (client +
# server CPU per 100 MiB on loopback: 64 KiB 0.40 + 0.28 s, 256 KiB 0.24 + 0.20 s,
# 1 MiB 0.21 + 0.16 s) but hold other streams of the connection behind them (head-of-line:
# 256 KiB is 21 ms at 100 Mbit/s, 1 MiB would be 84 ms): 256 KiB less 80 bytes, so that
# header + payload fill exactly four Noise messages of 65,519 bytes (256 KiB + 12 would
# take a fifth message of 80 bytes, decrypted and parsed like the others).
MAX_FRAME: Final = 4 * (65535 - 16) - 12
# Bytes of frames a writer hands to our Noise session at once (one socket write, one pass
# through the connection's lock; the receiver still sees `MAX_FRAME` frames). Four frames
# per write measured no better than one on loopback (CPU and MiB/s within the noise) and
# would hold other streams' frames behind 1 MiB instead of 256 KiB: one frame.
MAX_BURST: Final = MAX_FRAME
MIN_RTT: Final = 0.01  # seconds; floor of the RTT estimate used for window auto-tuning
WINDOW_WAIT: Final = 30.0  # seconds a writer waits for credit before failing the stream
CLOSE_POLL: Final = 0.05  # seconds between checks for a reset while waiting for credit


class FrameBody:
    """A DATA frame's body as the plaintext pieces it arrived in (no join): what
    `ChunkBuffer.extend` takes from our ``_read_data_body``."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size


class ChunkBuffer:
    """What py-libp2p's Yamux keeps a stream's received bytes in, without its copies.

    It stands in for the ``bytearray`` (``extend``, ``len``, ``bytes()``, ``buf[:n]``,
    ``del buf[:n]``, ``clear``: the operations ``yamux.py`` uses): ``extend`` keeps the
    pieces it is given and ``bytes()`` / ``buf[:n]`` join them once (a lone piece is
    returned as it is), where the ``bytearray`` copied every byte in and out again.
    """

    __slots__ = ("_chunks", "_len")

    def __init__(self, data: Any = b"") -> None:
        self._chunks: deque[bytes | memoryview] = deque()
        self._len = 0
        self.extend(data)

    def extend(self, data: Any) -> None:
        if isinstance(data, FrameBody):
            self._chunks.extend(data.parts)
            self._len += data.size
            return
        if not len(data):
            return
        piece = data if isinstance(data, bytes) else bytes(data)
        self._chunks.append(piece)
        self._len += len(piece)

    def __len__(self) -> int:
        return self._len

    def __bytes__(self) -> bytes:
        chunks = self._chunks
        if len(chunks) == 1 and isinstance(chunks[0], bytes):
            return chunks[0]
        return b"".join(chunks)

    def _prefix(self, n: int) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = []
        need = n
        for chunk in self._chunks:
            if need <= 0:
                break
            piece = chunk if len(chunk) <= need else memoryview(chunk)[:need]
            parts.append(piece)
            need -= len(piece)
        return parts

    def _prefix_length(self, key: slice) -> int | None:
        """``n`` when ``key`` is ``[:n]`` (as a ``bytearray`` reads it), else None."""
        if not isinstance(key, slice):
            return None
        start, stop, step = key.indices(self._len)
        return max(0, stop) if start == 0 and step == 1 else None

    def __getitem__(self, key: slice) -> bytes:
        n = self._prefix_length(key)
        if n is None:
            return bytes(self)[key]
        parts = self._prefix(n)
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def __delitem__(self, key: slice) -> None:
        n = self._prefix_length(key)
        if n is None:
            raise TypeError("ChunkBuffer deletes only a prefix")
        self._len -= n
        chunks = self._chunks
        while n:
            first = chunks[0]
            if len(first) > n:
                chunks[0] = memoryview(first)[n:]
                return
            chunks.popleft()
            n -= len(first)

    def clear(self) -> None:
        self._chunks.clear()
        self._len = 0


class StreamBuffers(dict[int, Any]):
    """Yamux's ``stream_buffers``: every buffer put in becomes a `ChunkBuffer`."""

    def __setitem__(self, key: int, value: Any) -> None:
        super().__setitem__(key, value if isinstance(value, ChunkBuffer) else ChunkBuffer(value))


@functools.cache
def yamux_class() -> type[Any]:
    """Our `Yamux` subclass (built on first use: importing this module stays cheap)."""
    from libp2p.stream_muxer.exceptions import MuxedStreamError
    from libp2p.stream_muxer.yamux import yamux as y

    header = struct.Struct(y.YAMUX_HEADER_FORMAT)
    max_window: int = y.MAX_WINDOW_SIZE

    class SoraYamuxStream(y.YamuxStream):
        """A `YamuxStream` whose grants never exceed the receive cap (see module doc)."""

        _sora_send_window: int
        _sora_credit: trio.Event
        takes_views: Final = True  # `write` takes any buffer and is done with it on return

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._sora_send_window = 0
            self._sora_credit = trio.Event()
            super().__init__(*args, **kwargs)  # sets send_window through the property

        # handle_incoming does ``stream.send_window += n``: the setter wakes writers
        @property
        def send_window(self) -> int:
            return self._sora_send_window

        @send_window.setter
        def send_window(self, value: int) -> None:
            grew = value > self._sora_send_window
            self._sora_send_window = value
            if grew:
                self._sora_credit.set()

        @classmethod
        def adopt(cls, stream: Any) -> Any:
            """Turn a freshly made `YamuxStream` into one of ours (in place)."""
            if isinstance(stream, cls):
                return stream
            window = stream.__dict__.pop("send_window")
            stream.__class__ = cls
            stream._sora_credit = trio.Event()
            stream._sora_send_window = window
            stream.target_recv_window = min(stream.target_recv_window, max_window)
            return stream

        # The window bookkeeping below is synchronous, so it needs ``window_lock`` only
        # while another task holds it (py-libp2p's own code never awaits inside it):
        # taking a free trio lock costs a trip through the scheduler, per frame.
        async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
            if self.window_lock.locked():
                async with self.window_lock:
                    delta = self._sora_grant()
            else:
                delta = self._sora_grant()
            if delta > 0:
                await self.send_window_update(delta, skip_lock=True)

        def _sora_grant(self) -> int:
            """The credit to grant now (already added to ``recv_window``), or 0."""
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta: int = self.target_recv_window - (self.recv_window + buffered)
            if delta < self.target_recv_window // 2 or delta <= 0:
                return 0
            now = trio.current_time()
            rtt = max(self._effective_rtt(), MIN_RTT)
            if self.epoch_start > 0 and now - self.epoch_start < 4 * rtt:
                self.target_recv_window = min(self.target_recv_window * 2, max_window)
                delta = self.target_recv_window - (self.recv_window + buffered)
            self.epoch_start = now
            self.recv_window += delta
            return delta

        def _sora_reserve(self, want: int) -> int:
            """Take up to ``want`` bytes (one frame) of send window; 0 when there is none."""
            if self.closed:
                raise MuxedStreamError("Stream is closed")
            n = min(self._sora_send_window, MAX_FRAME, want)
            if n > 0:
                self._sora_send_window -= n
            else:
                self._sora_credit = trio.Event()
            return n

        async def write(self, data: bytes) -> None:
            """Send ``data`` in frames as the window allows. The whole write holds the
            stream's write lock (two writers' frames never interleave) and each frame the
            connection's (taken without a scheduler trip when free)."""
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            view = memoryview(data).cast("B")
            total = len(view)
            sent = 0
            async with self.rw_lock.write_lock():
                while sent < total:
                    if self.send_closed:
                        raise MuxedStreamError("Stream is closed for sending")
                    conn = self.conn
                    write_frames = getattr(conn.secured_conn, "write_frames", None)
                    burst = min(total - sent, MAX_BURST if write_frames else MAX_FRAME)
                    frames: list[tuple[bytes, memoryview]] = []
                    while burst > 0:
                        if self.window_lock.locked():
                            async with self.window_lock:
                                n = self._sora_reserve(burst)
                        else:
                            n = self._sora_reserve(burst)
                        if n <= 0:
                            break
                        head = header.pack(0, y.TYPE_DATA, 0, self.stream_id, n)
                        frames.append((head, view[sent : sent + n]))
                        sent += n
                        burst -= n
                    if not frames:
                        await self._sora_wait_for_credit()
                        continue
                    if write_frames is None:
                        head, body = frames[0]
                        await conn._write_frame(head + body)
                        continue
                    # our Noise session: headers and payloads encrypted, no joins, one
                    # socket write for the burst
                    lock = conn._write_lock
                    try:
                        lock.acquire_nowait()
                    except trio.WouldBlock:
                        await lock.acquire()
                    try:
                        await write_frames(frames)
                    finally:
                        lock.release()

        async def _sora_wait_for_credit(self) -> None:
            with trio.move_on_after(WINDOW_WAIT) as waited:
                while self._sora_send_window <= 0 and not self.closed:
                    # woken by the update; a reset (which sets no event) is noticed
                    # within CLOSE_POLL
                    with trio.move_on_after(CLOSE_POLL):
                        await self._sora_credit.wait()
                    if self._sora_send_window <= 0:
                        self._sora_credit = trio.Event()
            if waited.cancelled_caught:
                raise MuxedStreamError(f"no window update from the peer for {WINDOW_WAIT} s")

    class SoraYamux(y.Yamux):
        """`Yamux` whose streams are `SoraYamuxStream` (both directions)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.stream_buffers = StreamBuffers(self.stream_buffers)

        async def _read_data_body(self, length: int) -> Any:
            """A DATA frame's body: over our Noise session, the plaintext pieces as they
            were decrypted (a `FrameBody`, which `ChunkBuffer` keeps without a copy)
            instead of ``read_exactly`` (three copies)."""
            conn = self.secured_conn
            read_parts = getattr(conn, "read_parts", None)
            readable_now = getattr(conn, "readable_now", None)
            if read_parts is None or readable_now is None:
                return await super()._read_data_body(length)
            if readable_now(length):  # all of it decrypts now: no timeout scope needed
                body = FrameBody(await read_parts(length))
            else:
                with trio.fail_after(y._yamux_data_read_timeout()):
                    body = FrameBody(await read_parts(length))
            if body.size < length:  # the session ended mid-frame: py-libp2p's error
                from libp2p.io.utils import read_exactly

                with trio.fail_after(y._yamux_data_read_timeout()):
                    await read_exactly(conn, length - body.size)
            return body

        async def open_stream(self) -> Any:
            return SoraYamuxStream.adopt(await super().open_stream())

        async def accept_stream(self) -> Any:
            return SoraYamuxStream.adopt(await super().accept_stream())

    return SoraYamux


def install_muxer(raw_host: Any) -> None:
    """Make ``raw_host`` (a libp2p host, not started) use `yamux_class` for Yamux.

    py-libp2p's `MuxerMultistream.new_conn` constructs its own `Yamux` whenever Yamux is
    negotiated, whatever class ``muxer_opt`` names: replace that one method on this
    host's upgrader so that the negotiated class is the one constructed.
    """
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID

    muxers = raw_host.get_network().upgrader.muxer_multistream
    cls = yamux_class()

    async def new_conn(conn: Any, peer_id: Any) -> Any:
        protocol, transport_class = await muxers._selector.select(
            conn, conn.is_initiator, muxers.negotiate_timeout
        )
        if protocol == PROTOCOL_ID:
            transport_class = cls
        muxed = transport_class(conn, peer_id)
        return muxers._annotate_connection(muxed, conn, protocol)

    muxers.new_conn = new_conn
