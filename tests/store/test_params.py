"""The parameter store and the ``blocks`` / ``model`` commands, on a real home directory."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from sorap2p.cli import main
from sorap2p.core.cid import Cid
from sorap2p.core.errors import IntegrityError
from sorap2p.core.ids import PeerId, RoundId
from sorap2p.store import Blockstore, collect_garbage, verify_store
from sorap2p.store.params import ParameterStore, RecordNotFoundError, summarize


def _sd(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(20, 30, generator=g), "b": torch.randn(20, generator=g)}


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


def test_globals_updates_summaries_rollback(tmp_path: Path) -> None:
    params = ParameterStore(tmp_path, clock=Clock())
    assert params.head() is None and params.latest() is None and params.history() == []
    recs = [params.put_global(RoundId(r), _sd(r)) for r in range(3)]
    assert [r.round for r in params.history()] == [0, 1, 2]
    assert params.latest() == recs[2] == params.head()
    assert all(torch.equal(params.load_global(RoundId(1))[k], v) for k, v in _sd(1).items())
    stats = params.summary(RoundId(1))
    w = _sd(1)["w"].double()
    assert stats["w"].numel == 600
    assert stats["w"].norm == pytest.approx(float(w.norm()))
    assert stats["w"].mean == pytest.approx(float(w.mean()))
    assert stats["w"].std == pytest.approx(float(w.std(correction=0)))
    assert summarize({"e": torch.empty(0)})["e"].numel == 0

    peer = PeerId.from_public_key(b"\x01" * 32)
    upd = params.blocks.put(b"an encrypted update envelope stands here")
    params.add_update(RoundId(2), peer, upd, meta={"samples": 120})
    assert [(u.peer, u.root, u.meta) for u in params.updates(RoundId(2))] == [
        (str(peer), str(upd), {"samples": 120})
    ]
    assert params.updates(RoundId(1)) == []

    back = params.rollback(RoundId(1))
    assert params.head() == back and params.latest() == recs[2]
    assert [e["reason"] for e in params.head_log()] == ["new", "new", "new", "rollback"]
    assert all(torch.equal(params.load_global()[k], v) for k, v in _sd(1).items())
    with pytest.raises(RecordNotFoundError):
        params.rollback(RoundId(9))
    # everything recorded is pinned: gc removes nothing of it
    assert collect_garbage(params.blocks, now=lambda: 1e12).removed == 0
    assert params.verify_global(RoundId(0)) == recs[0]


def test_integrity_hash_catches_a_swapped_model(tmp_path: Path) -> None:
    params = ParameterStore(tmp_path)
    params.put_global(RoundId(0), _sd(0))
    params.put_global(RoundId(1), _sd(1))
    path = params.index / "globals" / f"{1:020d}.json"
    text = path.read_text().replace(
        params.get_global(RoundId(1)).root, params.get_global(RoundId(0)).root
    )
    path.write_text(text)
    with pytest.raises(IntegrityError):
        params.verify_global(RoundId(1))


def test_add_global_from_fetched_dag_and_artifacts(tmp_path: Path) -> None:
    params = ParameterStore(tmp_path)
    from sorap2p.store.model import encode_state_dict

    root = encode_state_dict(params.blocks, _sd(4))
    rec = params.add_global(RoundId(4), root, meta={"from": "peer"})
    assert rec.root == str(root) and rec.meta == {"from": "peer"}
    a1 = params.put_artifact("optimizer.pt", b"v1 bytes", rnd=RoundId(4))
    a2 = params.put_artifact("optimizer.pt", os.urandom(3 << 20))
    assert (a1.version, a2.version) == (1, 2)
    assert params.get_artifact("optimizer.pt", 1) == b"v1 bytes"
    assert len(params.get_artifact("optimizer.pt")) == 3 << 20
    with pytest.raises(RecordNotFoundError):
        params.get_artifact("optimizer.pt", 3)
    with pytest.raises(Exception, match="artifact name"):
        params.put_artifact("../evil", b"x")


def run_cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(list(argv))
    return code, buf.getvalue()


def test_blocks_cli(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    home = str(tmp_path / "home")
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom((2 << 20) + 9))
    code = main(["blocks", "add", str(src), "--home", home])
    out = capfdbinary.readouterr().out.decode()
    assert code == 0
    root = out.strip()
    assert root.startswith("bafybei")
    assert main(["blocks", "add", str(src), "--home", home, "--profile", "v0-2015"]) == 0
    assert capfdbinary.readouterr().out.decode().startswith("Qm")
    assert main(["blocks", "cat", root, "--home", home]) == 0
    assert capfdbinary.readouterr().out == src.read_bytes()
    car = tmp_path / "f.car"
    assert main(["blocks", "export-car", root, str(car), "--home", home]) == 0
    home2 = str(tmp_path / "home2")
    assert main(["blocks", "import-car", str(car), "--home", home2]) == 0
    assert capfdbinary.readouterr().out.decode().split()[-1] == root
    assert main(["blocks", "verify", "--home", home2]) == 0
    store = Blockstore(Path(home2) / "blockstore")
    assert [p.cid for p in store.pins()] == [Cid.parse(root)]
    victim = next(c for c in store.iter_cids() if store.size(c) > 1000)
    store.path_of(victim).write_bytes(b"rot")
    assert main(["blocks", "verify", "--home", home2]) == 1
    out = capfdbinary.readouterr().out.decode()
    assert f"corrupt: {victim}" in out and "missing" in out
    store.put(b"unpinned")
    assert main(["blocks", "gc", "--home", home2]) == 0
    assert "removed 1 blocks" in capfdbinary.readouterr().out.decode()
    assert not verify_store(store).ok  # gc does not resurrect the corrupt block


def test_model_cli(tmp_path: Path) -> None:
    params = ParameterStore(tmp_path)
    for r in range(3):
        params.put_global(RoundId(r), _sd(r))
    code, out = run_cli("model", "history", "--home", str(tmp_path))
    assert code == 0 and len(out.splitlines()) == 4 and out.splitlines()[3].startswith("*")
    code, out = run_cli("model", "rollback", "--round", "1", "--home", str(tmp_path))
    assert code == 0 and "head is now round 1" in out
    code, out = run_cli("model", "history", "--home", str(tmp_path))
    assert out.splitlines()[2].startswith("*")
    assert (
        run_cli("model", "export", "--round", "2", str(tmp_path / "m.pt"), "--home", str(tmp_path))[
            0
        ]
        == 0
    )
    loaded = torch.load(tmp_path / "m.pt")
    assert all(torch.equal(loaded[k], v) for k, v in _sd(2).items())
    code, out = run_cli(
        "model", "export", "--round", "2", str(tmp_path / "m.car"), "--home", str(tmp_path)
    )
    assert code == 0 and (tmp_path / "m.car").stat().st_size > 20 * 30 * 4
    assert (
        main(["model", "export", "--round", "7", str(tmp_path / "x.pt"), "--home", str(tmp_path)])
        == 2
    )
