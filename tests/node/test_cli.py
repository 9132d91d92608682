"""The command line, run as real processes from the installed entry point."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sorap2p.cli import main
from sorap2p.core.crypto import IdentityKey
from sorap2p.node.home import Home

SORAP2P = [sys.executable, "-m", "sorap2p.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SORAP2P, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("init", "id", "node"):
        assert cmd in out.stdout
    node_help = run_cli("node", "--help").stdout
    assert "--role" in node_help and "--listen" in node_help and "--bootstrap" in node_help


def test_init_and_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n1"
    assert main(["init", "--home", str(home), "--role", "validator", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    for name in ("node.key", "chain.key", "config.toml"):
        mode = stat.S_IMODE((home / name).stat().st_mode)
        assert mode == 0o600, name
    assert main(["id", "--home", str(home), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["peer_id"] == created["peer_id"]
    assert again["eth_address"] == created["eth_address"]
    assert again["peer_id"].startswith("12D3KooW")
    assert Home(home).load_config({}).node.role == "validator"
    # refuses to overwrite keys without --force
    assert main(["init", "--home", str(home)]) == 2
    assert "already holds a node key" in capsys.readouterr().err


def test_keystore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "k"
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    assert (
        main(["init", "--home", str(home), "--keystore", "--password-file", str(pw), "--json"]) == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert not (home / "chain.key").exists()
    keystore = json.loads((home / "chain.keystore.json").read_text())
    assert "crypto" in keystore
    assert main(["id", "--home", str(home), "--json", "--password-file", str(pw)]) == 0
    assert json.loads(capsys.readouterr().out)["eth_address"] == created["eth_address"]
    pw.write_text("wrong")
    assert main(["id", "--home", str(home), "--password-file", str(pw)]) == 2
    assert "cannot decrypt" in capsys.readouterr().err


def test_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "c"
    assert main(["init", "--home", str(home)]) == 0
    capsys.readouterr()
    assert main(["node", "--home", str(home), "--set", "learn.epochs=zero"]) == 2
    assert "learn.epochs" in capsys.readouterr().err
    assert main(["id", "--home", str(tmp_path / "missing")]) == 2
    assert "sorap2p init" in capsys.readouterr().err


@pytest.mark.net
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_node_bootstrap_prints_multiaddr_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    home = tmp_path / "b"
    assert main(["init", "--home", str(home), "--role", "bootstrap"]) == 0
    peer = str(Home(home).identity_key().peer_id)
    proc = subprocess.Popen(
        [
            *SORAP2P,
            "node",
            "--home",
            str(home),
            "--role",
            "bootstrap",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # blocks until the node is listening
        assert line.startswith("/ip4/127.0.0.1/tcp/"), line
        assert line.endswith(f"/p2p/{peer}")
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_identity_key_file_is_libp2p_identity(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    ident = home.init(Home(tmp_path).load_config({}), node_seed=b"1" * 32)
    assert home.identity_key() == IdentityKey(b"1" * 32)
    assert str(ident.peer_id) == "12D3KooWEfY2TmhEWp1scTkNTgGcB6sBdaeicFJXJjeBmUpFMyg8"
