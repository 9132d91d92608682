"""Walking DAGs in the block store, verifying the store, and garbage collection."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sorap2p.core.cid import DAG_CBOR, DAG_PB, RAW, SHA2_256, Cid
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.store import dagcbor, dagpb
from sorap2p.store.blockstore import Blockstore, key_to_multihash
from sorap2p.store.errors import BlockNotFound, CodecError, CorruptBlock


def links_of(cid: Cid, data: bytes) -> list[Cid]:
    """The CIDs a block links to, in order (dag-pb links, DAG-CBOR tag-42 links, none for raw)."""
    codec = cid.codec
    if codec == RAW:
        return []
    if codec == DAG_PB:
        return [link.hash for link in dagpb.decode_node(data).links]
    if codec == DAG_CBOR:
        return dagcbor.iter_links(dagcbor.decode(data))
    raise CodecError(f"cannot walk links of codec 0x{codec:x}")


def iter_dag_blocks(
    store: Blockstore, root: Cid, *, skip_missing: bool = False
) -> Iterator[tuple[Cid, bytes]]:
    """Every block of the DAG under ``root`` once, depth-first pre-order (the order of a CAR
    export). Raises `BlockNotFound` for a missing block unless ``skip_missing``."""
    seen: set[bytes] = set()
    stack = [root]
    while stack:
        cid = stack.pop()
        mh = cid.multihash
        if mh in seen:
            continue
        seen.add(mh)
        try:
            data = store.get(cid)
        except BlockNotFound:
            if skip_missing:
                continue
            raise
        yield cid, data
        stack.extend(reversed(links_of(cid, data)))


def iter_dag(store: Blockstore, root: Cid) -> Iterator[Cid]:
    """Every CID of the DAG under ``root`` once, depth-first pre-order."""
    for cid, _ in iter_dag_blocks(store, root):
        yield cid


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    corrupt: tuple[str, ...]  # "<cid>: <detail>" per corrupt block (moved to quarantine/)
    missing: tuple[str, ...]  # "<cid> (under pin <root>)" per block a pinned DAG lacks
    temp_files: int

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def verify_store(store: Blockstore, roots: Iterable[Cid] = ()) -> VerifyReport:
    """Re-hash every block (corrupt ones are moved aside) and walk every pinned DAG and
    ``roots`` looking for missing blocks."""
    checked = 0
    corrupt: list[str] = []
    for key, path in store.iter_keys():
        checked += 1
        try:
            mh = key_to_multihash(key)
            ok = len(mh) == 34 and mh[0] == SHA2_256 and mh[1] == 32
        except ValueError:
            ok = False
        if not ok:
            corrupt.append(f"{path.name}: not a sha2-256 multihash key")
            continue
        cid = Cid(b"\x01" + bytes([RAW]) + mh)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if hashlib.sha256(data).digest() != mh[2:]:
            try:
                store.get(cid)  # moves it aside
            except CorruptBlock as exc:
                corrupt.append(f"{cid}: {exc}")
            except BlockNotFound:
                continue
    missing: list[str] = []
    all_roots = [p.cid for p in store.pins()] + list(roots)
    for root in all_roots:
        try:
            for _ in _walk_reporting(store, root, missing):
                pass
        except CodecError as exc:
            corrupt.append(f"{root}: undecodable block in DAG: {exc}")
    return VerifyReport(checked, tuple(corrupt), tuple(missing), len(store.temp_files()))


def _walk_reporting(store: Blockstore, root: Cid, missing: list[str]) -> Iterator[Cid]:
    seen: set[bytes] = set()
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid.multihash in seen:
            continue
        seen.add(cid.multihash)
        try:
            data = store.get(cid)
        except BlockNotFound:
            missing.append(f"{cid} (under pin {root})")
            continue
        except CorruptBlock:
            missing.append(f"{cid} (corrupt, under pin {root})")
            continue
        yield cid
        stack.extend(reversed(links_of(cid, data)))


@dataclass(frozen=True, slots=True)
class GcResult:
    removed: int
    freed_bytes: int
    kept: int
    temp_removed: int


def collect_garbage(
    store: Blockstore,
    extra_roots: Iterable[Cid] = (),
    *,
    now: Callable[[], float] = time.time,
    temp_grace_s: float = 3600.0,
) -> GcResult:
    """Delete every block not reachable from a pin or ``extra_roots``.

    Blocks whose file is newer than the start of the collection are kept, so a writer that
    stores a DAG and pins it afterwards is not robbed while the collection runs. Temporary
    files of interrupted writes older than ``temp_grace_s`` are removed too.
    """
    started = now()
    live: set[bytes] = set()
    for root in [p.cid for p in store.pins()] + list(extra_roots):
        try:
            for cid, _ in iter_dag_blocks(store, root, skip_missing=True):
                live.add(cid.multihash)
        except (CodecError, RemoteProtocolError, CorruptBlock):
            continue  # a pinned DAG with a bad block: keep what was marked, verify reports it
    removed = freed = kept = 0
    for key, path in list(store.iter_keys()):
        try:
            mh = key_to_multihash(key)
        except ValueError:
            continue
        if mh in live:
            kept += 1
            continue
        try:
            st = path.stat()
            if st.st_mtime >= started:
                kept += 1
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        freed += st.st_size
    temp_removed = store.clean_temp(temp_grace_s, now)
    return GcResult(removed, freed, kept, temp_removed)
