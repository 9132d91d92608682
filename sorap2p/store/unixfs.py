"""UnixFS files: import (chunk, build a balanced DAG) and export, byte-compatible with Helia's
``ipfs-unixfs-importer`` and kubo under the same profile (see protocols/blockstore.md).

Profiles:

* ``unixfs-v1-2025`` (default, Helia's ``addBytes`` default): CIDv1, raw leaves, 1 MiB
  fixed chunks, balanced DAG with up to 1024 links per node.
* ``unixfs-v0-2015``: CIDv0, dag-pb ``file`` leaves, 256 KiB chunks, 174 links per node.

A file of one chunk is that chunk's leaf; otherwise leaves are grouped by ``max_links`` into
parent nodes, level by level, until one root remains (a lone trailing node is wrapped in its
own parent, as the JavaScript importer does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sorap2p.core.cid import DAG_PB, RAW, Cid
from sorap2p.core.errors import LocalProtocolError
from sorap2p.store.blockstore import Blockstore
from sorap2p.store.dagpb import (
    UNIXFS_FILE,
    UNIXFS_RAW,
    PBLink,
    PBNode,
    UnixFSData,
    decode_node,
    encode_node,
)
from sorap2p.store.errors import CodecError


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    cid_version: int
    raw_leaves: bool
    chunk_size: int
    max_links: int


V1_2025: Final = Profile("unixfs-v1-2025", 1, True, 1 << 20, 1024)
V0_2015: Final = Profile("unixfs-v0-2015", 0, False, 256 << 10, 174)
PROFILES: Final[dict[str, Profile]] = {
    "unixfs-v1-2025": V1_2025,
    "v1-2025": V1_2025,
    "unixfs-v0-2015": V0_2015,
    "v0-2015": V0_2015,
}
MAX_EXPORT_DEPTH: Final = 32


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise LocalProtocolError(
            f"unknown UnixFS profile {name!r}: expected one of {', '.join(sorted(PROFILES))}"
        ) from None


@dataclass(frozen=True, slots=True)
class _Node:
    cid: Cid
    tsize: int  # the link Tsize: block size plus the Tsize of everything below
    filesize: int  # file bytes under this node (its entry in the parent's blocksizes)


@dataclass(frozen=True, slots=True)
class ImportResult:
    root: Cid
    size: int  # file bytes
    blocks: int  # blocks written (including ones already present)


def _dag_pb_cid(block: bytes, version: int) -> Cid:
    if version == 0:
        return Cid(b"\x12\x20" + hashlib.sha256(block).digest())
    return Cid.hash(block, DAG_PB)


class _Builder:
    def __init__(self, store: Blockstore, profile: Profile) -> None:
        self.store = store
        self.profile = profile
        self.blocks = 0

    def leaf(self, chunk: bytes) -> _Node:
        """A dag-pb leaf (profiles without raw leaves)."""
        self.blocks += 1
        data = UnixFSData(UNIXFS_FILE, chunk, filesize=len(chunk)).encode()
        block = encode_node(PBNode((), data))
        cid = _dag_pb_cid(block, self.profile.cid_version)
        self.store.put_hashed(cid, block)
        return _Node(cid, len(block), len(chunk))

    def parent(self, children: list[_Node]) -> _Node:
        self.blocks += 1
        kept = [c for c in children if c.filesize > 0]
        sizes = tuple(c.filesize for c in kept)
        data = UnixFSData(UNIXFS_FILE, b"", filesize=sum(sizes), blocksizes=sizes).encode()
        block = encode_node(PBNode(tuple(PBLink(c.cid, "", c.tsize) for c in kept), data))
        cid = _dag_pb_cid(block, self.profile.cid_version)
        self.store.put_hashed(cid, block)
        return _Node(cid, len(block) + sum(c.tsize for c in kept), sum(sizes))


def _chunks(stream: BinaryIO, size: int) -> Iterator[bytes]:
    emitted = False
    while True:
        buf = bytearray()
        while len(buf) < size:
            piece = stream.read(size - len(buf))
            if not piece:
                break
            buf += piece
        if not buf:
            if not emitted:
                yield b""
            return
        emitted = True
        yield bytes(buf)
        if len(buf) < size:
            return


def _recording_sizes(chunks: Iterator[bytes], sizes: list[int]) -> Iterator[bytes]:
    for chunk in chunks:
        sizes.append(len(chunk))
        yield chunk


def import_stream(store: Blockstore, stream: BinaryIO, profile: Profile = V1_2025) -> ImportResult:
    """Chunk ``stream`` into the store under ``profile``; return the root CID."""
    builder = _Builder(store, profile)
    chunks = _chunks(stream, profile.chunk_size)
    if profile.raw_leaves:  # hashed in the store's helper threads while this one writes
        sizes: list[int] = []
        cids = store.put_many(_recording_sizes(chunks, sizes), RAW)
        builder.blocks += len(cids)
        level = [_Node(cid, n, n) for cid, n in zip(cids, sizes, strict=True)]
    else:
        level = [builder.leaf(chunk) for chunk in chunks]
    size = sum(n.filesize for n in level)
    if len(level) == 1:  # a single-chunk file is its own leaf
        return ImportResult(level[0].cid, size, builder.blocks)
    while True:
        m = profile.max_links
        level = [builder.parent(level[i : i + m]) for i in range(0, len(level), m)]
        if len(level) == 1:
            return ImportResult(level[0].cid, size, builder.blocks)


def import_bytes(store: Blockstore, data: bytes, profile: Profile = V1_2025) -> ImportResult:
    import io

    return import_stream(store, io.BytesIO(data), profile)


def import_file(store: Blockstore, path: Path, profile: Profile = V1_2025) -> ImportResult:
    with open(path, "rb") as f:
        return import_stream(store, f, profile)


def iter_file(store: Blockstore, root: Cid) -> Iterator[bytes]:
    """The bytes of the UnixFS file (or raw block) under ``root``, piece by piece.

    Every block is verified on read; malformed nodes raise `CodecError`.
    """
    stack: list[tuple[Cid, int]] = [(root, 0)]
    while stack:
        cid, depth = stack.pop()
        if depth > MAX_EXPORT_DEPTH:
            raise CodecError(f"UnixFS DAG under {root} is deeper than {MAX_EXPORT_DEPTH}")
        block = store.get(cid)
        if cid.codec == RAW:
            yield block
            continue
        if cid.codec != DAG_PB:
            raise CodecError(f"{cid} is neither raw nor dag-pb: not a UnixFS file")
        node = decode_node(block)
        if node.data is None:
            raise CodecError(f"{cid}: dag-pb node without UnixFS data")
        meta = UnixFSData.decode(node.data)
        if meta.type not in (UNIXFS_FILE, UNIXFS_RAW):
            raise CodecError(f"{cid}: UnixFS type {meta.type} is not a file")
        if node.links and len(meta.blocksizes) != len(node.links):
            raise CodecError(f"{cid}: {len(node.links)} links but {len(meta.blocksizes)} sizes")
        if meta.data:
            yield meta.data
        stack.extend((link.hash, depth + 1) for link in reversed(node.links))


def cat(store: Blockstore, root: Cid) -> bytes:
    return b"".join(iter_file(store, root))
