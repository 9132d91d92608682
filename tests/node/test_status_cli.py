"""`sorap2p status`: from status.json, from a live status API, for a stopped node, and end
to end against a real `sorap2p node` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from sorap2p.cli import main
from sorap2p.node.http import serve_http
from sorap2p.node.status import STATUS_FILE
from tests.net.helpers_net import eventually

SORAP2P = [sys.executable, "-m", "sorap2p.cli"]

DOC: dict[str, Any] = {
    "peer_id": "12D3KooWstatus",
    "role": "validator",
    "subnet": "digits",
    "pid": os.getpid(),
    "time_ms": 1,
    "status_url": None,
    "listen": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWstatus"],
    "peers": 4,
    "machine": {"state": "VOTED", "handled": {}, "ignored": {}, "transitions": 3},
    "rounds": {"ok": 2, "failed": 1, "last": 3},
    "membership": {"aggregator": "12D3KooWaggregatoraggregator", "members": 5, "validators": ["a"]},
    "chain": {"attached": True, "validator_set_version": 7, "validator_set_size": 2},
    "gossip": {"accepted": 9, "rejected": 0, "ignored": 1, "published": 2},
    "errors": [
        {"ts": 1.0, "level": "warning", "logger": "sorap2p.x", "msg": "first problem"},
        {"ts": 2.0, "level": "error", "logger": "sorap2p.y", "msg": "latest problem"},
    ],
    "errors_total": {"warning": 1, "error": 1},
}


def write(home: Path, doc: dict[str, Any], age_s: float = 0.0) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = home / STATUS_FILE
    path.write_text(json.dumps(doc))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))


def test_no_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--home", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "no status.json" in err and "has not run here" in err


def test_garbage_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.joinpath(STATUS_FILE).write_text("{not json")
    assert main(["status", "--home", str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_running_node_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, DOC)
    assert main(["status", "--home", str(tmp_path), "--errors", "1"]) == 0
    out = capsys.readouterr().out
    assert "running (pid" in out and "NOT RUNNING" not in out
    for text in (
        "12D3KooWstatus",
        "validator",
        "digits",
        "peers:       4",
        "machine VOTED, last round 3, finished ok 2 / failed 1",
        "accepted 9, rejected 0, ignored 1",
        "attached, validator set v7",
        "error 1, warning 1",
        "latest problem",
    ):
        assert text in out, text
    assert "first problem" not in out  # --errors 1


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, DOC)
    assert main(["status", "--home", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["running"] is True and doc["peer_id"] == DOC["peer_id"]


def test_stale_file_means_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, DOC, age_s=60)
    assert main(["status", "--home", str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert "NOT RUNNING" in captured.out and "12D3KooWstatus" in captured.out
    assert "node not running (last status written 60 s ago)" in captured.err


def test_dead_pid_means_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    write(tmp_path, {**DOC, "pid": child.pid})
    assert main(["status", "--home", str(tmp_path), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["running"] is False


async def test_fetches_from_the_status_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = {**DOC, "peers": 11, "blockstore": {"blocks": 3, "bytes": 3 * 1024 * 1024, "pins": 1}}

    async def document() -> dict[str, Any]:
        return live

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, document)
        url = f"http://127.0.0.1:{port}"
        write(tmp_path, {**DOC, "status_url": url})
        code = await trio.to_thread.run_sync(main, ["status", "--home", str(tmp_path)])
        nursery.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert code == 0
    assert f"from {url}" in out
    assert "peers:       11" in out  # the live document, not the file's
    assert "blockstore:  3 blocks, 3.0 MiB, 1 pins" in out


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "http://10.1.2.3:80", "ftp://localhost:1"])
def test_unreachable_or_foreign_url_falls_back_to_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    write(tmp_path, {**DOC, "status_url": url})
    assert main(["status", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "did not answer" in out and "peers:       4" in out


# --------------------------------------------------------------------------- end to end


@pytest.mark.net
async def test_status_of_a_real_node_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real `sorap2p node` process serving the API; `sorap2p status` runs in-process (in a
    worker thread) to keep the test to one interpreter start-up."""
    home = tmp_path / "boot"
    assert main(["init", "--home", str(home), "--role", "bootstrap", "--subnet", "clitest"]) == 0
    capsys.readouterr()
    proc = await trio.lowlevel.open_process(
        [
            *SORAP2P,
            "node",
            "--home",
            str(home),
            "--set",
            "status.listen=127.0.0.1:0",
            "--set",
            "node.log_level=warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def api_up() -> bool:
            try:
                return bool(json.loads((home / STATUS_FILE).read_text()).get("status_url"))
            except (OSError, ValueError):
                return False

        await eventually(api_up, within=90)
        code = await trio.to_thread.run_sync(main, ["status", "--home", str(home)])
        out = capsys.readouterr().out
        assert code == 0
        assert f"running (pid {proc.pid}" in out and "role:        bootstrap" in out
        assert "from http://127.0.0.1:" in out and "blockstore:" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await proc.wait()
    assert proc.returncode == 0
    code = await trio.to_thread.run_sync(main, ["status", "--home", str(home), "--json"])
    assert code == 3
    assert json.loads(capsys.readouterr().out)["running"] is False
