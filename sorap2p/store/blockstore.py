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
A write that finds the file system full raises `StoreFullError` after removing its
temporary file, so the block is either complete or absent. Every read is checked against
the CID; a file that does not match (or is larger than any block) is moved to
``quarantine/`` and `CorruptBlock` is raised: corrupt bytes are never returned.

Speed: hashing is the one unavoidable pass over a block's bytes. Large blocks are hashed in
a helper thread while the file I/O runs in the caller's (hashlib and ``os.write``/``read``
release the GIL), with no copy of the caller's buffer: `put`/`put_block` overlap within a
block, `put_many`/`get_many` pipeline across blocks; `put_hashed` stores a block whose CID
the caller has just computed, without hashing it again.
"""

from __future__ import annotations

import base64
import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sorap2p.core.cid import CODEC_NAMES, IDENTITY, RAW, SHA2_256, Cid
from sorap2p.core.errors import ConfigError, IntegrityError, LocalProtocolError, RemoteProtocolError
from sorap2p.store.errors import BlockNotFound, CorruptBlock, StoreFullError

SHARDING: Final = "/repo/flatfs/shard/v1/next-to-last/2"
README: Final = (
    "This is a repository of IPLD objects, laid out as kubo's flatfs\n"
    "(shard function next-to-last/2, base32 multihash keys, .data files).\n"
)
TEMP_DIR: Final = ".temp"
_TEMP_PREFIX: Final = "put-"
MAX_BLOCK_SIZE: Final = 8 << 20
OVERLAP_MIN: Final = 256 << 10
"""`put`/`put_block` hash and write blocks this large or larger at the same time (two
threads); below it, waking the helper costs more than the overlap saves."""
PIPELINE_MIN: Final = 64 << 10
"""`put_many`/`get_many` hash blocks this large or larger in the helper threads (which stay
busy from one block to the next, so smaller blocks gain too)."""
FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""`OSError` numbers that mean the file system (or the quota) is full: `StoreFullError`."""


def block_key(cid: Cid) -> str:
    """The flatfs key of a CID: base32 (upper, unpadded) of its multihash."""
    return base64.b32encode(cid.multihash).decode("ascii").rstrip("=")


def key_to_multihash(key: str) -> bytes:
    return base64.b32decode(key + "=" * (-len(key) % 8))


def cid_from_key(key: str) -> Cid:
    """The CIDv1 ``raw`` CID of a flatfs key (kubo's ``refs local`` does the same)."""
    return Cid.decode(b"\x01" + bytes([RAW]) + key_to_multihash(key))


Buffer = bytes | bytearray | memoryview


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_put(data: Buffer, codec: int) -> int:
    """The size of a block about to be put; `LocalProtocolError` when it cannot be."""
    if codec not in CODEC_NAMES:
        raise LocalProtocolError(f"unsupported codec 0x{codec:x}")
    size = _byte_view(data).nbytes
    if size > MAX_BLOCK_SIZE:
        raise LocalProtocolError(f"block of {size} bytes exceeds {MAX_BLOCK_SIZE}")
    return size


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _discard(future: Future[Path]) -> None:
    """Wait for a helper's temporary file and remove it (the put failed on this side)."""
    futures.wait([future])
    if not future.cancelled() and future.exception() is None:
        future.result().unlink(missing_ok=True)


def _touch(path: Path) -> None:
    with suppress(FileNotFoundError):  # deleted since: the caller's next put writes it again
        os.utime(path)


