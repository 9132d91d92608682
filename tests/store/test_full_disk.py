"""A full file system: puts raise `StoreFullError`, leave nothing partial, and work again
once space is freed. Runs on a real 4 MiB tmpfs (needs root to mount it; skipped otherwise)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sorap2p.core.cid import RAW, Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import LocalProtocolError
from sorap2p.store import Blockstore, StoreFullError, verify_store
from sorap2p.store.encrypted import decrypt_update, encrypt_update
from sorap2p.store.model import decode_state_dict, encode_state_dict
from sorap2p.store.params import ParameterStore

FS_BYTES = 4 << 20


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 4 MiB tmpfs mounted under ``tmp_path`` (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount/umount commands")
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run([umount, str(where)], check=True)


def _temp_leftovers(root: Path) -> list[Path]:
    return [p for p in (root / "blocks" / ".temp").iterdir()]


def _put(store: Blockstore, how: str, blob: bytes) -> list[tuple[Cid, bytes]]:
    """Put ``blob`` the way ``how`` says; the blocks stored (put_many adds a small one)."""
    cid = Cid.hash(blob, RAW)
    if how == "put":
        assert store.put(blob) == cid
    elif how == "put_block":
        store.put_block(cid, blob)
    elif how == "put_hashed":
        store.put_hashed(cid, blob)
    else:
        small = b"small " + blob[:1000]
        assert store.put_many([small, blob]) == [Cid.hash(small, RAW), cid]
        return [(Cid.hash(small, RAW), small), (cid, blob)]
    return [(cid, blob)]


# 300 kB blocks are hashed in one thread while written in another (put, put_block) or
# hashed ahead by the helper (put_many); 20 kB ones and helper_threads=0 go sequentially
@pytest.mark.parametrize(
    ("how", "block", "helpers"),
    [
        ("put", 300_000, 1),
        ("put", 20_000, 1),
        ("put", 300_000, 0),
        ("put_block", 300_000, 1),
        ("put_block", 20_000, 0),
        ("put_hashed", 300_000, 1),
        ("put_many", 300_000, 1),
        ("put_many", 100_000, 1),
        ("put_many", 300_000, 0),
    ],
)
def test_full_disk_raises_typed_error_and_leaves_nothing(
    tiny_fs: Path, how: str, block: int, helpers: int
) -> None:
    store = Blockstore(tiny_fs / "store", helper_threads=helpers)
    stored: list[tuple[Cid, bytes]] = []
    blob = b""
    with pytest.raises(StoreFullError) as exc:
        for _ in range(2 * FS_BYTES // block):
            blob = os.urandom(block)
            stored += _put(store, how, blob)
    err = exc.value
    failed = Cid.hash(blob, RAW)
    assert isinstance(err, LocalProtocolError)
    assert err.cid == failed and str(failed) in str(err) and str(store.root) in str(err)
    assert err.errno == errno.ENOSPC and isinstance(err.__cause__, OSError)
    assert len(stored) >= 3  # the disk did take blocks before it filled up
    assert not store.has(failed)
    assert _temp_leftovers(store.root) == []
    report = verify_store(store)
    if how == "put_many":  # the small block before the failing one got in
        stored.append((Cid.hash(b"small " + blob[:1000], RAW), b"small " + blob[:1000]))
    assert report.ok and report.checked == len(stored) and report.temp_files == 0
    for cid, data in stored:
        assert store.get(cid) == data

    # free space: the same put now works, and the store still verifies
    for cid, _ in stored[:3]:
        assert store.delete(cid)
    assert _put(store, how, blob)[-1] == (failed, blob)
    assert store.get(failed) == blob
    assert verify_store(store).ok
    store.close()


def _fill(store: Blockstore) -> None:
    """Fill the file system to the last page with 1-byte blocks (one page each)."""
    with pytest.raises(StoreFullError):
        for i in range(FS_BYTES // 4096 + 10):
            store.put(i.to_bytes(4, "big"))


def test_pins_and_store_creation_on_a_full_disk(tiny_fs: Path) -> None:
    store = Blockstore(tiny_fs / "store")
    root = store.put(b"a root")
    _fill(store)
    with pytest.raises(StoreFullError) as exc:
        store.pin(root, "x")
    assert exc.value.cid == root and not store.is_pinned(root)
    with pytest.raises(StoreFullError) as exc2:
        Blockstore(tiny_fs / "other")
    assert exc2.value.cid is None and "store metadata" in str(exc2.value)
    assert _temp_leftovers(store.root) == []
    assert verify_store(store).ok


def _flat_bytes(n: int) -> torch.Tensor:
    return torch.randn(n // 4)


@pytest.mark.parametrize("helpers", [1, 0])
def test_model_and_encrypted_update_surface_store_full(tiny_fs: Path, helpers: int) -> None:
    home = tiny_fs / "home"
    store = Blockstore(home / "blockstore", helper_threads=helpers)
    big = {"a.weight": _flat_bytes(FS_BYTES // 2), "b.weight": _flat_bytes(FS_BYTES // 2)}
    with pytest.raises(StoreFullError) as exc:
        encode_state_dict(store, big, chunk_size=256 << 10)
    assert exc.value.cid is not None and not store.has(exc.value.cid)
    assert _temp_leftovers(store.root) == [] and verify_store(store).ok

    me = IdentityKey.generate()
    with pytest.raises(StoreFullError):
        encrypt_update(store, _flat_bytes(FS_BYTES + 4), {me.peer_id: me.x25519_public}, b"u1")
    assert _temp_leftovers(store.root) == [] and verify_store(store).ok

    # what a failed encode left is unpinned: delete it and small ones fit again
    for cid in list(store.iter_cids()):
        store.delete(cid)
    small = {"w": torch.arange(1000, dtype=torch.float32)}
    root = encode_state_dict(store, small)
    assert torch.equal(decode_state_dict(store, root)["w"], small["w"])
    flat = _flat_bytes(300_000)
    env = encrypt_update(store, flat, {me.peer_id: me.x25519_public}, b"u2")
    assert torch.equal(decrypt_update(store, env, me)[0], flat)
    store.close()


def test_parameter_store_and_cli_verify_after_full_disk(tiny_fs: Path) -> None:
    from sorap2p.core.ids import RoundId

    home = tiny_fs / "home"
    params = ParameterStore(home)
    params.put_global(RoundId(1), {"w": torch.zeros(1000)})
    with pytest.raises(StoreFullError):
        params.put_global(RoundId(2), {"w": _flat_bytes(2 * FS_BYTES)})
    _fill(params.blocks)
    with pytest.raises(StoreFullError):  # the index json no longer fits either
        params.put_artifact("notes", os.urandom(3000))
    assert list((home / "params" / ".tmp").iterdir()) == []
    assert [g.round for g in params.history()] == [1]
    cli = subprocess.run(
        [sys.executable, "-m", "sorap2p.cli", "blocks", "verify", "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "0 corrupt, 0 missing" in cli.stdout
