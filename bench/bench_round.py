"""End-to-end round overhead: what a round costs beyond the trainers' local training.

    python bench/bench_round.py [--trainers 10] [--rounds 2] [--epochs 1] [--round-s 90]

Runs a real testnet (`testnet.cluster.Cluster`: anvil with the contracts, a bootstrap, an
aggregator, ``--validators`` validators with quorum 2, ``--trainers`` trainers on non-IID
digits shards, digits CNN, FedAvg; every node a separate process on 127.0.0.1). The
aggregator closes a round as soon as every trainer's update is in.

Per round, from the aggregator's gossip trace (``node.trace_gossip``) and status:

* ``wall_ms``: RoundOpen's ``opened_at`` -> the aggregator finishing the round (aggregate
  published, quorum proof recorded on chain);
* ``train_ms``: the slowest trainer's ``train_ms`` (its UpdateAnnounce: global-model fetch
  + local training + sealing, measured by the trainer; the round's critical path);
* ``overhead_ms`` = wall - train, ``ratio`` = wall / train: THE NUMBERS (medians over
  rounds 2.. when there are several: round 1 also pays every process's first torch calls).

Baseline in the same run (before the network starts): each shard's local training alone in
this process (``alone_ms``: the same model, epochs and batch size), and the slowest of them;
``ratio_vs_alone`` = wall / slowest alone. On a 2-core machine the trainers share the cores,
so ``train_ms`` > ``alone_ms`` is expected. Saves bench/results/bench_round.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sorap2p.core import messages as m  # noqa: E402
from sorap2p.core.codec import decode  # noqa: E402
from sorap2p.core.topics import TopicKind  # noqa: E402
from sorap2p.learn.data import load_dataset, trainer_shard  # noqa: E402
from sorap2p.learn.train import TrainConfig, local_train  # noqa: E402
from sorap2p.node import work  # noqa: E402
from sorap2p.node.services import TRACE_FILE, read_trace  # noqa: E402
from testnet.cluster import Cluster, ClusterSpec, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def training_alone(args: argparse.Namespace) -> list[float]:
    """ms of local training of each trainer's shard, one after another, in this process."""
    ctx = work.model_context("digits_cnn")
    splits = load_dataset("digits")
    vec = ctx.spec.flatten(ctx.module.state_dict()).clone()
    tc = TrainConfig(epochs=args.epochs, batch_size=16, lr=0.1, momentum=0.5, num_threads=1)
    warm = trainer_shard(splits.train, 0, args.trainers, 0.5, 0)
    local_train(ctx.fresh(), ctx.spec, vec, warm, tc, torch.Generator().manual_seed(0))  # warm-up
    out = []
    for i in range(args.trainers):
        shard = trainer_shard(splits.train, i, args.trainers, 0.5, 0)
        gen = torch.Generator().manual_seed(i)
        started = time.perf_counter()
        local_train(ctx.fresh(), ctx.spec, vec, shard, tc, gen)
        out.append((time.perf_counter() - started) * 1000)
    return out


def run_network(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    spec = ClusterSpec(
        root=root,
        validators=args.validators,
        trainers=args.trainers,
        quorum=2,
        rounds=args.rounds,
        round_s=args.round_s,
        epochs=args.epochs,
        log_level="warning",
        extra=("round.pause_s=0.5",),
        per_node={"aggregator": ("node.trace_gossip=true",)},
    )
    with Cluster(spec) as cluster:
        started = time.monotonic()
        cluster.start_all()
        print(f"  {len(cluster.nodes)} processes up in {time.monotonic() - started:.1f} s")
        wait_for(lambda: not cluster.alive("aggregator"), args.timeout, "the last round")
        rounds = cluster.status("aggregator")["role_status"]["rounds"]
        proven = cluster.recorded_rounds()
        trace = (cluster.nodes["aggregator"].home.path / TRACE_FILE).read_bytes()
    opens: dict[int, m.RoundOpen] = {}
    trains: dict[int, dict[bytes, int]] = {}
    for direction, kind, payload in read_trace(trace):
        if kind is TopicKind.ROUNDS and direction == ">":
            ro = decode(payload, m.RoundOpen)
            opens[ro.round.number] = ro
        elif kind is TopicKind.UPDATES and direction == "<":
            a = decode(payload, m.UpdateAnnounce)
            trains.setdefault(a.round.number, {})[a.signer.raw] = a.train_ms
    out = []
    for r in rounds:
        n = r["round"]
        if not r["ok"] or n not in opens or n not in trains:
            out.append({"round": n, "ok": False, "reason": r["reason"]})
            continue
        wall = r["at"] - opens[n].opened_at
        train = max(trains[n].values())
        out.append(
            {
                "round": n,
                "ok": True,
                "proven": n in proven,
                "updates": len(trains[n]),
                "wall_ms": wall,
                "train_ms": train,
                "overhead_ms": wall - train,
                "ratio": wall / train,
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainers", type=int, default=10)
    ap.add_argument("--validators", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--round-s", type=float, default=90.0, help="round deadline (upper bound)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--dir", type=Path, default=None, help="keep the run folder here")
    args = ap.parse_args()

    print(f"== baseline: local training alone, {args.trainers} shards, {args.epochs} epoch(s)")
    alone = training_alone(args)
    slowest_alone = max(alone)
    print(f"  alone_ms: median {statistics.median(alone):.0f}, slowest {slowest_alone:.0f}")
    print(f"== network: {args.trainers} trainers, {args.validators} validators, anvil")
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        root = args.dir or Path(tmp) / "net"
        rounds = run_network(args, root)
    ok = [r for r in rounds if r["ok"]]
    print(
        f"{'round':>5} {'updates':>7} {'wall ms':>8} {'train ms':>8} {'overhead':>8} {'ratio':>6}"
    )
    for r in rounds:
        if not r["ok"]:
            print(f"{r['round']:>5} failed: {r['reason']}")
            continue
        print(
            f"{r['round']:>5} {r['updates']:>7} {r['wall_ms']:>8} {r['train_ms']:>8} "
            f"{r['overhead_ms']:>8} {r['ratio']:>6.2f}"
        )
    summary: dict[str, Any] = {
        "trainers": args.trainers,
        "validators": args.validators,
        "epochs": args.epochs,
        "alone_ms": [round(a, 1) for a in alone],
        "slowest_alone_ms": round(slowest_alone, 1),
        "rounds": rounds,
    }
    # round 1 also pays the processes' first torch calls: the steady state is rounds 2..
    steady = [r for r in ok if r["round"] > 1] or ok
    summary["steady_rounds"] = [r["round"] for r in steady]
    ok = steady
    if ok:
        summary["median_overhead_ms"] = statistics.median(r["overhead_ms"] for r in ok)
        summary["median_ratio"] = statistics.median(r["ratio"] for r in ok)
        summary["median_ratio_vs_alone"] = statistics.median(r["wall_ms"] for r in ok) / (
            slowest_alone
        )
        print(
            f"median overhead {summary['median_overhead_ms']:.0f} ms; round wall / slowest "
            f"trainer's train_ms = {summary['median_ratio']:.2f}x; / slowest training alone "
            f"= {summary['median_ratio_vs_alone']:.2f}x"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_round.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {RESULTS / 'bench_round.json'}")
    return 0 if all(r["ok"] for r in rounds) and len(rounds) == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
