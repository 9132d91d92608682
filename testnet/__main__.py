"""`python -m testnet` (or ./testnet/run.sh): run a local sorap2p network and report on it.

Defaults: 1 bootstrap, 1 aggregator, 3 validators (quorum 2), 5 trainers on non-IID shards
of scikit-learn's digits, digits CNN, FedAvg, 10 rounds, everything on 127.0.0.1 with a
local anvil chain. A live dashboard is served on 127.0.0.1 (testnet/dashboard.py). With
--netns (root only) every node runs in its own network namespace behind delayed, lossy links
(testnet/netns.py). Ctrl-C (or SIGTERM) stops every process and removes every namespace and
link it created."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from testnet.cluster import Cluster, ClusterSpec
from testnet.dashboard import Dashboard
from testnet.netns import NetnsError, NetnsLab
from testnet.report import collect, write_report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="testnet", description=__doc__)
    p.add_argument(
        "--dir", type=Path, default=None, help="run folder (default testnet/runs/<time>)"
    )
    p.add_argument("--validators", type=int, default=3)
    p.add_argument("--quorum", type=int, default=2)
    p.add_argument("--trainers", type=int, default=5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--round-seconds",
        type=float,
        default=None,
        help="round deadline (default 60 s, 90 s with --netns)",
    )
    p.add_argument("--model", default="digits_cnn")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID skew")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many s")
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=8700,
        help="live dashboard on 127.0.0.1:PORT (0: a free one; a busy port falls back to 0)",
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    p.add_argument(
        "--netns",
        action="store_true",
        help="root only: each node in its own network namespace, links delayed and lossy",
    )
    p.add_argument("--delay-ms", type=float, default=100.0, help="--netns: one-way link delay")
    p.add_argument("--loss-pct", type=float, default=5.0, help="--netns: packet loss per link")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for every node",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    root = args.dir or Path("testnet/runs") / time.strftime("%Y%m%d-%H%M%S")
    spec = ClusterSpec(
        root=root.resolve(),
        validators=args.validators,
        trainers=args.trainers,
        quorum=args.quorum,
        rounds=args.rounds,
        round_s=args.round_seconds or (90.0 if args.netns else 60.0),
        model=args.model,
        dataset=args.dataset,
        strategy=args.strategy,
        alpha=args.alpha,
        extra=tuple(args.set),
    )
    print(
        f"testnet: {spec.validators} validators (quorum {spec.quorum}), {spec.trainers} "
        f"trainers, {spec.rounds} rounds; run folder {spec.root}",
        flush=True,
    )
    started = time.monotonic()
    code = 1
    dashboard: Dashboard | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        with contextlib.ExitStack() as stack:
            lab = None
            if args.netns:
                spec.root.mkdir(parents=True, exist_ok=True)
                lab = stack.enter_context(
                    NetnsLab(args.delay_ms, args.loss_pct, record=spec.root / "netns.json")
                )
                how = "tc netem" if lab.use_netem else "userspace link emulator (no netem here)"
                print(
                    f"netns: one namespace per node ({lab.prefix}-*) on {lab.net}; "
                    f"{args.delay_ms:g} ms delay, {args.loss_pct:g}% loss on every node link "
                    f"({how})",
                    flush=True,
                )
            cluster = stack.enter_context(Cluster(spec, lab))
            print(f"chain: anvil at {cluster.chain.url}, contracts deployed", flush=True)
            if not args.no_dashboard:
                dashboard = stack.enter_context(
                    start_dashboard(spec.root, args.dashboard_port, cluster.chain.url)
                )
                print(f"dashboard: {dashboard.url}", flush=True)
            cluster.start_all()
            print(
                f"nodes: {len(cluster.nodes)} processes up; bootstrap {cluster.bootstrap_addr}",
                flush=True,
            )
            code = watch(cluster, args.timeout)
            data = collect(cluster)
            path = write_report(cluster, data, time.monotonic() - started)
            print(f"report: {path}", flush=True)
            print(round_times(data), flush=True)
    except NetnsError as exc:
        print(f"testnet: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\ntestnet: interrupted; stopping every process", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if dashboard is not None:
        print(
            f"dashboard stopped; serve this run again: python -m testnet.dashboard --dir {root}",
            flush=True,
        )
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def round_times(data: dict[str, Any]) -> str:
    """One line: the time from one proven round to the next (the first round includes
    the network's start-up and is not counted)."""
    ends = [r["finished_at_ms"] for r in data["rounds"] if r.get("finished_at_ms")]
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(ends)]
    if not gaps:
        return "round times: fewer than two proven rounds"
    return (
        f"round times: mean {statistics.fmean(gaps):.1f} s, "
        f"median {statistics.median(gaps):.1f} s, max {max(gaps):.1f} s over {len(gaps)} rounds"
    )


def start_dashboard(root: Path, port: int, chain_url: str) -> Dashboard:
    try:
        return Dashboard(root, port, chain_url)
    except OSError:  # the port is taken (another run): any free one
        return Dashboard(root, 0, chain_url)


def watch(cluster: Cluster, timeout: float) -> int:
    seen: set[int] = set()
    waited: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        for r in cluster.recorded_rounds():
            if r in seen:
                continue
            waited[r] = waited.get(r, 0) + 1
            if "?" in progress_line(cluster, r) and waited[r] < 5:
                continue  # the nodes' status files lag the chain by up to a second
            announce(cluster, r, seen)
        if not cluster.alive("aggregator"):
            proc = cluster.nodes["aggregator"].proc
            rc = proc.returncode if proc is not None else None
            for r in cluster.recorded_rounds():
                if r not in seen:
                    announce(cluster, r, seen)
            claimed = cluster.claim_all()
            cluster.claimed = claimed
            print(
                "rewards claimed by trainers (ETH): "
                + ", ".join(f"{n} {v / 1e18:.6f}" for n, v in sorted(claimed.items())),
                flush=True,
            )
            print(
                f"aggregator finished (exit code {rc}); {len(seen)} rounds proven on chain",
                flush=True,
            )
            return 0 if rc == 0 and len(seen) >= cluster.spec.rounds else 1
    print("testnet: timed out", flush=True)
    return 1


def announce(cluster: Cluster, r: int, seen: set[int]) -> None:
    """Print a newly proven round and credit its trainers' rewards."""
    seen.add(r)
    print(progress_line(cluster, r), flush=True)
    cluster.rewards[r] = cluster.credit_round(r)


def progress_line(cluster: Cluster, r: int) -> str:
    accs = []
    for name in cluster.nodes:
        if name.startswith("validator"):
            checks = cluster.status(name).get("role_status", {}).get("checks", [])
            accs += [c["accuracy"] for c in checks if c.get("round") == r]
    agg = cluster.status("aggregator").get("role_status", {}).get("rounds", [])
    parts: dict[str, Any] = next((e for e in agg if e.get("round") == r), {})
    acc = f"{max(accs):.3f}" if accs else "?"
    return (
        f"round {r:>3}: proven on chain; held-out accuracy {acc}; model {parts.get('model', '?')}"
    )


if __name__ == "__main__":
    sys.exit(main())