# a block read ahead: cid, path (None: identity CID), bytes or the error, file size, verified?
_Read = tuple[Cid, Path | None, bytes | BlockNotFound, int, bool | Future[bool]]


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
    same block (see `sorap2p.store.dag.collect_garbage`).

    Large blocks (``OVERLAP_MIN`` bytes and up) are hashed and written at the same time, one
    side in the calling thread, the other in one of the ``helper_threads`` threads of this
    store (started on first use, stopped by `close`): hashlib and ``os.write`` both release
    the GIL, so a put costs about one hash when a second core is free. ``helper_threads=0``
    does everything in the calling thread.

    A write that finds the file system full raises `StoreFullError` and leaves nothing
    behind: no temporary file, no partial block.
    """

    __slots__ = (
        "_blocks",
        "_counter",
        "_fsync",
        "_helper_threads",
        "_lock",
        "_pins",
        "_pool",
        "_pool_pid",
        "_quarantine",
        "_temp",
        "root",
    )

    def __init__(self, root: Path, fsync: bool = False, *, helper_threads: int = 1) -> None:
        if helper_threads < 0:
            raise LocalProtocolError("helper_threads must be >= 0")
        self.root = Path(root)
        self._fsync = fsync
        self._helper_threads = helper_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()
        self._blocks = self.root / "blocks"
        self._temp = self._blocks / TEMP_DIR
        self._pins = self.root / "pins"
        self._quarantine = self.root / "quarantine"
        self._counter = 0
        with self._full_as(None):
            self._temp.mkdir(parents=True, exist_ok=True)
            self._pins.mkdir(exist_ok=True)
            self._quarantine.mkdir(exist_ok=True)
        sharding = self._blocks / "SHARDING"
        try:
            found = sharding.read_text().strip()
        except FileNotFoundError:
            self._write_atomic(sharding, SHARDING.encode() + b"\n", None)
            self._write_atomic(self._blocks / "_README", README.encode(), None)
        else:
            if found != SHARDING:
                raise ConfigError(f"{sharding}: unsupported flatfs shard function {found!r}")

    def close(self) -> None:
        """Stop the helper threads (the store stays usable: they restart when needed)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Blockstore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _helpers(self) -> ThreadPoolExecutor | None:
        if not self._helper_threads:
            return None
        pool, pid = self._pool, os.getpid()
        if pool is None or self._pool_pid != pid:  # none yet, or inherited through fork
            with self._lock:
                if self._pool is None or self._pool_pid != pid:
                    self._pool = ThreadPoolExecutor(
                        self._helper_threads, thread_name_prefix="blockstore-hash"
                    )
                    self._pool_pid = pid
                pool = self._pool
        return pool

    # -- paths -----------------------------------------------------------------------
    def path_of(self, cid: Cid) -> Path:
        key = block_key(cid)
        return self._blocks / key[-3:-1] / f"{key}.data"

    def _temp_name(self, label: str) -> Path:
        self._counter += 1
        return (
            self._temp
            / f"{_TEMP_PREFIX}{label}-{os.getpid()}-{self._counter}-{os.urandom(4).hex()}"
        )

    # -- writing ---------------------------------------------------------------------
    @contextmanager
    def _full_as(self, cid: Cid | None) -> Iterator[None]:
        """Turn a full-disk `OSError` into `StoreFullError` naming ``cid``."""
        try:
            yield
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise StoreFullError(cid, str(self.root), exc) from exc
            raise

    def _write_temp(self, data: Buffer, label: str) -> Path:
        """Write ``data`` to a new temporary file (fsynced if configured); return its path.
        On any failure the file is removed before the error propagates."""
        tmp = self._temp_name(label)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = _byte_view(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        try:
            os.close(fd)  # some file systems report a full disk only here
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _install(self, tmp: Path, target: Path) -> None:
        """Rename a written temporary file over ``target`` (atomic); remove it on failure."""
        try:
            try:
                os.replace(tmp, target)
            except FileNotFoundError:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self._fsync:
            dfd = os.open(target.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _write_atomic(self, target: Path, data: Buffer, cid: Cid | None) -> None:
        with self._full_as(cid):
            self._install(self._write_temp(data, target.name), target)

    # -- blocks ----------------------------------------------------------------------
    def put(self, data: Buffer, codec: int = RAW) -> Cid:
        """Store ``data`` as a CIDv1 sha2-256 block of ``codec``; return its CID.

        `StoreFullError` when the file system is full (nothing of the block is left)."""
        size = _check_put(data, codec)
        pool = self._helpers() if size >= OVERLAP_MIN else None
        if pool is None:
            cid = Cid.hash(data, codec)
            self._store(cid, data, size)
            return cid
        # a helper thread writes the temporary file while this one hashes (the longer job,
        # so the helper's wake-up is hidden); the rename to the name the hash gives waits
        # for both. One pass over ``data`` each, no copy.
        future = pool.submit(self._write_temp, data, "new")
        try:
            cid = Cid.hash(data, codec)
        except BaseException:
            _discard(future)
            raise
        tmp = self._written(future, cid)
        path = self.path_of(cid)
        if _size_of(path) == size:  # already there: keep that file, as `_store` does
            tmp.unlink(missing_ok=True)
            _touch(path)
            return cid
        with self._full_as(cid):
            self._install(tmp, path)
        return cid

    def put_block(self, cid: Cid, data: Buffer) -> None:
        """Store a block received with its CID; `IntegrityError` when they do not match."""
        size = _byte_view(data).nbytes
        pool = self._helpers() if OVERLAP_MIN <= size <= MAX_BLOCK_SIZE else None
        if pool is None or cid.hash_code != SHA2_256:
            if not cid.verify(data):
                raise IntegrityError(f"block does not hash to {cid}")
            if cid.hash_code == IDENTITY:
                return
            if size > MAX_BLOCK_SIZE:
                raise RemoteProtocolError(f"block of {size} bytes exceeds {MAX_BLOCK_SIZE}")
            self._store(cid, data, size)
            return
        path = self.path_of(cid)
        if _size_of(path) == size:  # already there: only check what we were sent
            if not cid.verify(data):
                raise IntegrityError(f"block does not hash to {cid}")
            _touch(path)
            return
        future = pool.submit(self._write_temp, data, block_key(cid))  # written while verified
        try:
            ok = cid.verify(data)
        except BaseException:
            _discard(future)
            raise
        if not ok:
            _discard(future)
            raise IntegrityError(f"block does not hash to {cid}")
        tmp = self._written(future, cid)
        with self._full_as(cid):
            self._install(tmp, path)

    def _written(self, future: Future[Path], cid: Cid) -> Path:
        """The temporary file a helper wrote for ``cid``; `StoreFullError` for a full disk
        (the helper has removed the file then)."""
        try:
            return future.result()
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise StoreFullError(cid, str(self.root), exc) from exc
            raise

    def put_hashed(self, cid: Cid, data: Buffer) -> None:
        """Store ``data`` under ``cid``, which the caller has just computed from (or verified
        against) these very bytes: no second hash pass. Reads verify as always."""
        size = _byte_view(data).nbytes
        if size > MAX_BLOCK_SIZE:
            raise LocalProtocolError(f"block of {size} bytes exceeds {MAX_BLOCK_SIZE}")
        if cid.hash_code != IDENTITY:
            self._store(cid, data, size)

    def put_many(self, blocks: Iterable[Buffer], codec: int = RAW, *, ahead: int = 2) -> list[Cid]:
        """Store every block of ``blocks`` (consumed in order, in the calling thread); return
        their CIDs in order. Large blocks are hashed by the helper threads up to ``ahead``
        blocks in advance of the writes, so hashing and writing overlap; at most ``ahead`` + 1
        blocks are held at once. On an error (e.g. `StoreFullError`) the blocks before the
        failing one are stored, the ones after it are not."""
        _check_put(b"", codec)
        pool = self._helpers()
        out: list[Cid] = []
        pending: deque[tuple[Buffer, int, Cid | Future[Cid]]] = deque()
        try:
            for data in blocks:
                size = _check_put(data, codec)
                if pool is None or size < PIPELINE_MIN:
                    pending.append((data, size, Cid.hash(data, codec)))
                else:
                    pending.append((data, size, pool.submit(Cid.hash, data, codec)))
                while len(pending) > ahead:
                    out.append(self._store_pending(pending.popleft()))
            while pending:
                out.append(self._store_pending(pending.popleft()))
        finally:
            left = [item for _, _, item in pending if isinstance(item, Future)]
            for f in left:
                f.cancel()
            futures.wait(left)
        return out

    def _store_pending(self, entry: tuple[Buffer, int, Cid | Future[Cid]]) -> Cid:
        data, size, item = entry
        cid = item if isinstance(item, Cid) else item.result()
        self._store(cid, data, size)
        return cid

    def _store(self, cid: Cid, data: Buffer, size: int) -> None:
        path = self.path_of(cid)
        if _size_of(path) == size:
            # already there (reads verify; a corrupt copy is replaced on the next put);
            # touch it so a garbage collection running now keeps it
            _touch(path)
            return
        self._write_atomic(path, data, cid)

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
        data, size = self._read(cid, path)
        return self._verified(cid, path, data, size, size <= MAX_BLOCK_SIZE and cid.verify(data))

    def get_many(self, cids: Iterable[Cid], *, ahead: int = 2) -> Iterator[bytes]:
        """The verified bytes of each of ``cids``, in order (a generator).

        The calling thread reads up to ``ahead`` blocks in advance while the helper threads
        verify the ones read, so the caller's work on block i, the read of block i + 1 and
        the hash of block i + 1 overlap. A block is yielded only once verified; a missing or
        corrupt one raises (`BlockNotFound`, `CorruptBlock`) when its turn comes.
        """
        pool = self._helpers()
        pending: deque[_Read] = deque()
        try:
            for cid in cids:
                pending.append(self._read_ahead(cid, pool))
                while len(pending) > ahead:
                    yield self._take(pending.popleft())
            while pending:
                yield self._take(pending.popleft())
        finally:
            left = [entry[4] for entry in pending if isinstance(entry[4], Future)]
            for f in left:
                f.cancel()
            futures.wait(left)

    def _read_ahead(self, cid: Cid, pool: ThreadPoolExecutor | None) -> _Read:
        if cid.hash_code == IDENTITY:
            return cid, None, cid.digest, 0, True
        path = self.path_of(cid)
        try:
            data, size = self._read(cid, path)
        except BlockNotFound as exc:
            return cid, path, exc, 0, False
        if pool is None or not PIPELINE_MIN <= size <= MAX_BLOCK_SIZE:
            return cid, path, data, size, size <= MAX_BLOCK_SIZE and cid.verify(data)
        return cid, path, data, size, pool.submit(cid.verify, data)

    def _take(self, entry: _Read) -> bytes:
        cid, path, data, size, ok = entry
        if isinstance(data, BlockNotFound):
            raise data
        if path is None:  # identity CID
            return data
        return self._verified(cid, path, data, size, ok if isinstance(ok, bool) else ok.result())

    def _read(self, cid: Cid, path: Path) -> tuple[bytes, int]:
        """The unverified bytes of a block's file and its size (no bytes when the file is too
        large to be a block)."""
        fd = self._open(cid, path)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_BLOCK_SIZE:
                return b"", size
            data = os.read(fd, size)  # one copy, page cache -> the bytes returned
            while len(data) < size:  # a short read (the file shrank under us?)
                more = os.read(fd, size - len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        return data, size

    def _verified(self, cid: Cid, path: Path, data: bytes, size: int, ok: bool) -> bytes:
        if size > MAX_BLOCK_SIZE:
            self._corrupt(cid, path, f"file of {size} bytes exceeds the block size limit")
        if not ok:
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
        fd = self._open(cid, path)
        try:
            size = os.fstat(fd).st_size
            if size <= len(target):
                n = 0
                while n < size:
                    got = os.readv(fd, [target[n:size]])
                    if not got:
                        break
                    n += got
        finally:
            os.close(fd)
        if size > len(target):
            self.get(cid)  # verifies (and quarantines a corrupt file)
            raise LocalProtocolError(f"buffer of {len(target)} bytes too small for {cid}")
        if not cid.verify(target[:n]):
            self._corrupt(cid, path, f"content does not match ({n} bytes)")
        return n

    @staticmethod
    def _open(cid: Cid, path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlockNotFound(cid) from None

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
        self._write_atomic(self._pins / str(cid.to_v1()), name.encode("utf-8"), cid)

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
