"""An on-disk block store laid out exactly as kubo's flatfs, plus recursive pins.

Layout under the store root (``HOME/blockstore``)::

    blocks/SHARDING                      "/repo/flatfs/shard/v1/next-to-last/2"
    blocks/<key[-3:-1]>/<key>.data       one file per block
    blocks/.temp/                        files being written (renamed into place when done)
    pins/<cid>                           one file per recursive pin (content: its name)
    quarantine/<key>.<n>.data            blocks found corrupt, moved aside

``key`` is the RFC 4648 base32 (upper case, no padding) of the block's *multihash*, as kubo
writes it, so a CID's codec is not part of the key: ``iter_cids`` yields CIDv1 ``raw`` CIDs.

Writes go to a temporary file that is renamed over the final name (optionally fsynced first),
so a reader never sees a partial block and two processes writing the same block both succeed.
Every read is checked against the CID; a file that does not match is moved to ``quarantine/``
and `CorruptBlock` is raised: corrupt bytes are never returned.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sorap2p.core.cid import IDENTITY, RAW, Cid
from sorap2p.core.errors import ConfigError, IntegrityError, LocalProtocolError, RemoteProtocolError
from sorap2p.store.errors import BlockNotFound, CorruptBlock

SHARDING: Final = "/repo/flatfs/shard/v1/next-to-last/2"
README: Final = (
    "This is a repository of IPLD objects, laid out as kubo's flatfs\n"
    "(shard function next-to-last/2, base32 multihash keys, .data files).\n"
)
TEMP_DIR: Final = ".temp"
_TEMP_PREFIX: Final = "put-"
MAX_BLOCK_SIZE: Final = 8 << 20


def block_key(cid: Cid) -> str:
    """The flatfs key of a CID: base32 (upper, unpadded) of its multihash."""
    return base64.b32encode(cid.multihash).decode("ascii").rstrip("=")


def key_to_multihash(key: str) -> bytes:
    return base64.b32decode(key + "=" * (-len(key) % 8))


def cid_from_key(key: str) -> Cid:
    """The CIDv1 ``raw`` CID of a flatfs key (kubo's ``refs local`` does the same)."""
    return Cid.decode(b"\x01" + bytes([RAW]) + key_to_multihash(key))


@dataclass(frozen=True, slots=True)
class BlockstoreStats:
    blocks: int
    bytes: int
    temp_files: int
    quarantined: int
    pins: int


@dataclass(frozen=True, slots=True)
class Pin:
    cid: Cid
    name: str


class Blockstore:
    """A flatfs block store rooted at ``root`` (created when missing). Thread and process safe
    for concurrent puts and gets; `delete` and garbage collection race only with writers of the
    same block (see `sorap2p.store.dag.collect_garbage`)."""

    __slots__ = ("_blocks", "_counter", "_fsync", "_pins", "_quarantine", "_temp", "root")

    def __init__(self, root: Path, fsync: bool = False) -> None:
        self.root = Path(root)
        self._fsync = fsync
        self._blocks = self.root / "blocks"
        self._temp = self._blocks / TEMP_DIR
        self._pins = self.root / "pins"
        self._quarantine = self.root / "quarantine"
        self._counter = 0
        self._temp.mkdir(parents=True, exist_ok=True)
        self._pins.mkdir(exist_ok=True)
        self._quarantine.mkdir(exist_ok=True)
        sharding = self._blocks / "SHARDING"
        try:
            found = sharding.read_text().strip()
        except FileNotFoundError:
            self._write_atomic(sharding, SHARDING.encode() + b"\n")
            self._write_atomic(self._blocks / "_README", README.encode())
        else:
            if found != SHARDING:
                raise ConfigError(f"{sharding}: unsupported flatfs shard function {found!r}")

    # -- paths -----------------------------------------------------------------------
    def path_of(self, cid: Cid) -> Path:
        key = block_key(cid)
        return self._blocks / key[-3:-1] / f"{key}.data"

    def _temp_name(self, key: str) -> Path:
        self._counter += 1
        return (
            self._temp / f"{_TEMP_PREFIX}{key}-{os.getpid()}-{self._counter}-{os.urandom(4).hex()}"
        )

    def _write_atomic(self, target: Path, data: bytes | bytearray | memoryview) -> None:
        tmp = self._temp_name(target.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        if self._fsync:
            dfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    # -- blocks ----------------------------------------------------------------------
    def put(self, data: bytes | bytearray | memoryview, codec: int = RAW) -> Cid:
        """Store ``data`` as a CIDv1 sha2-256 block of ``codec``; return its CID."""
        if len(data) > MAX_BLOCK_SIZE:
            raise LocalProtocolError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        cid = Cid.hash(data, codec)
        self._store(cid, data)
        return cid

    def put_block(self, cid: Cid, data: bytes | bytearray | memoryview) -> None:
        """Store a block received with its CID; `IntegrityError` when they do not match."""
        if not cid.verify(data):
            raise IntegrityError(f"block does not hash to {cid}")
        if cid.hash_code == IDENTITY:
            return
        if len(data) > MAX_BLOCK_SIZE:
            raise RemoteProtocolError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        self._store(cid, data)

    def _store(self, cid: Cid, data: bytes | bytearray | memoryview) -> None:
        path = self.path_of(cid)
        try:
            if path.stat().st_size == len(data):
                # already there (reads verify; a corrupt copy is replaced on the next put);
                # touch it so a garbage collection running now keeps it
                os.utime(path)
                return
        except FileNotFoundError:
            pass
        self._write_atomic(path, data)

    def has(self, cid: Cid) -> bool:
        if cid.hash_code == IDENTITY:
            return True
        return self.path_of(cid).is_file()

    def size(self, cid: Cid) -> int:
        if cid.hash_code == IDENTITY:
            return len(cid.digest)
        try:
            return self.path_of(cid).stat().st_size
        except FileNotFoundError:
            raise BlockNotFound(cid) from None

    def get(self, cid: Cid) -> bytes:
        """The verified bytes of ``cid``: `BlockNotFound` or `CorruptBlock` otherwise."""
        if cid.hash_code == IDENTITY:
            return cid.digest
        path = self.path_of(cid)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read()
        except FileNotFoundError:
            raise BlockNotFound(cid) from None
        if not cid.verify(data):
            self._corrupt(cid, path, f"content does not match ({len(data)} bytes)")
        return data

    def get_into(self, cid: Cid, out: memoryview | bytearray) -> int:
        """Read and verify ``cid`` straight into ``out``; return its length.

        `LocalProtocolError` when ``out`` is smaller than the (verified) block.
        """
        if cid.hash_code == IDENTITY:
            d = cid.digest
            memoryview(out)[: len(d)] = d
            return len(d)
        path = self.path_of(cid)
        target = memoryview(out).cast("B")
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise BlockNotFound(cid) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size > len(target):
                self.get(cid)  # verifies (and quarantines a corrupt file)
                raise LocalProtocolError(f"buffer of {len(target)} bytes too small for {cid}")
            n = 0
            while n < size:
                got = f.readinto(target[n:size])
                if not got:
                    break
                n += got
        if not cid.verify(target[:n]):
            self._corrupt(cid, path, f"content does not match ({n} bytes)")
        return n

    def _corrupt(self, cid: Cid, path: Path, detail: str) -> None:
        """Move a corrupt file aside (unless a concurrent writer already repaired it) and raise."""
        self._counter += 1
        dest = self._quarantine / f"{path.stem}.{os.getpid()}-{self._counter}.data"
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            raise CorruptBlock(cid, detail) from None
        try:
            if cid.verify(dest.read_bytes()):  # repaired between our read and the move
                os.replace(dest, path)
                raise CorruptBlock(cid, detail + "; repaired concurrently, retry")
        except FileNotFoundError:
            pass
        raise CorruptBlock(cid, detail, quarantined=str(dest))

    def delete(self, cid: Cid) -> bool:
        """Remove a block; True when it was there."""
        try:
            self.path_of(cid).unlink()
        except FileNotFoundError:
            return False
        return True

    # -- iteration -------------------------------------------------------------------
    def iter_keys(self) -> Iterator[tuple[str, Path]]:
        """Every ``(key, path)`` of a stored block, shard by shard in sorted order."""
        try:
            shards = sorted(os.scandir(self._blocks), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for shard in shards:
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for entry in sorted(os.scandir(shard.path), key=lambda e: e.name):
                name = entry.name
                if name.endswith(".data") and entry.is_file():
                    yield name[:-5], Path(entry.path)

    def iter_cids(self) -> Iterator[Cid]:
        """Every stored block as a CIDv1 ``raw`` CID (flatfs keys carry no codec)."""
        for key, _ in self.iter_keys():
            try:
                yield cid_from_key(key)
            except (ValueError, RemoteProtocolError):
                continue  # a file that is not a block key: `verify_blocks` reports it

    def temp_files(self) -> list[Path]:
        return sorted(p for p in self._temp.iterdir() if p.name.startswith(_TEMP_PREFIX))

    def clean_temp(self, older_than: float, now: Callable[[], float] = time.time) -> int:
        """Remove leftovers of interrupted writes older than ``older_than`` seconds."""
        removed = 0
        limit = now() - older_than
        for p in self.temp_files():
            try:
                if p.stat().st_mtime <= limit:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def stats(self) -> BlockstoreStats:
        blocks = total = 0
        for _, path in self.iter_keys():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
            blocks += 1
        return BlockstoreStats(
            blocks=blocks,
            bytes=total,
            temp_files=len(self.temp_files()),
            quarantined=sum(1 for _ in self._quarantine.iterdir()),
            pins=len(self.pins()),
        )

    # -- pins ------------------------------------------------------------------------
    def pin(self, cid: Cid, name: str = "") -> None:
        """Pin the DAG under ``cid`` recursively (idempotent; the last name wins)."""
        self._write_atomic(self._pins / str(cid.to_v1()), name.encode("utf-8"))

    def unpin(self, cid: Cid) -> bool:
        try:
            (self._pins / str(cid.to_v1())).unlink()
        except FileNotFoundError:
            return False
        return True

    def is_pinned(self, cid: Cid) -> bool:
        return (self._pins / str(cid.to_v1())).is_file()

    def pins(self) -> list[Pin]:
        out = []
        for p in sorted(self._pins.iterdir()):
            try:
                out.append(Pin(Cid.parse(p.name), p.read_text("utf-8")))
            except (RemoteProtocolError, FileNotFoundError, UnicodeDecodeError):
                continue
        return out
