"""The flatfs block store on a real directory: layout, reads verified, corruption, crashes."""

from __future__ import annotations

import array
import base64
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sorap2p.core.cid import DAG_CBOR, RAW, Cid
from sorap2p.core.errors import IntegrityError, SoraError
from sorap2p.store import (
    BlockNotFound,
    Blockstore,
    CorruptBlock,
    block_key,
    collect_garbage,
    dagcbor,
    import_bytes,
    iter_dag,
    verify_store,
)
from sorap2p.store.blockstore import MAX_BLOCK_SIZE


def test_layout_is_kubo_flatfs(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid = store.put(b"hello")
    assert (tmp_path / "blocks" / "SHARDING").read_text() == (
        "/repo/flatfs/shard/v1/next-to-last/2\n"
    )
    key = base64.b32encode(cid.multihash).decode().rstrip("=")
    assert key.startswith("CIQ") and key == block_key(cid)
    path = tmp_path / "blocks" / key[-3:-1] / f"{key}.data"
    assert path.read_bytes() == b"hello"
    # the codec is not part of the key: the same bytes as dag-cbor share the file
    assert store.has(Cid.hash(b"hello", DAG_CBOR))


def test_put_get_has_size_delete_iterate_stats(tmp_path: Path) -> None:
    store = Blockstore(tmp_path, fsync=True)
    blobs = [os.urandom(n) for n in (0, 1, 100, 5000)]
    cids = [store.put(b) for b in blobs]
    for cid, blob in zip(cids, blobs, strict=True):
        assert store.has(cid)
        assert store.get(cid) == blob
        assert store.size(cid) == len(blob)
    assert sorted(store.iter_cids()) == sorted(Cid.hash(b, RAW) for b in blobs)
    stats = store.stats()
    assert (stats.blocks, stats.bytes, stats.temp_files) == (4, sum(map(len, blobs)), 0)
    assert store.delete(cids[2]) and not store.delete(cids[2])
    assert not store.has(cids[2])
    with pytest.raises(BlockNotFound) as exc:
        store.get(cids[2])
    assert str(cids[2]) in str(exc.value) and isinstance(exc.value, SoraError)
    with pytest.raises(BlockNotFound):
        store.size(cids[2])


def test_put_block_verifies(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid = Cid.hash(b"right")
    with pytest.raises(IntegrityError):
        store.put_block(cid, b"wrong")
    assert not store.has(cid)
    store.put_block(cid, b"right")
    assert store.get(cid) == b"right"


def test_get_into_reads_into_caller_buffer(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    blob = os.urandom(3000)
    cid = store.put(blob)
    buf = bytearray(4000)
    assert store.get_into(cid, memoryview(buf)[500:]) == 3000
    assert bytes(buf[500:3500]) == blob
    with pytest.raises(SoraError):
        store.get_into(cid, bytearray(10))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "extend"])
def test_corrupt_block_is_reported_moved_aside_never_returned(tmp_path: Path, damage: str) -> None:
    store = Blockstore(tmp_path)
    blob = os.urandom(2048)
    cid = store.put(blob)
    path = store.path_of(cid)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[100] ^= 1
    elif damage == "truncate":
        data = data[:1000]
    elif damage == "empty":
        data = bytearray()
    else:
        data += b"x"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBlock) as exc:
        store.get(cid)
    assert exc.value.cid == cid and str(cid) in str(exc.value)
    assert isinstance(exc.value, IntegrityError)
    assert exc.value.quarantined is not None and Path(exc.value.quarantined).read_bytes() == data
    assert not path.exists() and not store.has(cid)
    with pytest.raises(BlockNotFound):
        store.get(cid)
    store.put(blob)  # a later put repairs it
    assert store.get(cid) == blob


