"""Bulk DAG transfer over ``/sorap2p/car/1.0.0`` (protocols/exchange.md).

One stream per request. The client sends one request frame
``uvarint(len) || 0x01 || uvarint(len(cid)) || cid || uvarint(skip) || uvarint(max_blocks)``
and half-closes. The server answers one status byte (0 OK, 1 NOT_FOUND, 2 BUSY,
3 BAD_REQUEST) and, after OK, a CAR v1 stream (roots = [cid]) of the DAG under ``cid`` in
depth-first pre-order, leaving out the first ``skip`` blocks and stopping after
``max_blocks`` (0: no limit); the end of the stream ends the CAR.

The fetcher (`fetch_dag`) verifies every block as it arrives (hash *and* membership: a
block is accepted only if an already received block links to it) and stores it; reading,
verifying and writing run as a pipeline with bounded queues between the stages. With
several providers the work is split by the root's children and run in parallel; a job
interrupted by a broken connection resumes with ``skip`` = blocks already received on
another (or the same) provider; a provider that sends a tampered or unsolicited block is
dropped for the rest of the fetch and its job moves to another provider.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from sorap2p.core.cid import MAX_CID_BYTES, RAW, Cid, decode_varint, encode_varint
from sorap2p.core.errors import IntegrityError, LocalProtocolError, RemoteProtocolError, SoraError
from sorap2p.core.ids import PeerId
from sorap2p.net.host import Host
from sorap2p.net.streams import Stream, open_stream
from sorap2p.store.car import END, NEED_DATA, CarBlock, CarHeader, CarReader, encode_header
from sorap2p.store.dag import links_of
from sorap2p.store.errors import BlockNotFound, CodecError

_log = logging.getLogger(__name__)

CAR_PROTOCOL: Final = "/sorap2p/car/1.0.0"
REQUEST_VERSION: Final = 1
MAX_REQUEST: Final = 2 + 9 + MAX_CID_BYTES + 9 + 9


class Status(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    BUSY = 2
    BAD_REQUEST = 3


class BlockSource(Protocol):
    """What the server needs from a block store (`sorap2p.store.Blockstore` fits)."""

    def get(self, cid: Cid) -> bytes: ...

    def has(self, cid: Cid) -> bool: ...


class BlockSink(BlockSource, Protocol):
    """What the fetcher needs from a block store."""

    def put_block(self, cid: Cid, data: bytes | bytearray | memoryview) -> None: ...


def store_hashed(store: BlockSink, cid: Cid, data: bytes | bytearray | memoryview) -> None:
    """Store a block whose bytes the caller has just hashed against ``cid``.

    Uses the store's ``put_hashed`` (no second hash pass) when it has one, else
    ``put_block`` (which verifies again).
    """
    put = getattr(store, "put_hashed", None)
    if put is None:
        store.put_block(cid, data)
    else:
        put(cid, data)


@dataclass(frozen=True, slots=True)
class CarRequest:
    root: Cid
    skip: int = 0
    max_blocks: int = 0

    def encode(self) -> bytes:
        body = (
            bytes([REQUEST_VERSION])
            + encode_varint(len(self.root.raw))
            + self.root.raw
            + encode_varint(self.skip)
            + encode_varint(self.max_blocks)
        )
        return encode_varint(len(body)) + body

    @classmethod
    def decode(cls, frame: bytes) -> CarRequest:
        """Parse ``uvarint(len) || body`` exactly; `RemoteProtocolError` otherwise."""
        length, pos = decode_varint(frame, 0)
        if length > MAX_REQUEST or pos + length != len(frame):
            raise RemoteProtocolError("CAR request has the wrong length")
        if frame[pos] != REQUEST_VERSION:
            raise RemoteProtocolError(f"unsupported CAR request version {frame[pos]}")
        n, p = decode_varint(frame, pos + 1)
        root = Cid.decode(frame[p : p + n])
        skip, p = decode_varint(frame, p + n)
        max_blocks, p = decode_varint(frame, p)
        if p != len(frame):
            raise RemoteProtocolError("trailing bytes in CAR request")
        return cls(root, skip, max_blocks)


class FetchError(SoraError):
    """The DAG could not be fetched from any provider."""


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    max_transfers: int = 8  # concurrent CAR transfers a server accepts
    read_batch_bytes: int = 4 << 20  # server: blocks read from disk per thread hop
    pipeline_depth: int = 8  # client: reads queued between the stream and the verifier
    recv_size: int = 1 << 20
    max_block_size: int = 8 << 20
    idle_timeout: float = 30.0  # no byte for this long breaks a transfer
    max_parallel: int = 4  # providers used at once by one fetch
    max_attempts: int = 3  # per provider, for connection failures

    def validate(self) -> None:
        if min(self.max_transfers, self.max_parallel, self.max_attempts) < 1:
            raise LocalProtocolError("limits must be >= 1")
        if min(self.read_batch_bytes, self.pipeline_depth, self.recv_size) < 1:
            raise LocalProtocolError("batch sizes must be positive")
        if self.idle_timeout <= 0:
            raise LocalProtocolError("idle_timeout must be positive")


# -- server ----------------------------------------------------------------------


class CarServer:
    """Serves ``/sorap2p/car/1.0.0`` from a block source. See `serve_car`."""

    def __init__(self, store: BlockSource, config: ExchangeConfig) -> None:
        self.store = store
        self.config = config
        self.active = 0
        self.served = 0
        self.bytes_sent = 0

    async def handle(self, raw: Any) -> None:
        stream = Stream(raw)
        try:
            await self._handle(stream)
        except ConnectionError as exc:
            _log.debug("CAR transfer to %s broke: %s", stream.peer, exc)
            await stream.reset()

    async def _handle(self, stream: Stream) -> None:
        buf = b""
        with trio.move_on_after(self.config.idle_timeout):
            while True:
                try:
                    length, pos = decode_varint(buf, 0)
                except RemoteProtocolError:
                    if len(buf) > 10:
                        break
                else:
                    if len(buf) >= pos + length or pos + length > MAX_REQUEST:
                        break
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    break
                buf += chunk
        try:
            req = CarRequest.decode(buf)
        except (RemoteProtocolError, IndexError) as exc:
            _log.info("bad CAR request from %s: %s", stream.peer, exc)
            await stream.send_all(bytes([Status.BAD_REQUEST]))
            await stream.aclose()
            return
        if self.active >= self.config.max_transfers:
            await stream.send_all(bytes([Status.BUSY]))
            await stream.aclose()
            return
        if not await trio.to_thread.run_sync(self.store.has, req.root):
            await stream.send_all(bytes([Status.NOT_FOUND]))
            await stream.aclose()
            return
        self.active += 1
        try:
            await self._send_dag(stream, req)
        finally:
            self.active -= 1

    async def _send_dag(self, stream: Stream, req: CarRequest) -> None:
        walker = _DagWalker(self.store, req.root, req.skip, req.max_blocks)
        await stream.send_all(bytes([Status.OK]) + encode_header([req.root]))
        # read the next batch from disk (worker thread) while this one is being sent
        send, recv = trio.open_memory_channel[list[bytes | memoryview] | BaseException](1)

        async def read_ahead() -> None:
            # the sender may stop first (the peer went away): it closes ``recv``
            async with send:
                with contextlib.suppress(trio.BrokenResourceError):
                    await read_into(send)

        async def read_into(
            send: trio.MemorySendChannel[list[bytes | memoryview] | BaseException],
        ) -> None:
            while True:
                try:
                    batch = await trio.to_thread.run_sync(
                        walker.next_batch, self.config.read_batch_bytes
                    )
                except (BlockNotFound, IntegrityError) as exc:
                    await send.send(exc)
                    return
                await send.send(batch)
                if not batch:
                    return

        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            try:
                async with recv:
                    async for item in recv:
                        if isinstance(item, BaseException):
                            failure = item
                            break
                        for chunk in item:  # views of the walker's buffers: send, then drop
                            await stream.send_all(chunk)
                            self.bytes_sent += len(chunk)
            except ConnectionError as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            _log.warning("cannot finish CAR of %s for %s: %s", req.root, stream.peer, failure)
            await stream.reset()  # the client moves on to another provider
            return
        self.served += 1
        await stream.aclose()

    def statistics(self) -> dict[str, int]:
        return {"active": self.active, "served": self.served, "bytes_sent": self.bytes_sent}


class _DagWalker:
    """Depth-first pre-order walk that yields ready-to-send CAR sections in batches.

    A batch is built in one of three reused buffers (never a fresh allocation per block,
    and never the same buffer as the two batches that may still be queued or being sent:
    the sender takes batches through a channel of capacity one): each section's prefix and
    CID are written, then the block is read from disk straight behind them when the store
    offers ``size`` and ``get_into`` (`Blockstore` does; it verifies the bytes there), else
    copied from ``get``. A section larger than a buffer goes out on its own.
    """

    BUFFERS: Final = 3

    def __init__(self, store: BlockSource, root: Cid, skip: int, max_blocks: int) -> None:
        self.store = store
        self.stack = [root]
        self.seen: set[bytes] = set()
        self.index = 0
        self.skip = skip
        self.limit = skip + max_blocks if max_blocks else None
        self._buffers: list[bytearray] = []
        self._turn = 0
        get_into = getattr(store, "get_into", None)
        size_of = getattr(store, "size", None)
        self._direct = (size_of, get_into) if callable(get_into) and callable(size_of) else None

    def _buffer(self, capacity: int) -> bytearray:
        if len(self._buffers) < self.BUFFERS:
            self._buffers.append(bytearray(capacity))
        buf = self._buffers[self._turn % self.BUFFERS]
        self._turn += 1
        return buf

    def next_batch(self, max_bytes: int) -> list[bytes | memoryview]:
        """The next sections, about ``max_bytes`` of them; empty at the end of the walk."""
        buf: memoryview | None = None
        used = 0
        out: list[bytes | memoryview] = []
        while self.stack:
            if self.limit is not None and self.index >= self.limit:
                self.stack.clear()
                break
            cid = self.stack[-1]
            mh = cid.multihash
            if mh in self.seen:
                self.stack.pop()
                continue
            if self.index < self.skip:  # skipped: only its links are needed
                self.stack.pop()
                self.seen.add(mh)
                self.stack.extend(reversed(links_of(cid, self.store.get(cid))))
                self.index += 1
                continue
            if buf is None:
                buf = memoryview(self._buffer(max_bytes + (max_bytes >> 4)))
            data, size = self._size(cid)
            head = encode_varint(len(cid.raw) + size) + cid.raw
            end = used + len(head) + size
            if end > len(buf):
                if used:
                    break  # next batch
                # larger than a buffer: a section of its own
                self.stack.pop()
                self.seen.add(mh)
                if data is None:
                    data = self.store.get(cid)
                out.append(head + data)
                self._visit(cid, data)
                break
            self.stack.pop()
            self.seen.add(mh)
            buf[used : used + len(head)] = head
            slot = buf[used + len(head) : end]
            if data is None:
                assert self._direct is not None
                try:
                    got = self._direct[1](cid, slot)
                except LocalProtocolError as exc:  # it grew since `size`
                    raise IntegrityError(f"block {cid} changed while read: {exc}") from exc
                if got != size:
                    raise IntegrityError(f"block {cid} changed while read")
            else:
                slot[:] = data
            self._visit(cid, slot)
            used = end
            if used >= max_bytes:
                break
        if used:
            assert buf is not None
            out.insert(0, buf[:used])
        return out

    def _size(self, cid: Cid) -> tuple[bytes | None, int]:
        """The block's size, and its bytes unless the store can read it into a buffer."""
        if self._direct is not None:
            size: int = self._direct[0](cid)
            return None, size
        data = self.store.get(cid)
        return data, len(data)

    def _visit(self, cid: Cid, data: bytes | memoryview) -> None:
        if cid.codec != RAW:
            self.stack.extend(reversed(links_of(cid, bytes(data))))
        self.index += 1


