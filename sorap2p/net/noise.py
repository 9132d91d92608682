"""Noise over a read-ahead buffer: py-libp2p 0.8.1's Noise transport, transport phase lean.

The handshake is py-libp2p's, unchanged. Two things change after it, neither visible on the
wire (a Noise transport message is ``uint16_be(len) || ChaCha20-Poly1305(k, n++, plaintext)``
either way, and the peer sees the same byte stream):

* `BufferedConn` sits between Noise and the TCP connection and reads up to `READ_AHEAD`
  (1 MiB) bytes at a time (py-libp2p asks the socket twice per message: the 2-byte length, then the
  body), so most messages are served from memory.
* The secure session (`secure_session_class`) reads and writes transport messages itself:
  a message's ciphertext is decrypted straight out of the read-ahead buffer (a view, no
  copy), ``read(n)`` joins the plaintext of the messages it spans once (py-libp2p copies
  each byte four times through ``read_exactly``, a ``bytearray``, ``bytes()`` and a
  ``BytesIO``), and ``write`` encrypts views of the caller's buffer and sends all of a
  write's messages with one socket write (py-libp2p slices, prefixes and sends each 64 KiB
  message separately). ``write_frames`` lets the muxer hand over several frames' headers
  and payloads without joining them first.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Final

# bytes asked of the socket per read: 1 MiB holds several Yamux frames of a bulk transfer
# (a 256 KiB buffer never held a whole frame: 262,076 bytes of plaintext take 262,148 on
# the wire), so most frames are decrypted without waiting; a recv returns what is there,
# so an idle connection's buffer stays small
READ_AHEAD: Final = 1 << 20
MAX_PLAINTEXT: Final = 65535 - 16  # per Noise transport message (the tag takes 16 bytes)
_NONCE: Final = struct.Struct("<4xQ")  # Noise's ChaChaPoly nonce: 32 zero bits, LE64 counter
_LENGTH: Final = struct.Struct(">H")


class BufferedConn:
    """A raw libp2p connection whose reads are served from a read-ahead buffer.

    ``read(n)`` returns at most ``n`` bytes (fewer when fewer are buffered: stream
    semantics, as the connection it wraps); `read_exact` returns exactly ``n``; every other
    attribute is the wrapped connection's.
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

    async def read_exact(self, n: int) -> bytes | memoryview:
        """Exactly ``n`` bytes: a view of the read-ahead buffer when it holds them (valid
        until the next read), else a copy. `IncompleteReadError` (libp2p's, as its
        ``read_exactly`` raises) when the connection ends first."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            self._pos = pos + n
            return memoryview(buf)[pos : pos + n]
        parts = [buf[pos:]] if pos < len(buf) else []
        have = len(buf) - pos
        self._buf, self._pos = b"", 0
        while have < n:
            chunk: bytes = await self._conn.read(max(READ_AHEAD, n - have))
            if not chunk:
                from libp2p.io.exceptions import IncompleteReadError

                raise IncompleteReadError(
                    f"Connection closed during read operation: expected {n} bytes but "
                    f"received {have} bytes",
                    expected_bytes=n,
                    received_bytes=have,
                )
            need = n - have
            if len(chunk) > need:
                self._buf, self._pos = chunk, need
                parts.append(chunk[:need])
                have = n
            else:
                parts.append(chunk)
                have += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def message(self) -> memoryview | None:
        """The body of the next ``uint16_be(len) || body`` message when all of it is
        buffered (a view, consumed), else None (nothing consumed): no await needed."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return None
        end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if end > len(buf):
            return None
        self._pos = end
        return memoryview(buf)[pos + 2 : end]

    def buffered_plaintext(self, limit: int) -> int:
        """How many plaintext bytes (up to about ``limit``) the whole Noise messages in the
        buffer hold: what can be read and decrypted without waiting for the socket."""
        buf, pos = self._buf, self._pos
        total = 0
        while total < limit and len(buf) - pos >= 2:
            end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if end > len(buf):
                break
            total += max(0, end - pos - 2 - 16)
            pos = end
        return total

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@functools.cache
def secure_session_class() -> type[Any]:
    """Our `SecureSession` subclass (see the module docstring); `adopt` installs it."""
    from cryptography.exceptions import InvalidTag
    from libp2p.io.exceptions import ConnectionClosedError
    from libp2p.security.secure_session import SecureSession
    from noise.constants import MAX_NONCE  # type: ignore[import-untyped]
    from noise.exceptions import NoiseInvalidMessage, NoiseMaxNonceError  # type: ignore[import-untyped]

    class SoraSecureSession(SecureSession):
        """Reads and writes Noise transport messages over a `BufferedConn` directly."""

        _sora_raw: BufferedConn
        _sora_rx: Any  # noise CipherState (key, nonce counter ``n``) for what we receive
        _sora_tx: Any  # and for what we send
        _sora_plain: bytes  # plaintext decrypted and not yet read, from _sora_ppos on
        _sora_ppos: int

        async def _next_message(self) -> bytes:
            raw = self._sora_raw
            body: bytes | memoryview | None = raw.message()
            if body is None:
                head = await raw.read_exact(2)
                body = await raw.read_exact((head[0] << 8) | head[1])
            return self._open(body)

        def _open(self, body: bytes | memoryview) -> bytes:
            state = self._sora_rx
            n = state.n
            if n == MAX_NONCE:
                raise NoiseMaxNonceError("Nonce has depleted!")
            try:
                plain: bytes = state.cipher.cipher.decrypt(_NONCE.pack(n), body, None)
            except InvalidTag:
                raise NoiseInvalidMessage("Failed authentication of message") from None
            state.n = n + 1
            return plain

        async def read(self, n: int | None = None) -> bytes:
            """py-libp2p's semantics: ``n`` None (or negative) returns what is decrypted
            (or the next message); otherwise exactly ``n`` bytes unless the connection
            ends first."""
            if n == 0:
                return b""
            if n is not None and n < 0:
                n = None
            plain, pos = self._sora_plain, self._sora_ppos
            avail = len(plain) - pos
            if n is None or avail >= n:
                if avail:
                    end = len(plain) if n is None else pos + n
                    if end == len(plain):
                        self._sora_plain, self._sora_ppos = b"", 0
                        return plain[pos:] if pos else plain
                    self._sora_ppos = end
                    return plain[pos:end]
                msg = await self._next_message()
                if not msg:  # an empty message reads as the end (py-libp2p does so)
                    raise ConnectionClosedError("Connection closed")
                return msg
            parts = await self.read_parts(n)
            first = parts[0]
            return first if len(parts) == 1 and isinstance(first, bytes) else b"".join(parts)

        def readable_now(self, n: int) -> bool:
            """True when ``read(n)`` / `read_parts` will not wait for the socket."""
            avail = len(self._sora_plain) - self._sora_ppos
            return avail >= n or avail + self._sora_raw.buffered_plaintext(n - avail) >= n

        async def read_parts(self, n: int) -> list[bytes | memoryview]:
            """``read(n)`` as the pieces of plaintext it spans (joining them is the
            caller's choice); fewer than ``n`` bytes only where ``read`` returns fewer."""
            plain, pos = self._sora_plain, self._sora_ppos
            avail = len(plain) - pos
            if avail >= n:
                self._sora_plain, self._sora_ppos = (plain, pos + n) if avail > n else (b"", 0)
                return [plain if pos == 0 and avail == n else memoryview(plain)[pos : pos + n]]
            parts: list[bytes | memoryview] = []
            if avail:
                parts.append(plain if pos == 0 else memoryview(plain)[pos:])
            have = avail
            self._sora_plain, self._sora_ppos = b"", 0
            raw = self._sora_raw
            while have < n:
                body = raw.message()  # whole messages already buffered: no await
                msg = await self._next_message() if body is None else self._open(body)
                if not msg:
                    if have:
                        return parts
                    raise ConnectionClosedError("Connection closed")
                need = n - have
                if len(msg) > need:
                    self._sora_plain, self._sora_ppos = msg, need
                    parts.append(memoryview(msg)[:need])
                    have = n
                else:
                    parts.append(msg)
                    have += len(msg)
            return parts

        async def write(self, data: bytes) -> None:
            await self.write_frames([(b"", data)])

        async def write_frame(self, header: bytes, payload: bytes | memoryview) -> None:
            await self.write_frames([(header, payload)])

        async def write_frames(self, frames: list[tuple[bytes, bytes | memoryview]]) -> None:
            """Send each ``header + payload`` as Noise messages, all in one socket write
            (a message never spans two frames: the receiver's reads stay frame-aligned)."""
            state = self._sora_tx
            seal = state.cipher.cipher.encrypt
            n = state.n
            out: list[bytes] = []
            for header, payload in frames:
                view = memoryview(payload).cast("B")
                if n + (len(header) + len(view)) // MAX_PLAINTEXT + 1 >= MAX_NONCE:
                    raise NoiseMaxNonceError("Nonce has depleted!")
                first = MAX_PLAINTEXT - len(header)
                piece = header + view[:first] if header else view[:first]
                ct = seal(_NONCE.pack(n), piece, None)
                n += 1
                out.append(_LENGTH.pack(len(ct)))
                out.append(ct)
                for off in range(first, len(view), MAX_PLAINTEXT):
                    ct = seal(_NONCE.pack(n), view[off : off + MAX_PLAINTEXT], None)
                    n += 1
                    out.append(_LENGTH.pack(len(ct)))
                    out.append(ct)
            state.n = n
            await self._sora_raw.write(out[0] + out[1] if len(out) == 2 else b"".join(out))

    return SoraSecureSession


