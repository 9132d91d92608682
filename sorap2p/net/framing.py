"""Request/response over one libp2p stream per peer pair (protocols/framing.md).

Wire: every frame is ``uvarint(len(body)) || body`` with
``body = kind (1 byte) || uvarint(request_id) || payload``. Kinds: 0 request,
1 response, 2 error (payload ``code (1 byte) || utf-8 message``). Requests are pipelined:
the client numbers them, the server may answer out of order, the response echoes the id.
Frames over the configured cap are a protocol violation: the stream is reset.

`FrameDecoder` is the sans-IO half (bytes in, frames out); `open_request_response` runs
the protocol on a host: a server (when given a handler) and a client (`request`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from sorap2p.core.cid import decode_varint, encode_varint
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError, SoraError
from sorap2p.core.ids import PeerId
from sorap2p.net.host import Host
from sorap2p.net.streams import Stream, open_stream

_log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE: Final = 256
MAX_REQUEST_ID: Final = (1 << 63) - 1
_MAX_HEADER: Final = 1 + 9


class FrameKind(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    ERROR = 2


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1  # the handler raised RemoteProtocolError
    INTERNAL = 2  # the handler failed for another reason
    TIMEOUT = 3  # the handler took longer than the server's timeout
    OVERLOADED = 4  # too many requests in flight on this stream


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    request_id: int
    payload: bytes


class RequestError(SoraError):
    """A request failed: the peer answered an error, timed out, or went away."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class RequestTimeoutError(RequestError):
    """No response within the configured time."""


def encode_frame(frame: Frame, max_frame: int) -> bytes:
    if not 0 <= frame.request_id <= MAX_REQUEST_ID:
        raise LocalProtocolError("request id out of range")
    body = bytes([frame.kind]) + encode_varint(frame.request_id) + frame.payload
    if len(body) > max_frame:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the cap of {max_frame}")
    return encode_varint(len(body)) + body


def encode_error(code: ErrorCode, message: str) -> bytes:
    return bytes([code]) + message.encode()[:MAX_ERROR_MESSAGE]