@asynccontextmanager
async def serve_car(
    host: Host, store: BlockSource, config: ExchangeConfig | None = None
) -> AsyncIterator[CarServer]:
    """Serve the CAR protocol from ``store`` while the context is open."""
    from libp2p.custom_types import TProtocol

    cfg = config or ExchangeConfig()
    cfg.validate()
    server = CarServer(store, cfg)
    host.raw.set_stream_handler(TProtocol(CAR_PROTOCOL), server.handle)
    try:
        yield server
    finally:
        host.raw.remove_stream_handler(TProtocol(CAR_PROTOCOL))


# -- client ----------------------------------------------------------------------


class ProviderError(SoraError):
    """One provider failed one transfer (the fetch may still succeed elsewhere)."""

    def __init__(self, message: str, *, misbehaved: bool) -> None:
        super().__init__(message)
        self.misbehaved = misbehaved


@dataclass(slots=True)
class _Job:
    """The DAG under ``root``; progress survives a change of provider."""

    root: Cid
    received: int = 0  # blocks accepted so far, in the server's order
    expected: set[bytes] = field(default_factory=set)  # multihashes linked, not yet seen
    done: set[bytes] = field(default_factory=set)  # multihashes accepted
    max_blocks: int = 0
    short_ends: int = 0  # transfers that ended before the DAG was complete

    def __post_init__(self) -> None:
        if not self.done:
            self.expected.add(self.root.multihash)

    @property
    def complete(self) -> bool:
        return not self.expected and bool(self.done)


