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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sorap2p.core.cid import Cid, decode_varint, encode_varint
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
    """Incremental, verifying CAR v1 parser (see module docstring)."""

    __slots__ = ("_buf", "_eof", "_header_done", "_max_block", "_pos", "blocks", "roots")

    def __init__(self, *, max_block_size: int = MAX_BLOCK_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._header_done = False
        self._max_block = max_block_size
        self.roots: tuple[Cid, ...] | None = None
        self.blocks = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise CodecError("data after the end of the CAR")
        if not data:
            self._eof = True
            return
        if self._pos > (1 << 20) and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _frame(self, limit: int) -> bytes | None:
        """The next length-prefixed frame, or None when incomplete."""
        buf = self._buf
        try:
            length, start = decode_varint(bytes(buf[self._pos : self._pos + 10]), 0)
            start += self._pos
        except RemoteProtocolError as exc:
            if str(exc) == "truncated varint" and not self._eof:
                return None
            raise CodecError(f"bad CAR length prefix: {exc}") from exc
        if length > limit:
            raise CodecError(f"CAR frame of {length} bytes exceeds the limit of {limit}")
        end = start + length
        if end > len(buf):
            if self._eof:
                raise CodecError("truncated CAR section")
            return None
        frame = bytes(buf[start:end])
        self._pos = end
        return frame

    def next_event(self) -> CarEvent:
        if self._pos >= len(self._buf):
            if not self._eof:
                return NEED_DATA
            if not self._header_done:
                raise CodecError("empty CAR")
            return END
        if not self._header_done:
            frame = self._frame(MAX_HEADER_SIZE)
            if frame is None:
                return NEED_DATA
            self._header_done = True
            self.roots = _parse_header(frame)
            return CarHeader(self.roots)
        frame = self._frame(self._max_block + 128)
        if frame is None:
            return NEED_DATA
        try:
            cid, off = Cid.decode_prefix(frame)
        except RemoteProtocolError as exc:
            raise CodecError(f"bad CID in CAR section: {exc}") from exc
        data = frame[off:]
        if len(data) > self._max_block:
            raise CodecError(f"CAR block {cid} exceeds {self._max_block} bytes")
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
