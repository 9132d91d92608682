"""The testnet's report: rounds, accuracy curve (SVG), round times, reputations, proofs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from sorap2p.core.ids import PeerId, SubnetId
from testnet.cluster import Cluster


def collect(cluster: Cluster) -> dict[str, Any]:
    assert cluster.client is not None
    subnet = SubnetId(cluster.spec.subnet).key
    rounds = []
    accuracy: dict[int, float] = {}
    for name in cluster.nodes:
        if name.startswith("validator"):
            for c in cluster.status(name).get("role_status", {}).get("checks", []):
                accuracy[c["round"]] = max(accuracy.get(c["round"], 0.0), c["accuracy"])
    agg = cluster.status("aggregator").get("role_status", {}).get("rounds", [])
    times = {e["round"]: e.get("at") for e in agg}
    for r in cluster.recorded_rounds():
        info = cluster.client.round_info(subnet, r)
        rounds.append(
            {
                "round": r,
                "parent": info.parent_round,
                "accuracy": accuracy.get(r),
                "finished_at_ms": times.get(r),
                "model": next((e.get("model") for e in agg if e["round"] == r), None),
            }
        )
    reputations = []
    for name, node in cluster.nodes.items():
        if not name.startswith("trainer"):
            continue
        peer: PeerId = node.home.identity_key().peer_id
        value, last = cluster.client.reputation(subnet, peer.hashed)
        reputations.append(
            {"node": name, "peer": str(peer), "reputation": value / 1e6, "last_round": last}
        )
    return {
        "rounds": rounds,
        "reputations": reputations,
        "lineage": cluster.client.lineage(subnet, rounds[-1]["round"]) if rounds else [],
    }


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
        "| round | accuracy | model CID |",
        "|---|---|---|",
    ]
    for r in data["rounds"]:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "?"
        lines.append(f"| {r['round']} | {acc} | `{r['model']}` |")
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
