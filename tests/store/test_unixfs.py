"""UnixFS import/export, and root CIDs equal to Helia's importer under both profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sorap2p.core.cid import DAG_PB, RAW
from sorap2p.store import Blockstore, cat, import_bytes, import_file, iter_dag
from sorap2p.store.dagpb import UnixFSData, decode_node
from sorap2p.store.unixfs import V0_2015, V1_2025, Profile, get_profile, iter_file
from tests.store.interop import helia_cids

MiB = 1 << 20
KiB = 1 << 10
V1_SIZES = [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 17]
V0_SIZES = [0, 1, 256 * KiB - 1, 256 * KiB, 256 * KiB + 1, 2 * MiB + 5]


def _files(tmp_path: Path, sizes: list[int], tag: str) -> list[Path]:
    out = []
    for n in sizes:
        p = tmp_path / f"{tag}-{n}.bin"
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


@pytest.mark.parametrize(("profile", "sizes"), [(V1_2025, V1_SIZES), (V0_2015, V0_SIZES)])
def test_round_trip(tmp_path: Path, profile: Profile, sizes: list[int]) -> None:
    store = Blockstore(tmp_path / "store")
    for path in _files(tmp_path, sizes, profile.name):
        result = import_file(store, path, profile)
        assert result.size == path.stat().st_size
        assert cat(store, result.root) == path.read_bytes()
        assert result.root.version == profile.cid_version


def test_known_cids() -> None:
    # kubo and Helia print these for the empty file under each profile
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = Blockstore(Path(d))
        assert str(import_bytes(store, b"", V1_2025).root) == (
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        )
        assert str(import_bytes(store, b"", V0_2015).root) == (
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
        )


def test_balanced_tree_shape(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    profile = Profile("tiny", 1, True, 10, 3)
    data = bytes(range(95))  # 10 leaves -> 4 parents -> 2 -> root
    root = import_bytes(store, data, profile).root
    assert cat(store, root) == data
    node = decode_node(store.get(root))
    meta = UnixFSData.decode(node.data or b"")
    assert meta.filesize == 95 and meta.blocksizes == (90, 5)
    # Tsize is the size of every block under the link; the lone trailing leaf is wrapped twice
    for link in node.links:
        assert link.tsize == sum(len(store.get(c)) for c in iter_dag(store, link.hash))
    assert len(list(iter_dag(store, node.links[1].hash))) == 3
    assert sum(1 for c in iter_dag(store, root) if c.codec == RAW) == 10
    assert sum(1 for c in iter_dag(store, root) if c.codec == DAG_PB) == 4 + 2 + 1


def test_profiles_by_name() -> None:
    assert get_profile("v1-2025") is V1_2025 and get_profile("unixfs-v0-2015") is V0_2015
    with pytest.raises(Exception, match="unknown UnixFS profile"):
        get_profile("v2")


def test_export_streams_pieces(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    data = os.urandom(3 * MiB)
    pieces = list(iter_file(store, import_bytes(store, data).root))
    assert [len(p) for p in pieces] == [MiB] * 3


@pytest.mark.parametrize(
    ("profile", "sizes"),
    [("unixfs-v1-2025", V1_SIZES), ("unixfs-v0-2015", V0_SIZES)],
)
def test_helia_parity(tmp_path: Path, profile: str, sizes: list[int]) -> None:
    files = _files(tmp_path, sizes, profile)
    expected = helia_cids(profile, files)
    store = Blockstore(tmp_path / "store")
    ours = [str(import_file(store, f, get_profile(profile)).root) for f in files]
    assert ours == expected


@pytest.mark.parametrize(
    "spec",
    [
        # multi-level trees with the profiles' leaf kinds, at sizes a test can afford
        (100, 4, True, 1),
        (100, 3, False, 0),
        (16, 1024, True, 1),
        (100, 174, False, 0),
        (7, 2, True, 1),
    ],
)
def test_helia_parity_multi_level(tmp_path: Path, spec: tuple[int, int, bool, int]) -> None:
    chunk, links, raw_leaves, version = spec
    if links <= 8:  # three levels, and a full second level
        sizes = [chunk * links * links + 1, chunk * links * (links + 1), chunk * links + 1]
    else:  # one past a full node, and a few nodes (keeps the leaf count small)
        sizes = [chunk * links + 1, chunk * links * 3 + 7]
    sizes.append(3 * chunk)
    files = _files(tmp_path, sizes, "m")
    expected = helia_cids(f"custom:{chunk}:{links}:{int(raw_leaves)}:{version}", files)
    store = Blockstore(tmp_path / "store")
    profile = Profile("custom", version, raw_leaves, chunk, links)
    ours = [str(import_file(store, f, profile).root) for f in files]
    assert ours == expected
    for f, cid in zip(files, ours, strict=True):
        from sorap2p.core.cid import Cid

        assert cat(store, Cid.parse(cid)) == f.read_bytes()


@pytest.mark.slow
def test_helia_parity_v0_multi_level_real_profile(tmp_path: Path) -> None:
    # 175 chunks of 256 KiB: the first size at which unixfs-v0-2015 builds a second level
    files = _files(tmp_path, [175 * 256 * KiB + 3], "big")
    expected = helia_cids("unixfs-v0-2015", files)
    store = Blockstore(tmp_path / "store")
    assert [str(import_file(store, files[0], V0_2015).root)] == expected
