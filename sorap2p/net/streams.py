"""A small, typed face for libp2p streams (the rest of net speaks only this).

`Stream.receive_some` returns ``b""`` at end of stream (trio's convention) instead of
raising libp2p's `StreamEOF`; resets and other transport failures become the builtin
`ConnectionError`. Nothing here buffers more than one read.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from sorap2p.core.ids import PeerId
from sorap2p.net.host import from_libp2p_id

# seconds a peer has to accept a new stream (dial included when not connected)
OPEN_TIMEOUT: Final = 15.0

DEFAULT_READ: Final = 256 * 1024


class Stream:
    """One libp2p stream (our end)."""

    __slots__ = ("_raw", "peer", "protocol")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.peer: PeerId = from_libp2p_id(raw.muxed_conn.peer_id)
        self.protocol: str = str(raw.get_protocol() or "")

    async def receive_some(self, max_bytes: int = DEFAULT_READ) -> bytes:
        from libp2p.network.stream.exceptions import StreamEOF

        try:
            data: bytes = await self._raw.read(max_bytes)
        except StreamEOF:
            return b""
        except Exception as exc:
            if type(exc).__module__.startswith("libp2p"):
                raise ConnectionError(f"stream from {self.peer} failed: {exc!r}") from exc
            raise
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (not kept after the call returns: the caller may reuse it)."""
        muxed = getattr(self._raw, "muxed_stream", None)
        if not isinstance(data, bytes) and not getattr(muxed, "takes_views", False):
            data = bytes(data)  # a muxer of py-libp2p's own may want bytes
        try:
            await self._raw.write(data)
        except Exception as exc:
            if type(exc).__module__.startswith("libp2p"):
                raise ConnectionError(f"stream to {self.peer} failed: {exc!r}") from exc
            raise

    async def send_eof(self) -> None:
        """Half-close: we send nothing more, the peer may still answer."""
        try:
            await self._raw.close_write()
        except Exception as exc:
            if type(exc).__module__.startswith("libp2p"):
                raise ConnectionError(f"stream to {self.peer} failed: {exc!r}") from exc
            raise

    async def aclose(self) -> None:
        try:
            await self._raw.close()
        except Exception:  # closing a broken stream is not an error worth reporting
            return

    async def reset(self) -> None:
        try:
            await self._raw.reset()
        except Exception:
            return


async def open_stream(
    host: Any, peer: PeerId, protocols: list[str], *, limit_s: float = OPEN_TIMEOUT
) -> Stream:
    """Open a stream to a connected (or dialable) peer; `ConnectionError` on failure or when
    the peer does not complete the protocol negotiation within ``limit_s`` seconds (a
    connection whose packets silently vanish, e.g. across a network partition, would
    otherwise hold the caller forever)."""
    from libp2p.custom_types import TProtocol

    from sorap2p.net.host import to_libp2p_id

    try:
        with trio.fail_after(limit_s):
            raw = await host.raw.new_stream(to_libp2p_id(peer), [TProtocol(p) for p in protocols])
    except trio.TooSlowError:
        raise ConnectionError(f"opening {protocols} to {peer}: no answer in {limit_s} s") from None
    except Exception as exc:
        if type(exc).__module__.startswith("libp2p"):
            raise ConnectionError(f"cannot open {protocols} to {peer}: {exc}") from exc
        raise
    return Stream(raw)
