"""CAR v1 (Content Addressable aRchive), incremental in both directions.

``header = varint(len(h)) || h`` where ``h`` is DAG-CBOR ``{"roots": [CID...], "version": 1}``;
then per block ``varint(len(cid) + len(data)) || cid || data``. Our header bytes equal
``@ipld/car``'s for the same roots.

`CarReader` is sans-IO (h11 style): feed bytes with `receive_data` (``b""`` marks the end),
pull `CarHeader` / `CarBlock` events with `next_event`, which returns `NEED_DATA` when it
needs more input and `END` after a clean end. Every block is checked against its CID as it
is parsed; malformed input or a mismatching block raises `CodecError` (a RemoteProtocolError).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sorap2p.core.cid import MAX_CID_BYTES, Cid, decode_varint, encode_varint
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.store import dagcbor
from sorap2p.store.blockstore import MAX_BLOCK_SIZE, Blockstore
from sorap2p.store.dag import iter_dag_blocks
from sorap2p.store.errors import CodecError

MAX_HEADER_SIZE: Final = 64 << 10
READ_SIZE: Final = 1 << 20


def encode_header(roots: Sequence[Cid]) -> bytes:
    h = dagcbor.encode({"roots": list(roots), "version": 1})
    return encode_varint(len(h)) + h


def encode_section(cid: Cid, data: bytes | bytearray | memoryview) -> bytes:
    return encode_varint(len(cid.raw) + len(data)) + cid.raw + bytes(data)


class CarWriter:
    """Writes a CAR v1 to ``write`` (e.g. ``file.write`` or a stream's send buffer)."""

    __slots__ = ("_write", "blocks", "bytes_written")

    def __init__(self, write: Callable[[bytes], object], roots: Sequence[Cid]) -> None:
        self._write = write
        header = encode_header(roots)
        write(header)
        self.blocks = 0
        self.bytes_written = len(header)

    def add(self, cid: Cid, data: bytes | bytearray | memoryview) -> None:
        section = encode_section(cid, data)
        self._write(section)
        self.blocks += 1
        self.bytes_written += len(section)


@dataclass(frozen=True, slots=True)
class CarHeader:
    roots: tuple[Cid, ...]


@dataclass(frozen=True, slots=True)
class CarBlock:
    cid: Cid
    data: bytes


class Sentinel(enum.Enum):
    NEED_DATA = "need-data"
    END = "end"


NEED_DATA: Final = Sentinel.NEED_DATA
END: Final = Sentinel.END
CarEvent = CarHeader | CarBlock | Sentinel


class CarReader:
    """Incremental, verifying CAR v1 parser (see module docstring).

    Received ``bytes`` are kept as they are (no copy) until parsed; a `bytearray` or
    `memoryview` is copied once (the caller may reuse it). Each block's bytes are copied
    exactly once, out of the received chunks, and hashed there.
    """

    __slots__ = ("_avail", "_chunks", "_eof", "_header_done", "_max_block", "blocks", "roots")

    def __init__(self, *, max_block_size: int = MAX_BLOCK_SIZE) -> None:
        self._chunks: deque[memoryview] = deque()
        self._avail = 0  # bytes received and not yet parsed
        self._eof = False
        self._header_done = False
        self._max_block = max_block_size
        self.roots: tuple[Cid, ...] | None = None
        self.blocks = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise CodecError("data after the end of the CAR")
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        if not view.nbytes:
            self._eof = True
            return
        self._chunks.append(view)
        self._avail += view.nbytes

    def _peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the front, not consumed (small ``n`` only)."""
        first = self._chunks[0]
        if len(first) >= n:
            return bytes(first[:n])
        out = bytearray()
        for chunk in self._chunks:
            out += chunk[: n - len(out)]
            if len(out) >= n:
                break
        return bytes(out)

    def _skip(self, n: int) -> None:
        self._avail -= n
        chunks = self._chunks
        while n:
            first = chunks[0]
            if len(first) > n:
                chunks[0] = first[n:]
                return
            chunks.popleft()
            n -= len(first)

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes (all received), consumed: one copy."""
        if not n:
            return b""
        chunks = self._chunks
        first = chunks[0]
        if len(first) >= n:
            out = bytes(first[:n])
        else:
            parts: list[memoryview] = []
            need = n
            for chunk in chunks:
                parts.append(chunk[:need])
                need -= len(parts[-1])
                if not need:
                    break
            out = b"".join(parts)
        self._skip(n)
        return out

    def _frame_start(self, limit: int) -> tuple[int, int] | None:
        """``(prefix length, frame length)`` of the next frame once all of it has arrived,
        or None."""
        try:
            length, start = decode_varint(self._peek(min(self._avail, 10)), 0)
        except RemoteProtocolError as exc:
            if str(exc) == "truncated varint" and not self._eof:
                return None
            raise CodecError(f"bad CAR length prefix: {exc}") from exc
        if length > limit:
            raise CodecError(f"CAR frame of {length} bytes exceeds the limit of {limit}")
        if start + length > self._avail:
            if self._eof:
                raise CodecError("truncated CAR section")
            return None
        return start, length

    def next_event(self) -> CarEvent:
        if not self._avail:
            if not self._eof:
                return NEED_DATA
            if not self._header_done:
                raise CodecError("empty CAR")
            return END
        if not self._header_done:
            found = self._frame_start(MAX_HEADER_SIZE)
            if found is None:
                return NEED_DATA
            self._skip(found[0])
            frame = self._take(found[1])
            self._header_done = True
            self.roots = _parse_header(frame)
            return CarHeader(self.roots)
        found = self._frame_start(self._max_block + 128)
        if found is None:
            return NEED_DATA
        start, length = found
        head = self._peek(start + min(length, MAX_CID_BYTES))
        try:
            cid, end = Cid.decode_prefix(head, start)
        except RemoteProtocolError as exc:
            raise CodecError(f"bad CID in CAR section: {exc}") from exc
        size = length - (end - start)
        if size > self._max_block:
            raise CodecError(f"CAR block {cid} exceeds {self._max_block} bytes")
        self._skip(end)
        data = self._take(size)
        if not cid.verify(data):
            raise CodecError(f"CAR block does not hash to its CID {cid}")
        self.blocks += 1
        return CarBlock(cid, data)


def _parse_header(frame: bytes) -> tuple[Cid, ...]:
    header = dagcbor.decode(frame)
    if not isinstance(header, dict) or set(header) != {"roots", "version"}:
        raise CodecError("CAR header must be a map of exactly 'roots' and 'version'")
    if header["version"] != 1:
        raise CodecError(f"unsupported CAR version {header['version']!r}")
    roots = header["roots"]
    if not isinstance(roots, list) or not all(isinstance(r, Cid) for r in roots):
        raise CodecError("CAR roots must be a list of CIDs")
    return tuple(r for r in roots if isinstance(r, Cid))


def iter_car(stream: BinaryIO, *, read_size: int = READ_SIZE) -> Iterator[CarHeader | CarBlock]:
    """Parse a CAR from a binary stream: the header, then each verified block."""
    reader = CarReader()
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            reader.receive_data(stream.read(read_size))
        elif event is END:
            return
        elif isinstance(event, CarHeader | CarBlock):
            yield event


@dataclass(frozen=True, slots=True)
class CarImport:
    roots: tuple[Cid, ...]
    blocks: int


def import_car(store: Blockstore, path: Path) -> CarImport:
    """Store every block of the CAR file at ``path``; return its roots."""
    roots: tuple[Cid, ...] = ()
    count = 0
    with open(path, "rb") as f:
        for event in iter_car(f):
            if isinstance(event, CarHeader):
                roots = event.roots
            else:
                store.put_hashed(event.cid, event.data)  # the reader verified it
                count += 1
    return CarImport(roots, count)


def write_car(store: Blockstore, roots: Sequence[Cid], out: BinaryIO) -> CarWriter:
    """Write the DAGs under ``roots`` (each block once, depth-first) as a CAR to ``out``."""
    writer = CarWriter(out.write, roots)
    for cid, data in _iter_roots(store, roots):
        writer.add(cid, data)
    return writer


def _iter_roots(store: Blockstore, roots: Iterable[Cid]) -> Iterator[tuple[Cid, bytes]]:
    seen: set[bytes] = set()
    for root in roots:
        for cid, data in iter_dag_blocks(store, root):
            if cid.multihash not in seen:
                seen.add(cid.multihash)
                yield cid, data


def export_car(store: Blockstore, roots: Sequence[Cid], path: Path) -> CarWriter:
    """Write a CAR file atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        writer = write_car(store, roots, f)
    tmp.replace(path)
    return writer
