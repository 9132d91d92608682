"""`python -m testnet` (or ./testnet/run.sh): run a local sorap2p network and report on it.

Defaults: 1 bootstrap, 1 aggregator, 3 validators (quorum 2), 5 trainers on non-IID shards
of scikit-learn's digits, digits CNN, FedAvg, 10 rounds, everything on 127.0.0.1 with a
local anvil chain. Ctrl-C stops every process it started."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from testnet.cluster import Cluster, ClusterSpec
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
    p.add_argument("--round-seconds", type=float, default=60.0)
    p.add_argument("--model", default="digits_cnn")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID skew")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many s")
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
        round_s=args.round_seconds,
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
    cluster = Cluster(spec)
    code = 1
    try:
        with cluster:
            print(f"chain: anvil at {cluster.chain.url}, contracts deployed", flush=True)
            cluster.start_all()
            print(
                f"nodes: {len(cluster.nodes)} processes up; bootstrap {cluster.bootstrap_addr}",
                flush=True,
            )
            code = watch(cluster, args.timeout)
            data = collect(cluster)
            path = write_report(cluster, data, time.monotonic() - started)
            print(f"report: {path}", flush=True)
    except KeyboardInterrupt:
        print("\ntestnet: interrupted; stopping every process", flush=True)
        return 130
    return code


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
    parts = next((e for e in agg if e.get("round") == r), {})
    acc = f"{max(accs):.3f}" if accs else "?"
    return (
        f"round {r:>3}: proven on chain; held-out accuracy {acc}; model {parts.get('model', '?')}"
    )


if __name__ == "__main__":
    sys.exit(main())
