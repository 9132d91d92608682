"""dag-pb nodes and the UnixFS ``Data`` message, encoded exactly as ``@ipld/dag-pb`` and
``ipfs-unixfs`` encode them (links first, then data; empty link names are written).

Decoding is strict about the dag-pb canonical form (field order, no unknown fields, no
duplicates) and lenient only where UnixFS itself is (unknown UnixFS fields are rejected too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from sorap2p.core.cid import Cid, decode_varint, encode_varint
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.store.errors import CodecError

# UnixFS Data.DataType
UNIXFS_RAW: Final = 0
UNIXFS_DIRECTORY: Final = 1
UNIXFS_FILE: Final = 2
UNIXFS_METADATA: Final = 3
UNIXFS_SYMLINK: Final = 4
UNIXFS_HAMT_SHARD: Final = 5


@dataclass(frozen=True, slots=True)
class PBLink:
    hash: Cid
    name: str | None = ""
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def _varint(n: int) -> bytes:
    return encode_varint(n)


def encode_link(link: PBLink) -> bytes:
    out = bytearray()
    raw = link.hash.raw
    out += b"\x0a" + _varint(len(raw)) + raw
    if link.name is not None:
        nb = link.name.encode("utf-8")
        out += b"\x12" + _varint(len(nb)) + nb
    if link.tsize is not None:
        out += b"\x18" + _varint(link.tsize)
    return bytes(out)


def encode_node(node: PBNode) -> bytes:
    out = bytearray()
    for link in node.links:
        lb = encode_link(link)
        out += b"\x12" + _varint(len(lb)) + lb
    if node.data is not None:
        out += b"\x0a" + _varint(len(node.data)) + node.data
    return bytes(out)


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = decode_varint(buf, pos)
    end = pos + n
    if end > len(buf):
        raise CodecError("truncated protobuf length-delimited field")
    return buf[pos:end], end


def _decode_link(buf: bytes) -> PBLink:
    pos = 0
    cid: Cid | None = None
    name: str | None = None
    tsize: int | None = None
    last = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if fnum <= last:
            raise CodecError("dag-pb link fields out of order or repeated")
        last = fnum
        if fnum == 1 and wtype == 2:
            raw, pos = _read_bytes(buf, pos)
            try:
                cid = Cid.decode(raw)
            except RemoteProtocolError as exc:
                raise CodecError(f"dag-pb link has an invalid CID: {exc}") from exc
        elif fnum == 2 and wtype == 2:
            nb, pos = _read_bytes(buf, pos)
            try:
                name = nb.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CodecError("dag-pb link name is not UTF-8") from exc
        elif fnum == 3 and wtype == 0:
            tsize, pos = decode_varint(buf, pos)
        else:
            raise CodecError(f"unexpected dag-pb link field {fnum}/{wtype}")
    if cid is None:
        raise CodecError("dag-pb link without a Hash")
    return PBLink(cid, name, tsize)


def decode_node(data: bytes | memoryview) -> PBNode:
    """Decode a dag-pb block; `CodecError` (a RemoteProtocolError) for malformed input."""
    buf = bytes(data)
    pos = 0
    links: list[PBLink] = []
    payload: bytes | None = None
    try:
        while pos < len(buf):
            key, pos = decode_varint(buf, pos)
            if key == 0x12:
                if payload is not None:
                    raise CodecError("dag-pb Links after Data")
                raw, pos = _read_bytes(buf, pos)
                links.append(_decode_link(raw))
            elif key == 0x0A:
                if payload is not None:
                    raise CodecError("dag-pb Data repeated")
                payload, pos = _read_bytes(buf, pos)
            else:
                raise CodecError(f"unexpected dag-pb field key 0x{key:x}")
    except CodecError:
        raise
    except RemoteProtocolError as exc:
        raise CodecError(f"malformed dag-pb: {exc}") from exc
    return PBNode(tuple(links), payload)


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS ``Data`` message (files and raw nodes; directories are read but not built)."""

    type: int = UNIXFS_FILE
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default=())

    def encode(self) -> bytes:
        out = bytearray(b"\x08" + _varint(self.type))
        if self.data:
            out += b"\x12" + _varint(len(self.data)) + self.data
        if self.filesize is not None:
            out += b"\x18" + _varint(self.filesize)
        for size in self.blocksizes:
            out += b"\x20" + _varint(size)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> UnixFSData:
        pos = 0
        kind: int | None = None
        payload = b""
        filesize: int | None = None
        sizes: list[int] = []
        try:
            while pos < len(data):
                key, pos = decode_varint(data, pos)
                if key == 0x08:
                    kind, pos = decode_varint(data, pos)
                elif key == 0x12:
                    payload, pos = _read_bytes(data, pos)
                elif key == 0x18:
                    filesize, pos = decode_varint(data, pos)
                elif key == 0x20:
                    size, pos = decode_varint(data, pos)
                    sizes.append(size)
                elif key in (0x28, 0x30, 0x38):  # hashType, fanout, mode
                    _, pos = decode_varint(data, pos)
                elif key == 0x42:  # mtime
                    _, pos = _read_bytes(data, pos)
                else:
                    raise CodecError(f"unexpected UnixFS field key 0x{key:x}")
        except CodecError:
            raise
        except RemoteProtocolError as exc:
            raise CodecError(f"malformed UnixFS data: {exc}") from exc
        if kind is None:
            raise CodecError("UnixFS data without a Type")
        return cls(kind, payload, filesize, tuple(sizes))
