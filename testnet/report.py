"""The testnet's data and report: rounds proven on chain (proof transaction, participants),
the accuracy curve, round times, reputations, lineage and each node's live state.

`RunReader` builds one JSON document from a run folder (each node's ``status.json`` under
``<run>/<node>/``) and, while the chain answers, from the chain itself; the report at the
end of a run and the live dashboard (testnet/dashboard.py) both use it."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sorap2p.core.ids import SubnetId
from sorap2p.node.home import Home

if TYPE_CHECKING:
    from sorap2p.chain.client import ChainClient
    from testnet.cluster import Cluster

ROLE_ORDER = ("boot", "aggregator", "validator", "trainer")


def node_names(root: Path) -> list[str]:
    """The node folders of a run (each holds a node home), bootstrap first, then the
    aggregator, validators and trainers."""
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and Home(p).exists()]

    def key(name: str) -> tuple[int, int, str]:
        role, _, idx = name.partition("-")
        rank = ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)
        return rank, int(idx) if idx.isdigit() else 0, name

    return sorted(names, key=key)


def read_status(root: Path, name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((root / name / "status.json").read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def chain_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a JSON-RPC endpoint answers ``eth_chainId`` (a finished run's chain is gone)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    req = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


class RunReader:
    """Reads a run folder and (optionally) the chain into one JSON-ready dict.

    Facts about a recorded round never change, so each is read from the chain once."""

    def __init__(self, root: Path, client: ChainClient | None = None, subnet: str = "") -> None:
        self.root = root
        self.client = client
        self.subnet = subnet
        self._rounds: dict[int, dict[str, Any]] = {}

    def _chain_round(self, subnet: bytes, r: int) -> dict[str, Any]:
        from sorap2p.node.audit import record_from_tx, recorded_event

        cached = self._rounds.get(r)
        if cached is not None:
            return cached
        assert self.client is not None
        info = self.client.round_info(subnet, r)
        out: dict[str, Any] = {
            "parent": info.parent_round,
            "recorded_at": info.recorded_at,
            "validator_set_version": info.validator_set_version,
            "proof_tx": None,
            "participants": None,
        }
        ev = recorded_event(self.client, subnet, r)
        if ev is not None:
            tx = bytes(ev["transactionHash"])
            record, _ = record_from_tx(self.client, tx)
            out["proof_tx"] = "0x" + tx.hex()
            out["participants"] = len(record.trainers)
            out["block"] = int(ev["blockNumber"])
        self._rounds[r] = out
        return out

    def collect(self) -> dict[str, Any]:
        names = node_names(self.root)
        statuses = {name: read_status(self.root, name) for name in names}
        accuracy: dict[int, float] = {}
        for name, st in statuses.items():
            if name.startswith("validator"):
                for c in st.get("role_status", {}).get("checks", []):
                    if (
                        isinstance(c.get("accuracy"), int | float)
                        and c["accuracy"] == c["accuracy"]
                    ):
                        accuracy[c["round"]] = max(accuracy.get(c["round"], 0.0), c["accuracy"])
        agg = statuses.get("aggregator", {}).get("role_status", {}).get("rounds", [])
        by_round = {e["round"]: e for e in agg if isinstance(e, dict) and "round" in e}
        rounds: list[dict[str, Any]] = []
        reputations: list[dict[str, Any]] = []
        lineage: list[int] = []
        if self.client is not None:
            subnet = SubnetId(self.subnet).key
            latest = self.client.latest_round(subnet)
            recorded = [r for r in range(1, latest + 1) if self.client.round_recorded(subnet, r)]
            for r in recorded:
                entry = by_round.get(r, {})
                rounds.append(
                    {
                        "round": r,
                        "accuracy": accuracy.get(r),
                        "finished_at_ms": entry.get("at"),
                        "model": entry.get("model"),
                        **self._chain_round(subnet, r),
                    }
                )
            for name in names:
                if not name.startswith("trainer"):
                    continue
                peer = Home(self.root / name).identity_key().peer_id
                value, last = self.client.reputation(subnet, peer.hashed)
                reputations.append(
                    {"node": name, "peer": str(peer), "reputation": value / 1e6, "last_round": last}
                )
            lineage = self.client.lineage(subnet, rounds[-1]["round"]) if rounds else []
        return {
            "source": "chain" if self.client is not None else "status",
            "subnet": self.subnet,
            "rounds": rounds,
            "unproven": [
                {"round": r, "ok": e.get("ok"), "reason": e.get("reason")}
                for r, e in sorted(by_round.items())
                if r not in {x["round"] for x in rounds}
            ],
            "accuracy": [{"round": r, "accuracy": a} for r, a in sorted(accuracy.items())],
            "reputations": reputations,
            "lineage": lineage,
            "nodes": [node_summary(name, statuses[name]) for name in names],
        }


def node_summary(name: str, st: dict[str, Any]) -> dict[str, Any]:
    rounds = st.get("rounds") or {}
    return {
        "node": name,
        "role": st.get("role"),
        "peer": st.get("peer_id"),
        "peers": st.get("peers"),
        "rounds_ok": rounds.get("ok"),
        "last_round": rounds.get("last"),
        "errors": len(st.get("errors") or []),
        "updated_ms": st.get("time_ms"),
    }


def collect(cluster: Cluster) -> dict[str, Any]:
    """The report's data for a cluster whose chain is up."""
    return RunReader(cluster.root, cluster.client, cluster.spec.subnet).collect()