@dataclass(slots=True)
class FetchReport:
    root: Cid
    blocks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_provider: dict[PeerId, int] = field(default_factory=dict)
    failures: dict[PeerId, str] = field(default_factory=dict)
    verify_cpu_s: float = 0.0  # worker-thread CPU: parsing the CAR, hashing, link checks
    store_cpu_s: float = 0.0  # worker-thread CPU: writing blocks (mostly the kernel's)

    @property
    def mib_per_s(self) -> float:
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


class _Fetch:
    def __init__(self, host: Host, store: BlockSink, root: Cid, config: ExchangeConfig) -> None:
        self.host = host
        self.store = store
        self.config = config
        self.report = FetchReport(root)

    async def transfer(self, peer: PeerId, job: _Job) -> None:
        """Run ``job`` against ``peer`` until it completes or fails (`ProviderError`)."""
        try:
            stream = await open_stream(self.host, peer, [CAR_PROTOCOL])
        except ConnectionError as exc:
            raise ProviderError(str(exc), misbehaved=False) from exc
        try:
            await self._receive(stream, peer, job)
        except ConnectionError as exc:
            raise ProviderError(f"connection broke: {exc}", misbehaved=False) from exc
        except (RemoteProtocolError, IntegrityError) as exc:
            await stream.reset()
            raise ProviderError(f"sent invalid data: {exc}", misbehaved=True) from exc
        finally:
            await stream.aclose()

    async def _receive(self, stream: Stream, peer: PeerId, job: _Job) -> None:
        req = CarRequest(job.root, job.received, job.max_blocks)
        with trio.move_on_after(self.config.idle_timeout) as sending:
            await stream.send_all(req.encode())
            await stream.send_eof()
        if sending.cancelled_caught:
            raise ConnectionError(f"request not taken in {self.config.idle_timeout} s")
        reader = CarReader(max_block_size=self.config.max_block_size)
        await self._read_car(stream, reader, job, peer)
        if job.max_blocks and job.received >= job.max_blocks:
            return
        if not job.complete:
            # a reset stream can look like a clean end at a block boundary: resume; if it
            # happens again, restart the job from its root (a provider may have sent the
            # blocks in another order, which makes ``skip`` meaningless)
            job.short_ends += 1
            if job.short_ends >= 2:
                job.received = 0
            raise ConnectionError(f"CAR ended with {len(job.expected)} linked blocks missing")

    async def _read_car(self, stream: Stream, reader: CarReader, job: _Job, peer: PeerId) -> None:
        """A two-stage pipeline: the stream reader (a task, beside Noise and Yamux on the
        event loop) and the parser-verifier-writer (a worker thread). Each thread hop takes
        every read queued since the last one and at least ``recv_size`` bytes (or the end),
        so the worker gets few, large batches; the channel between the stages bounds memory
        to ``pipeline_depth`` reads.
        """
        chunks_send, chunks_recv = trio.open_memory_channel[bytes | BaseException](
            self.config.pipeline_depth
        )
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, stream, chunks_send)
            try:
                async with chunks_recv:
                    async for item in chunks_recv:
                        # a hop per ``recv_size`` bytes at least (reads are often a frame)
                        batch, size = [item], len(item) if isinstance(item, bytes) else 0
                        while isinstance(batch[-1], bytes) and batch[-1]:
                            try:
                                batch.append(chunks_recv.receive_nowait())
                            except trio.WouldBlock:
                                if size >= self.config.recv_size:
                                    break
                                try:
                                    batch.append(await chunks_recv.receive())
                                except trio.EndOfChannel:
                                    break
                            except trio.EndOfChannel:
                                break
                            if isinstance(batch[-1], bytes):
                                size += len(batch[-1])
                        chunks = [c for c in batch if isinstance(c, bytes)]
                        # blocks, bytes stored by this hop (even if it fails), CPU seconds
                        counts = [0, 0, 0.0, 0.0]
                        try:
                            ended = bool(chunks) and await trio.to_thread.run_sync(
                                self._parse_and_store, reader, job, chunks, counts
                            )
                        finally:
                            self._count(peer, int(counts[0]), int(counts[1]))
                            self.report.verify_cpu_s += counts[2]
                            self.report.store_cpu_s += counts[3]
                        if isinstance(batch[-1], BaseException):
                            raise batch[-1]
                        if ended:
                            break
            except Exception as exc:  # raised outside the nursery: no ExceptionGroup
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _parse_and_store(
        self, reader: CarReader, job: _Job, chunks: list[bytes], counts: list[float]
    ) -> bool:
        """Worker thread: parse, verify and store what ``chunks`` complete; True at the
        CAR's end. Blocks verified before an error are stored before it propagates; a
        store error (full disk...) wins over a parse error. ``counts`` gets the blocks and
        bytes stored and the CPU seconds spent verifying and storing."""
        ended = False
        clock = time.thread_time
        for data in chunks:
            accepted: list[tuple[Cid, bytes]] = []
            t0 = clock()
            try:
                ended = self._parse(reader, job, data, accepted)
            finally:
                t1 = clock()
                counts[2] += t1 - t0
                try:
                    for cid, block in accepted:
                        store_hashed(self.store, cid, block)  # `CarReader` verified it
                        counts[0] += 1
                        counts[1] += len(block)
                finally:
                    counts[3] += clock() - t1
            if ended:
                break
        return ended

    async def _pump(
        self, stream: Stream, send: trio.MemorySendChannel[bytes | BaseException]
    ) -> None:
        """Read the status byte and the CAR bytes; ``b""`` marks the end; errors are sent.

        The parser may stop first (an error, or enough blocks): it closes its end, and the
        pump stops quietly however its next send races the cancellation.
        """
        async with send:
            with contextlib.suppress(trio.BrokenResourceError):
                await self._pump_into(stream, send)

    async def _pump_into(
        self, stream: Stream, send: trio.MemorySendChannel[bytes | BaseException]
    ) -> None:
        try:
            status: int | None = None
            while True:
                with trio.move_on_after(self.config.idle_timeout) as idle:
                    data = await stream.receive_some(self.config.recv_size)
                if idle.cancelled_caught:
                    raise ConnectionError(f"no data for {self.config.idle_timeout} s")
                if status is None:
                    if not data:
                        raise ConnectionError("stream closed before a status")
                    status, data = data[0], data[1:]
                    if status != Status.OK:
                        known = status in Status._value2member_map_
                        name = Status(status).name if known else str(status)
                        raise ProviderError(f"answered {name}", misbehaved=False)
                    if not data:
                        continue
                await send.send(data)
                if not data:
                    return
        except (ConnectionError, ProviderError) as exc:
            await send.send(exc)

    def _parse(
        self, reader: CarReader, job: _Job, data: bytes, accepted: list[tuple[Cid, bytes]]
    ) -> bool:
        """Worker thread: parse and verify what ``data`` completes; True at the CAR's end.

        Verified, solicited blocks are appended to ``accepted`` as they pass, so that
        those before an error are kept.
        """
        reader.receive_data(data)
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                return False
            if event is END:
                return True
            if isinstance(event, CarHeader):
                if event.roots != (job.root,):
                    raise RemoteProtocolError("CAR roots do not match the request")
                continue
            assert isinstance(event, CarBlock)
            if self._accept(job, event):
                accepted.append((event.cid, event.data))

    def _count(self, peer: PeerId, blocks: int, nbytes: int) -> None:
        self.report.blocks += blocks
        self.report.bytes += nbytes
        if blocks:
            self.report.by_provider[peer] = self.report.by_provider.get(peer, 0) + blocks

    def _accept(self, job: _Job, block: CarBlock) -> bool:
        """Check membership and update the job; False for a block already accepted."""
        mh = block.cid.multihash
        if mh in job.done:  # a re-sent block after a restart from scratch
            job.received += 1
            return False
        if mh not in job.expected:
            raise RemoteProtocolError(f"unsolicited block {block.cid}")
        try:
            links = links_of(block.cid, block.data)
        except CodecError as exc:
            raise RemoteProtocolError(f"undecodable block {block.cid}: {exc}") from exc
        job.expected.discard(mh)
        job.done.add(mh)
        job.received += 1
        for link in links:
            lmh = link.multihash
            if lmh not in job.done:
                job.expected.add(lmh)
        return True


