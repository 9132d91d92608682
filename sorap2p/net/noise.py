"""Noise over a read-ahead buffer: py-libp2p 0.8.1's Noise transport, reads batched.

py-libp2p reads every Noise transport message with two socket reads: the 2-byte length
prefix, then the (up to 65,535-byte) body, each through four layers of Python and one
``recv`` system call. `BufferedConn` sits between Noise and the TCP connection and reads
up to `READ_AHEAD` bytes at a time, so most length prefixes and bodies are served from
memory (about one ``recv`` per four messages in a bulk transfer instead of two per
message). Nothing else changes: the handshake and the messages are the same bytes.
"""

from __future__ import annotations

import functools
from typing import Any, Final

READ_AHEAD: Final = 256 << 10  # bytes asked of the socket per read


class BufferedConn:
    """A raw libp2p connection whose reads are served from a read-ahead buffer.

    ``read(n)`` returns at most ``n`` bytes (fewer when fewer are buffered: stream
    semantics, as the connection it wraps); every other attribute is the wrapped
    connection's.
    """

    __slots__ = ("_buf", "_conn", "_pos")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._buf = b""
        self._pos = 0

    async def read(self, n: int | None = None) -> bytes:
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            end = len(buf) if n is None else min(len(buf), pos + n)
            self._pos = end
            return buf[pos:end] if (pos or end != len(buf)) else buf
        if n is not None and n >= READ_AHEAD:
            data: bytes = await self._conn.read(n)
            return data
        chunk: bytes = await self._conn.read(READ_AHEAD)
        if n is None or len(chunk) <= n:
            return chunk
        self._buf, self._pos = chunk, n
        return chunk[:n]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@functools.cache
def noise_transport_class() -> type[Any]:
    """Our Noise `Transport` subclass (built on first use: importing stays cheap)."""
    from libp2p.security.noise.transport import Transport

    class SoraNoiseTransport(Transport):
        async def secure_inbound(self, conn: Any) -> Any:
            buffered: Any = BufferedConn(conn)  # duck-types libp2p's IRawConnection
            return await super().secure_inbound(buffered)

        async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
            buffered: Any = BufferedConn(conn)
            return await super().secure_outbound(buffered, peer_id)

    return SoraNoiseTransport