def svg_curve(
    points: list[tuple[int, float]], width: int = 480, height: int = 200, label: str = "round"
) -> str:
    if not points:
        return "<p>no data</p>"
    xs = [p[0] for p in points]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)

    def sx(x: float) -> float:
        return 40 + (x - x0) / (x1 - x0) * (width - 60)

    def sy(y: float) -> float:
        return height - 30 - y * (height - 50)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"/>' for x, y in points)
    grid = "".join(
        f'<line x1="40" x2="{width - 20}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#ddd"/>'
        f'<text x="5" y="{sy(v) + 4:.1f}" font-size="10">{v:.0%}</text>'
        for v in (0.0, 0.5, 0.9, 0.95, 1.0)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{grid}'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{line}"/>{dots}'
        f'<text x="{width / 2 - 60:.0f}" y="{height - 5}" font-size="11">{label}</text></svg>'
    )


def write_report(cluster: Cluster, data: dict[str, Any], wall_s: float) -> Path:
    root = cluster.root
    (root / "report.json").write_text(json.dumps(data, indent=1, default=str))
    pts = [(r["round"], r["accuracy"]) for r in data["rounds"] if r["accuracy"] is not None]
    (root / "accuracy.svg").write_text(svg_curve(pts))
    ends = [(r["round"], r["finished_at_ms"]) for r in data["rounds"] if r["finished_at_ms"]]
    durations = [(b[0], (b[1] - a[1]) / 1000) for a, b in itertools.pairwise(ends)]
    longest = max((d for _, d in durations), default=1.0) or 1.0
    (root / "round-times.svg").write_text(
        svg_curve(
            [(r, d / longest) for r, d in durations],
            label=f"round time (fraction of the longest, {longest:.1f} s)",
        )
    )
    s = cluster.spec
    lines = [
        "# sorap2p testnet report",
        "",
        f"{s.validators} validators (quorum {s.quorum}), {s.trainers} trainers, "
        f"model `{s.model}` on `{s.dataset}` (Dirichlet alpha {s.alpha}), strategy `{s.strategy}`; "
        f"wall time {wall_s:.0f} s.",
        "",
        *network_lines(root),
        "## Accuracy (validators' held-out data)",
        "",
        "![accuracy](accuracy.svg)",
        "",
        "## Round times (from one round's end to the next)",
        "",
        "![round times](round-times.svg)",
        "",
        "## Rounds proven on chain",
        "",
        "| round | accuracy | participants | proof transaction | model CID |",
        "|---|---|---|---|---|",
    ]
    for r in data["rounds"]:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "?"
        tx = r.get("proof_tx") or "?"
        lines.append(
            f"| {r['round']} | {acc} | {r.get('participants', '?')} | `{tx}` | `{r['model']}` |"
        )
    lines += [
        "",
        f"Lineage (latest round back to the first): {data['lineage']}",
        "",
        "## Trainer reputation (on chain)",
        "",
        "| node | peer | reputation |",
        "|---|---|---|",
    ]
    for rep in sorted(data["reputations"], key=lambda x: -x["reputation"]):
        lines.append(f"| {rep['node']} | `{rep['peer'][:16]}…` | {rep['reputation']:.4f} |")
    lines += [
        "",
        "## Rewards",
        "",
        "Credited by the subnet owner each round in proportion to positive reputation "
        "deltas, then claimed by each trainer (ETH):",
        "",
        "| node | claimed |",
        "|---|---|",
    ]
    for name, wei in sorted(cluster.claimed.items()):
        lines.append(f"| {name} | {wei / 1e18:.6f} |")
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def network_lines(root: Path) -> list[str]:
    """The network conditions of a --netns run (its netns.json), else loopback."""
    try:
        net = json.loads((root / "netns.json").read_text())
    except (FileNotFoundError, ValueError):
        return ["Network: every node on 127.0.0.1.", ""]
    return [
        f"Network: each node in its own network namespace on {net['subnet']}; "
        f"{net['delay_ms']:g} ms one-way delay and {net['loss_pct']:g}% loss on every node link "
        f"({net['impairment']}).",
        "",
    ]
