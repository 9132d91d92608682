"""The testnet's network-namespace mode (root only): links that really delay and drop,
a relay to anvil, teardown on exit and Ctrl-C, and 3 rounds proven on chain with 100 ms
delay and 5% loss on every node link."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testnet import netns
from testnet.netns import NetnsError, NetnsLab
from tests.e2e.marks import four_rounds, needs_anvil

ROOT = Path(__file__).resolve().parents[2]


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the netns mode needs root"
    name = f"sorat{os.getpid()}"
    out = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return f"`ip netns add` fails here: {out.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


REASON = _netns_unavailable()
needs_netns = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_refuses_clearly_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="needs root"):
        NetnsLab(100, 5).open()
    with pytest.raises(NetnsError, match="loss"):
        NetnsLab(100, 100)


def in_ns(lab: NetnsLab, node: str, code: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [*lab.command_prefix(node), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def loopback_service() -> socket.socket:
    """A one-shot upper-casing echo on 127.0.0.1 that stands in for anvil."""
    upstream = socket.create_server(("127.0.0.1", 0))

    def echo_once() -> None:
        conn, _ = upstream.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    threading.Thread(target=echo_once, daemon=True).start()
    return upstream


def assert_relay_reaches_loopback(lab: NetnsLab, node: str, chain_override: str) -> None:
    """The relay on the root's link address reaches the loopback service (an upper-casing
    echo standing in for anvil)."""
    host, port = chain_override.split("//")[1].split(":")
    got = in_ns(
        lab,
        node,
        f"import socket; s = socket.create_connection(({host!r}, {port}), timeout=20);"
        "s.sendall(b'ping'); print(s.recv(10).decode())",
    )
    assert got.strip() == "PING"


@contextmanager
def echo_server(lab: NetnsLab, node: str, addr: str, serve: str) -> Iterator[None]:
    """A TCP server on ``addr``:7000 inside ``node``; ``serve`` handles the accepted ``c``."""
    server = subprocess.Popen(
        [
            *lab.command_prefix(node),
            sys.executable,
            "-c",
            f"import socket\ns = socket.create_server(({addr!r}, 7000)); print('up', "
            f"flush=True)\nc, _ = s.accept()\n{serve}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        yield
    finally:
        server.kill()
        server.wait()


@needs_netns
def test_links_delay_and_drop_and_everything_is_torn_down(tmp_path: Path) -> None:
    upstream = loopback_service()
    record = tmp_path / "netns.json"
    with NetnsLab(100, 5, record=record, seed=7) as lab:
        ov_a = lab.overrides("a", f"http://127.0.0.1:{upstream.getsockname()[1]}")
        ov_b = lab.overrides("b", "http://127.0.0.1:1")  # the relay is made once
        addr_a = ov_a[0].split("/")[2]
        addr_b = ov_b[0].split("/")[2]
        assert ov_a[0] == f"network.listen=/ip4/{addr_a}/tcp/0" and addr_a != addr_b
        assert ov_a[1] == ov_b[1] and ov_a[1].startswith(f"chain.url=http://{lab.hub}:")
        assert lab.leftovers(), "namespaces exist while the lab is open"
        assert_relay_reaches_loopback(lab, "a", ov_a[1])
        # node to node: every round trip crosses two impaired links (>= 2 x 100 ms)
        with echo_server(lab, "b", addr_b, "while d := c.recv(65536): c.sendall(d)"):
            out = in_ns(
                lab,
                "a",
                "import socket, time\n"
                f"s = socket.create_connection(({addr_b!r}, 7000), timeout=30)\n"
                "rtts = []\n"
                "for _ in range(10):\n"
                "    t = time.monotonic(); s.sendall(b'x'); s.recv(1)\n"
                "    rtts.append(time.monotonic() - t)\n"
                "s.sendall(b'y' * 300_000); n = 0\n"
                "while n < 300_000: n += len(s.recv(65536))\n"
                "print(min(rtts))",
            )
        assert float(out) >= 0.19, out
        prefix = lab.prefix
    assert lab.leftovers() == []
    assert not [
        n
        for n in subprocess.check_output(["ip", "-o", "link"], text=True).split()
        if n.startswith(prefix)
    ]
    data = json.loads(record.read_text())
    assert data["prefix"] == prefix and data["delay_ms"] == 100
    if data["impairment"] == "userspace":
        stats = data["link_stats"]
        assert stats["impaired"] > 200 and stats["dropped_loss"] > 0
        assert 0.01 < stats["dropped_loss"] / stats["impaired"] < 0.12, stats


@needs_netns
@needs_anvil
@pytest.mark.net
@pytest.mark.chain
def test_ctrl_c_tears_the_namespaces_down(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "testnet", "--netns", "--dir", str(run), "--no-dashboard"]
    cmd += ["--validators", "1", "--quorum", "1", "--trainers", "1", "--rounds", "1"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        # the namespaces exist once the chain is up; the interrupt lands while nodes start
        if line.startswith("chain:") or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    prefix = json.loads((run / "netns.json").read_text())["prefix"]
    assert re.fullmatch(r"sora[0-9a-f]{4}", prefix)
    names = subprocess.check_output(["ip", "netns", "list"], text=True)
    links = subprocess.check_output(["ip", "-o", "link"], text=True)
    assert prefix not in names and prefix not in links


@needs_netns
@needs_anvil
@pytest.mark.net
@pytest.mark.chain
@pytest.mark.slow
def test_three_rounds_are_proven_with_100ms_delay_and_5pct_loss(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "testnet", "--netns", "--delay-ms", "100", "--loss-pct", "5"]
    cmd += ["--dir", str(run), "--no-dashboard", "--rounds", "3"]
    cmd += ["--validators", "2", "--quorum", "2", "--trainers", "2", "--round-seconds", "90"]
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    proven = re.findall(r"round +(\d+): proven on chain", out.stdout)
    assert proven == ["1", "2", "3"], out.stdout
    data = json.loads((run / "netns.json").read_text())
    assert data["delay_ms"] == 100 and data["loss_pct"] == 5
    hub = data["hub"]
    # every node listened on its own namespace's address, never on loopback
    for name, (ns, addr) in data["namespaces"].items():
        assert ns == f"{data['prefix']}-{name}" and addr.rsplit(".", 1)[0] == hub.rsplit(".", 1)[0]
        status = json.loads((run / name / "status.json").read_text())
        assert status["listen"] and all(f"/ip4/{addr}/" in a for a in status["listen"]), status
    assert len(data["namespaces"]) == 6
    if data["impairment"] == "userspace":
        stats = data["link_stats"]
        assert stats["dropped_loss"] > 0.02 * stats["impaired"] > 0, stats
    report = json.loads((run / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert report["lineage"] == [3, 2, 1]
    assert "round times: mean" in out.stdout
    assert "100 ms one-way delay and 5% loss" in (run / "report.md").read_text()
    leftovers = subprocess.check_output(["ip", "netns", "list"], text=True)
    assert data["prefix"] not in leftovers


@needs_netns
def test_bridge_and_veth_links_without_impairment() -> None:
    """The kernel layout (veth pairs on a bridge, as used with netem) with plain links: this
    runs where the kernel lacks netem too."""
    upstream = loopback_service()
    with NetnsLab(0, 0, use_netem=True) as lab:
        ov = lab.overrides("a", f"http://127.0.0.1:{upstream.getsockname()[1]}")
        addr_b = lab.add_node("b")
        links = subprocess.check_output(["ip", "-o", "link"], text=True)
        assert f"{lab.prefix}br" in links and f"{lab.prefix}v1" in links
        assert_relay_reaches_loopback(lab, "a", ov[1])
        # namespace to namespace across the bridge: b listens, a connects
        with echo_server(lab, "b", addr_b, "c.sendall(c.recv(10))"):
            got = in_ns(
                lab,
                "a",
                f"import socket; s = socket.create_connection(({addr_b!r}, 7000), timeout=20);"
                "s.sendall(b'hello'); print(s.recv(10).decode())",
            )
        assert got.strip() == "hello"
    assert lab.leftovers() == []


@needs_netns
@needs_anvil
@pytest.mark.net
@pytest.mark.chain
@pytest.mark.slow
def test_partition_and_heal(tmp_path: Path) -> None:
    """A validator and a trainer are cut off from everyone else during round 2 (blackhole
    routes both ways; the chain stays reachable). The majority side still proves round 2
    without them; after the partition heals, the trainer's updates are aggregated again
    and every round is proven: nothing times out for good, nothing is lost."""
    from sorap2p.core.ids import SubnetId
    from sorap2p.node.audit import record_from_tx, recorded_event
    from testnet.cluster import Cluster, wait_for

    # the partition lands in the pause before round 2 opens
    spec = four_rounds(tmp_path, extra=("round.proof_timeout_s=120", "round.pause_s=5"))
    cut_off = ("validator-2", "trainer-2")
    with NetnsLab(0, 0, record=tmp_path / "netns.json") as lab, Cluster(spec, lab) as cluster:
        cluster.start_all()
        cluster.wait_log("aggregator", r"round 1 finalized", 600)
        majority = [n for n in cluster.nodes if n not in cut_off]
        lab.partition(majority, cut_off)
        cluster.wait_log("aggregator", r"round 2 (finalized|failed)", 600)
        lab.heal()
        log = (cluster.nodes["aggregator"].home.path / "node.log").read_text()
        assert "round 2 finalized" in log, "the majority side did not prove round 2"
        wait_for(lambda: not cluster.alive("aggregator"), 900, "the aggregator to finish")
        proc = cluster.nodes["aggregator"].proc
        assert proc is not None and proc.returncode == 0
        assert cluster.recorded_rounds() == [1, 2, 3, 4]
        assert cluster.client is not None
        subnet = SubnetId(spec.subnet).key

        def trainers_of(r: int) -> set[bytes]:
            assert cluster.client is not None
            ev = recorded_event(cluster.client, subnet, r)
            assert ev is not None
            record, _ = record_from_tx(cluster.client, bytes(ev["transactionHash"]))
            return set(record.trainers)

        isolated = cluster.nodes["trainer-2"].home.identity_key().peer_id.hashed
        assert isolated in trainers_of(1)
        assert isolated not in trainers_of(2)  # cut off: its update never reached the others
        assert isolated in trainers_of(3) | trainers_of(4)  # back after the heal
        assert cluster.client.lineage(subnet, 4) == [4, 3, 2, 1]
    assert lab.leftovers() == []