def test_get_into_detects_corruption(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid = store.put(b"a" * 100)
    store.path_of(cid).write_bytes(b"b" * 100)
    with pytest.raises(CorruptBlock):
        store.get_into(cid, bytearray(100))
    assert not store.has(cid)


def test_verify_reports_corrupt_and_missing(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    res = import_bytes(store, os.urandom(3 << 20))  # 3 raw leaves + root
    store.pin(res.root, "file")
    assert verify_store(store).ok
    leaves = [c for c in iter_dag(store, res.root) if c.codec == RAW]
    store.path_of(leaves[0]).write_bytes(b"garbage")
    store.delete(leaves[1])
    report = verify_store(store)
    assert not report.ok
    assert len(report.corrupt) == 1 and str(leaves[0]) in report.corrupt[0]
    # the corrupt one was moved aside, so the pin now misses both
    assert {m.split()[0] for m in report.missing} == {str(leaves[0]), str(leaves[1])}


def test_pins_and_garbage_collection(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    kept = import_bytes(store, os.urandom(2 << 20) + b"k")
    dropped = import_bytes(store, os.urandom(2 << 20) + b"d")
    loose = store.put(b"loose")
    manifest = store.put(dagcbor.encode({"model": kept.root, "n": 1}), DAG_CBOR)
    store.pin(manifest, "a manifest linking to the kept file")
    assert [p.cid for p in store.pins()] == [manifest]
    clock = [0.0]
    # blocks newer than the start of the collection are kept (a writer may pin them next)
    result = collect_garbage(store, now=lambda: clock[0])
    assert result.removed == 0
    clock[0] = 1e12
    result = collect_garbage(store, now=lambda: clock[0])
    assert result.removed == 1 + 4  # the loose block and the unpinned file (3 leaves + root)
    assert not store.has(loose) and not store.has(dropped.root)
    assert all(store.has(c) for c in iter_dag(store, manifest))
    assert len(list(iter_dag(store, manifest))) == 1 + 4
    assert store.unpin(manifest) and not store.is_pinned(manifest)
    assert collect_garbage(store, now=lambda: clock[0]).removed == 5
    assert store.stats().blocks == 0


def _hammer(root: str, seed: int) -> None:
    store = Blockstore(Path(root))
    blobs = [hashlib.sha256(str(i).encode()).digest() * 4096 for i in range(40)]
    order = blobs if seed % 2 else blobs[::-1]
    for _ in range(5):
        for blob in order:
            store.put(blob)


def test_two_processes_writing_the_same_blocks(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), s)) for s in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Blockstore(tmp_path)
    report = verify_store(store)
    assert report.ok and report.checked == 40 and report.temp_files == 0


WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sorap2p.store import Blockstore
    store = Blockstore(Path(sys.argv[1]), fsync=False)
    for i in range(3):
        store.put(os.urandom(1 << 20))
    real_replace = os.replace
    def stalled_replace(src, dst):
        print("renaming", flush=True)
        sys.stdin.read()  # parked here until the test kills us
        real_replace(src, dst)
    os.replace = stalled_replace
    store.put(os.urandom(1 << 20))
    """
)


def test_sigkill_mid_write_leaves_a_clean_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home / "blockstore")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"renaming\n"  # the temp file is written, not yet renamed
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    store = Blockstore(home / "blockstore")
    report = verify_store(store)
    assert report.ok and report.checked == 3 and report.temp_files == 1
    cli = subprocess.run(
        [sys.executable, "-m", "sorap2p.cli", "blocks", "verify", "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "0 corrupt, 0 missing" in cli.stdout
    assert store.clean_temp(0, now=lambda: 1e12) == 1


# -- the fast paths: helper-thread hashing, put_many, put_hashed ------------------------
@pytest.mark.parametrize("helpers", [0, 1, 2])
def test_put_many_matches_put_in_order(tmp_path: Path, helpers: int) -> None:
    store = Blockstore(tmp_path / "a", helper_threads=helpers)
    # large (helper-hashed) and small (inline) blocks interleaved, one repeated
    blobs = [os.urandom(n) for n in (300_000, 10, 70_000, 0, 1 << 20)] + [b"x" * 300_000] * 2
    cids = store.put_many(iter(blobs))
    assert cids == [Cid.hash(b, RAW) for b in blobs]
    assert all(store.get(c) == b for c, b in zip(cids, blobs, strict=True))
    assert store.put_many(blobs, DAG_CBOR, ahead=0) == [Cid.hash(b, DAG_CBOR) for b in blobs]
    assert store.put_many([]) == []
    other = Blockstore(tmp_path / "b", helper_threads=helpers)
    assert [other.put(b) for b in blobs] == cids
    assert sorted(store.iter_cids()) == sorted(other.iter_cids())
    assert store.stats().temp_files == 0
    store.close()
    store.close()  # idempotent; the store stays usable and restarts its helpers
    assert store.put(blobs[0]) == cids[0]
    with Blockstore(tmp_path / "c") as third:
        assert third.put_many(blobs) == cids


def test_put_many_stops_at_the_first_error(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    good = [os.urandom(300_000) for _ in range(3)]

    def blocks() -> Iterator[bytes]:
        yield from good
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.put_many(blocks())
    # the blocks hashed ahead but not written yet are dropped; nothing partial is left
    assert {c for c in store.iter_cids()} <= {Cid.hash(b) for b in good}
    assert store.stats().temp_files == 0
    with pytest.raises(SoraError):
        store.put_many([b"ok", bytes(MAX_BLOCK_SIZE + 1)])
    with pytest.raises(SoraError):
        store.put_many([b"ok"], codec=0x1234)
    assert verify_store(store).ok


def test_large_put_block_verifies_while_writing(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    blob = os.urandom(300_000)
    cid = Cid.hash(blob)
    with pytest.raises(IntegrityError):
        store.put_block(cid, blob[:-1] + b"?")
    assert not store.has(cid) and store.stats().temp_files == 0
    store.put_block(cid, blob)
    store.put_block(cid, memoryview(blob))  # already there: checked, not rewritten
    with pytest.raises(IntegrityError):
        store.put_block(cid, blob[::-1])
    assert store.get(cid) == blob
    with pytest.raises(SoraError):
        store.put_block(Cid.hash(bytes(MAX_BLOCK_SIZE + 1)), bytes(MAX_BLOCK_SIZE + 1))


def test_put_hashed_and_typed_buffers(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    floats = array.array("f", range(100_000))  # a non-byte buffer: 400 kB
    cid = store.put(memoryview(floats))
    assert cid == Cid.hash(floats.tobytes()) and store.get(cid) == floats.tobytes()
    blob = os.urandom(5000)
    store.put_hashed(Cid.hash(blob, DAG_CBOR), blob)
    assert store.get(Cid.hash(blob, RAW)) == blob
    # a wrong CID given to put_hashed is caught by the next read, never returned
    wrong = Cid.hash(b"something else")
    store.put_hashed(wrong, blob)
    with pytest.raises(CorruptBlock):
        store.get(wrong)


def test_oversized_file_is_corrupt_not_loaded(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid = store.put(b"small")
    with open(store.path_of(cid), "r+b") as f:
        f.truncate(MAX_BLOCK_SIZE + 1)  # sparse: cheap
    with pytest.raises(CorruptBlock, match="exceeds"):
        store.get(cid)
    assert not store.has(cid)


def test_threads_putting_the_same_blocks(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    blobs = [hashlib.sha256(bytes([i])).digest() * 10_000 for i in range(8)]  # 320 kB each

    def put_all(i: int) -> list[Cid]:  # half the threads batch, half put one by one
        mine = blobs[i % 2 :]
        return store.put_many(mine) if i % 4 < 2 else [store.put(b) for b in mine]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(put_all, range(8)))
    assert all(r == [Cid.hash(b) for b in blobs[i % 2 :]] for i, r in enumerate(results))
    report = verify_store(store)
    assert report.ok and report.checked == 8 and report.temp_files == 0


def _put_in_child(store: Blockstore, blob: bytes) -> None:
    assert store.put(blob) == Cid.hash(blob)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_helpers_restart_in_a_forked_child(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    store.put(os.urandom(300_000))  # the parent's helper thread is running now
    blob = os.urandom(300_000)
    child = multiprocessing.get_context("fork").Process(target=_put_in_child, args=(store, blob))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert store.get(Cid.hash(blob)) == blob


@pytest.mark.parametrize("size", [100, 300_000])
def test_putting_a_present_block_keeps_the_file_and_touches_it(tmp_path: Path, size: int) -> None:
    store = Blockstore(tmp_path)
    blob = os.urandom(size)
    cid = store.put(blob)
    path = store.path_of(cid)
    os.utime(path, (1, 1))
    before = path.stat().st_ino
    for again in (store.put, lambda b: store.put_many([b])):
        again(blob)
        assert path.stat().st_ino == before and path.stat().st_mtime > 1
        os.utime(path, (1, 1))
    assert store.stats().temp_files == 0


@pytest.mark.parametrize("helpers", [0, 1])
def test_get_many_yields_verified_blocks_in_order(tmp_path: Path, helpers: int) -> None:
    store = Blockstore(tmp_path, helper_threads=helpers)
    blobs = [os.urandom(n) for n in (300_000, 5, 100_000, 1 << 20)]
    cids = store.put_many(blobs)
    ident = Cid(b"\x01\x55\x00\x03abc")  # an identity CID: its digest is the block
    assert list(store.get_many([*cids, ident, cids[0]], ahead=1)) == [*blobs, b"abc", blobs[0]]
    assert list(store.get_many([])) == []

    # a corrupt and a missing block raise when their turn comes, after the good ones
    store.path_of(cids[2]).write_bytes(b"\0" * 100_000)
    got = []
    with pytest.raises(CorruptBlock) as exc:
        for data in store.get_many(cids):
            got.append(data)
    assert got == blobs[:2] and exc.value.cid == cids[2] and not store.has(cids[2])
    got.clear()
    with pytest.raises(BlockNotFound):
        for data in store.get_many([cids[0], cids[2]]):
            got.append(data)
    assert got == blobs[:1]
    oversized = store.put(b"will grow")
    with open(store.path_of(oversized), "r+b") as f:
        f.truncate(MAX_BLOCK_SIZE + 1)
    with pytest.raises(CorruptBlock, match="exceeds"):
        list(store.get_many([oversized]))
    # a consumer that stops early leaves no helper work behind
    gen = store.get_many([cids[0], cids[3], cids[0]])
    assert next(gen) == blobs[0]
    gen.close()
    store.close()