async def fetch_dag(
    host: Host,
    store: BlockSink,
    root: Cid,
    providers: Sequence[PeerId],
    config: ExchangeConfig | None = None,
) -> FetchReport:
    """Fetch the DAG under ``root`` into ``store`` from ``providers`` (connected peers).

    Raises `FetchError` when no provider can deliver it. See the module docstring.
    """
    cfg = config or ExchangeConfig()
    cfg.validate()
    if not providers:
        raise FetchError("no providers")
    fetch = _Fetch(host, store, root, cfg)
    started = time.perf_counter()
    live = list(dict.fromkeys(providers))
    attempts: dict[PeerId, int] = {}

    async def run(job: _Job) -> None:
        """Run one job, moving through providers until it completes."""
        while True:
            candidates = [p for p in live if attempts.get(p, 0) < cfg.max_attempts]
            if not candidates:
                raise FetchError(f"every provider failed for {job.root}: {fetch.report.failures}")
            peer = min(candidates, key=lambda p: (busy.get(p, 0), attempts.get(p, 0)))
            busy[peer] = busy.get(peer, 0) + 1
            try:
                await fetch.transfer(peer, job)
                return
            except ProviderError as exc:
                fetch.report.failures[peer] = str(exc)
                _log.info("provider %s failed for %s: %s", peer, job.root, exc)
                if exc.misbehaved:
                    if peer in live:
                        live.remove(peer)
                else:
                    attempts[peer] = attempts.get(peer, 0) + 1
            finally:
                busy[peer] -= 1

    busy: dict[PeerId, int] = {}
    if len(live) == 1:
        # one provider: one stream for the whole DAG (no per-job round trips)
        await run(_Job(root))
        fetch.report.seconds = time.perf_counter() - started
        return fetch.report
    # 1. the root block alone, to learn how to split the work
    head = _Job(root, max_blocks=1)
    await run(head)
    root_data = await trio.to_thread.run_sync(store.get, root)
    children = list(dict.fromkeys(links_of(root, root_data)))
    # 2. the root's children as independent jobs, up to max_parallel at once (several
    # per provider when there are few providers: that hides the per-job round trip)
    jobs = [_Job(c) for c in children if c.multihash not in head.done]
    limiter = trio.CapacityLimiter(cfg.max_parallel)

    errors: list[FetchError] = []

    async def limited(job: _Job) -> None:
        async with limiter:
            if errors:
                return
            try:
                await run(job)
            except FetchError as exc:
                errors.append(exc)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(limited, job)
    if errors:
        raise errors[0]
    fetch.report.seconds = time.perf_counter() - started
    return fetch.report
