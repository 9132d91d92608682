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
* Writes send frames of up to `MAX_FRAME` (256 KiB) bytes, not 64 KiB (which Noise then
  splits into a 65,519-byte and a 17-byte message), slice a memoryview instead of
  copying, and a writer waiting for credit wakes on the window update instead of
  polling every 10 ms.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Final

import trio

# DATA payload per frame we write. Larger frames cost less Python per byte (client +
# server CPU per 100 MiB on loopback: 64 KiB 0.40 + 0.28 s, 256 KiB 0.24 + 0.20 s,
# 1 MiB 0.21 + 0.16 s) but hold other streams of the connection behind them (head-of-line:
# 256 KiB is 21 ms at 100 Mbit/s, 1 MiB would be 84 ms): 256 KiB.
MAX_FRAME: Final = 256 << 10
MIN_RTT: Final = 0.01  # seconds; floor of the RTT estimate used for window auto-tuning
WINDOW_WAIT: Final = 30.0  # seconds a writer waits for credit before failing the stream
CLOSE_POLL: Final = 0.05  # seconds between checks for a reset while waiting for credit


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

        async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
            async with self.window_lock:
                buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
                delta = self.target_recv_window - (self.recv_window + buffered)
                if delta < self.target_recv_window // 2 or delta <= 0:
                    return
                now = trio.current_time()
                rtt = max(self._effective_rtt(), MIN_RTT)
                if self.epoch_start > 0 and now - self.epoch_start < 4 * rtt:
                    self.target_recv_window = min(self.target_recv_window * 2, max_window)
                    delta = self.target_recv_window - (self.recv_window + buffered)
                self.epoch_start = now
                self.recv_window += delta
            await self.send_window_update(delta, skip_lock=True)

        async def write(self, data: bytes) -> None:
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            view = memoryview(data).cast("B")
            total = len(view)
            sent = 0
            while sent < total:
                async with self.rw_lock.write_lock():
                    if self.send_closed:
                        raise MuxedStreamError("Stream is closed for sending")
                    async with self.window_lock:
                        if self.closed:
                            raise MuxedStreamError("Stream is closed")
                        n = min(self._sora_send_window, MAX_FRAME, total - sent)
                        if n > 0:
                            self._sora_send_window -= n
                        else:
                            self._sora_credit = trio.Event()
                if n <= 0:
                    with trio.move_on_after(WINDOW_WAIT) as waited:
                        while self._sora_send_window <= 0 and not self.closed:
                            # woken by the update; a reset (which sets no event) is
                            # noticed within CLOSE_POLL
                            with trio.move_on_after(CLOSE_POLL):
                                await self._sora_credit.wait()
                            if self._sora_send_window <= 0:
                                self._sora_credit = trio.Event()
                    if waited.cancelled_caught:
                        raise MuxedStreamError(
                            f"no window update from the peer for {WINDOW_WAIT} s"
                        )
                    continue
                frame = header.pack(0, y.TYPE_DATA, 0, self.stream_id, n) + view[sent : sent + n]
                await self.conn._write_frame(frame)
                sent += n

    class SoraYamux(y.Yamux):
        """`Yamux` whose streams are `SoraYamuxStream` (both directions)."""

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