def adopt(session: Any) -> Any:
    """Turn py-libp2p's Noise `SecureSession` into a `secure_session_class` (in place) when
    it runs ChaChaPoly over a `BufferedConn` with nothing read yet; else leave it as is."""
    from noise.backends.default.ciphers import ChaCha20Cipher  # type: ignore[import-untyped]

    cls = secure_session_class()
    rw = getattr(session, "conn", None)
    raw = getattr(getattr(rw, "read_writer", None), "read_write_closer", None)
    protocol = getattr(getattr(rw, "noise_state", None), "noise_protocol", None)
    rx = getattr(protocol, "cipher_state_decrypt", None)
    tx = getattr(protocol, "cipher_state_encrypt", None)
    if (
        not isinstance(raw, BufferedConn)
        or not isinstance(getattr(rx, "cipher", None), ChaCha20Cipher)
        or not isinstance(getattr(tx, "cipher", None), ChaCha20Cipher)
        or session.high_watermark != session.low_watermark
    ):
        return session
    session.__class__ = cls
    session._sora_raw = raw
    session._sora_rx = rx
    session._sora_tx = tx
    session._sora_plain = b""
    session._sora_ppos = 0
    return session


@functools.cache
def noise_transport_class() -> type[Any]:
    """Our Noise `Transport` subclass (built on first use: importing stays cheap)."""
    from libp2p.security.noise.transport import Transport

    class SoraNoiseTransport(Transport):
        async def secure_inbound(self, conn: Any) -> Any:
            buffered: Any = BufferedConn(conn)  # duck-types libp2p's IRawConnection
            return adopt(await super().secure_inbound(buffered))

        async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
            buffered: Any = BufferedConn(conn)
            return adopt(await super().secure_outbound(buffered, peer_id))

    return SoraNoiseTransport