def decode_error(payload: bytes) -> tuple[ErrorCode, str]:
    if not payload:
        raise RemoteProtocolError("empty error frame")
    try:
        code = ErrorCode(payload[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown error code {payload[0]}") from None
    if len(payload) - 1 > MAX_ERROR_MESSAGE:
        raise RemoteProtocolError("error message too long")
    return code, payload[1:].decode(errors="replace")


class FrameDecoder:
    """Sans-IO decoder: feed bytes with `receive_data`, take frames with `next_frame`.

    Raises `RemoteProtocolError` for an oversized frame, a malformed header or an unknown
    kind; the buffered input never exceeds one frame plus one read.
    """

    __slots__ = ("_buf", "frames", "max_frame")

    def __init__(self, max_frame: int) -> None:
        if max_frame < _MAX_HEADER:
            raise LocalProtocolError("max_frame too small")
        self.max_frame = max_frame
        self._buf = bytearray()
        self.frames = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        buf = self._buf
        if not buf:
            return None
        try:
            length, pos = decode_varint(bytes(buf[:10]), 0)
        except RemoteProtocolError:
            if len(buf) < 10 and buf[-1] & 0x80:
                return None  # the length prefix is still arriving
            raise
        if length > self.max_frame:
            raise RemoteProtocolError(f"frame of {length} bytes exceeds the cap {self.max_frame}")
        if length < 2:
            raise RemoteProtocolError("frame too short for its header")
        end = pos + length
        if len(buf) < end:
            return None
        body = bytes(buf[pos:end])
        del buf[:end]
        try:
            kind = FrameKind(body[0])
        except ValueError:
            raise RemoteProtocolError(f"unknown frame kind {body[0]}") from None
        request_id, p = decode_varint(body, 1)
        self.frames += 1
        return Frame(kind, request_id, body[p:])


Handler = Callable[[PeerId, bytes], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class RequestConfig:
    max_request: int = 64 * 1024
    max_response: int = 1024 * 1024
    timeout: float = 10.0
    max_concurrent_per_stream: int = 8
    max_pending_per_peer: int = 64

    def validate(self) -> None:
        if min(self.max_request, self.max_response) < 1 or self.timeout <= 0:
            raise LocalProtocolError("sizes and timeout must be positive")
        if self.max_concurrent_per_stream < 1 or self.max_pending_per_peer < 1:
            raise LocalProtocolError("concurrency limits must be >= 1")


class _ClientChannel:
    """Our outbound stream to one peer with its pending requests."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.next_id = 1
        self.pending: dict[int, tuple[trio.Event, list[Frame]]] = {}
        self.send_lock = trio.Lock()
        self.broken: BaseException | None = None


class RequestResponse:
    """Requests to peers, and (with a handler) answers to theirs. See `open_request_response`."""

    def __init__(
        self, host: Host, protocol_id: str, handler: Handler | None, config: RequestConfig
    ) -> None:
        self.host = host
        self.protocol_id = protocol_id
        self.handler = handler
        self.config = config
        self._channels: dict[PeerId, _ClientChannel] = {}
        self._open_locks: dict[PeerId, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.served = 0
        self.failed = 0

    # -- client ----------------------------------------------------------------
    async def request(self, peer: PeerId, payload: bytes) -> bytes:
        """Send one request and wait for its response (``config.timeout`` at most)."""
        if len(payload) > self.config.max_request - _MAX_HEADER:
            raise LocalProtocolError(f"request of {len(payload)} bytes exceeds the cap")
        chan = await self._channel(peer)
        if len(chan.pending) >= self.config.max_pending_per_peer:
            raise RequestError(f"too many pending requests to {peer}", ErrorCode.OVERLOADED)
        rid = chan.next_id
        chan.next_id += 1
        done = trio.Event()
        slot: list[Frame] = []
        chan.pending[rid] = (done, slot)
        try:
            with trio.fail_after(self.config.timeout):
                async with chan.send_lock:
                    frame = Frame(FrameKind.REQUEST, rid, payload)
                    await chan.stream.send_all(encode_frame(frame, self.config.max_request))
                await done.wait()
        except trio.TooSlowError:
            raise RequestTimeoutError(
                f"no response from {peer} within {self.config.timeout} s", ErrorCode.TIMEOUT
            ) from None
        except ConnectionError as exc:
            self._drop(peer, chan, exc)
            raise RequestError(f"request to {peer} failed: {exc}") from exc
        finally:
            chan.pending.pop(rid, None)
        if not slot:
            raise RequestError(f"connection to {peer} lost: {chan.broken!r}")
        frame = slot[0]
        if frame.kind is FrameKind.ERROR:
            code, message = decode_error(frame.payload)
            raise RequestError(f"{peer} answered {code.name}: {message}", code)
        return frame.payload

    async def _channel(self, peer: PeerId) -> _ClientChannel:
        chan = self._channels.get(peer)
        if chan is not None and chan.broken is None:
            return chan
        lock = self._open_locks.setdefault(peer, trio.Lock())
        async with lock:
            chan = self._channels.get(peer)
            if chan is not None and chan.broken is None:
                return chan
            if self._nursery is None:
                raise LocalProtocolError("request/response service is not running")
            try:
                stream = await open_stream(self.host, peer, [self.protocol_id])
            except ConnectionError as exc:
                raise RequestError(f"cannot reach {peer}: {exc}") from exc
            chan = _ClientChannel(stream)
            self._channels[peer] = chan
            self._nursery.start_soon(self._read_responses, peer, chan)
            return chan

    async def _read_responses(self, peer: PeerId, chan: _ClientChannel) -> None:
        decoder = FrameDecoder(self.config.max_response)
        try:
            while True:
                data = await chan.stream.receive_some()
                if not data:
                    raise ConnectionError("stream closed by peer")
                decoder.receive_data(data)
                while (frame := decoder.next_frame()) is not None:
                    if frame.kind is FrameKind.REQUEST:
                        raise RemoteProtocolError("request frame on a response stream")
                    waiter = chan.pending.get(frame.request_id)
                    if waiter is None:
                        continue  # late answer to a request that timed out
                    waiter[1].append(frame)
                    waiter[0].set()
        except (ConnectionError, RemoteProtocolError) as exc:
            self._drop(peer, chan, exc)
            if isinstance(exc, RemoteProtocolError):
                await chan.stream.reset()

    def _drop(self, peer: PeerId, chan: _ClientChannel, exc: BaseException) -> None:
        chan.broken = exc
        if self._channels.get(peer) is chan:
            del self._channels[peer]
        for done, _ in chan.pending.values():
            done.set()

    # -- server ----------------------------------------------------------------
    async def _serve_stream(self, raw: Any) -> None:
        stream = Stream(raw)
        if self.handler is None:  # pragma: no cover - no handler, no registration
            await stream.reset()
            return
        decoder = FrameDecoder(self.config.max_request)
        send_lock = trio.Lock()
        slots = trio.Semaphore(self.config.max_concurrent_per_stream)
        violation: RemoteProtocolError | None = None
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    data = await stream.receive_some()
                    if not data:
                        break
                    decoder.receive_data(data)
                    while (frame := decoder.next_frame()) is not None:
                        if frame.kind is not FrameKind.REQUEST:
                            raise RemoteProtocolError("response frame on a request stream")
                        await slots.acquire()  # back-pressure: stop reading when full
                        nursery.start_soon(self._answer, stream, frame, send_lock, slots)
            except RemoteProtocolError as exc:
                violation = exc
                nursery.cancel_scope.cancel()
            except ConnectionError:
                nursery.cancel_scope.cancel()
                return
        if violation is not None:
            _log.info("resetting request stream from %s: %s", stream.peer, violation)
            await stream.reset()
            return
        await stream.aclose()

    async def _answer(
        self, stream: Stream, frame: Frame, send_lock: trio.Lock, slots: trio.Semaphore
    ) -> None:
        assert self.handler is not None
        try:
            reply: Frame
            with trio.move_on_after(self.config.timeout) as scope:
                try:
                    payload = await self.handler(stream.peer, frame.payload)
                    if len(payload) > self.config.max_response - _MAX_HEADER:
                        raise LocalProtocolError("response exceeds max_response")
                    reply = Frame(FrameKind.RESPONSE, frame.request_id, payload)
                    self.served += 1
                except RemoteProtocolError as exc:
                    reply = self._error(frame, ErrorCode.BAD_REQUEST, str(exc))
                except Exception as exc:
                    _log.exception("request handler failed for %s", stream.peer)
                    reply = self._error(frame, ErrorCode.INTERNAL, type(exc).__name__)
            if scope.cancelled_caught:
                reply = self._error(frame, ErrorCode.TIMEOUT, "handler timed out")
            async with send_lock:
                await stream.send_all(encode_frame(reply, self.config.max_response))
        except ConnectionError:
            return
        finally:
            slots.release()

    def _error(self, frame: Frame, code: ErrorCode, message: str) -> Frame:
        self.failed += 1
        return Frame(FrameKind.ERROR, frame.request_id, encode_error(code, message))

    def statistics(self) -> dict[str, int]:
        return {
            "served": self.served,
            "failed": self.failed,
            "channels": len(self._channels),
            "pending": sum(len(c.pending) for c in self._channels.values()),
        }


@asynccontextmanager
async def open_request_response(
    host: Host,
    protocol_id: str,
    handler: Handler | None = None,
    config: RequestConfig | None = None,
) -> AsyncIterator[RequestResponse]:
    """Serve ``protocol_id`` with ``handler`` (if given) and send requests on it."""
    cfg = config or RequestConfig()
    cfg.validate()
    if not protocol_id.startswith("/sorap2p/"):
        raise LocalProtocolError("sorap2p protocol ids start with /sorap2p/")
    rr = RequestResponse(host, protocol_id, handler, cfg)
    async with trio.open_nursery() as nursery:
        rr._nursery = nursery
        if handler is not None:
            from libp2p.custom_types import TProtocol

            host.raw.set_stream_handler(TProtocol(protocol_id), rr._serve_stream)
        try:
            yield rr
        finally:
            if handler is not None:
                host.raw.remove_stream_handler(TProtocol(protocol_id))
            for chan in list(rr._channels.values()):
                await chan.stream.aclose()
            nursery.cancel_scope.cancel()
