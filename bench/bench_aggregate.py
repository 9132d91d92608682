"""Aggregation throughput against the memory-bandwidth time of reading the updates once.

    python bench/bench_aggregate.py                 # 50 updates x 10M float32 (2 GB), ~1 min
    python bench/bench_aggregate.py --n 20 --d 1000000 --repeat 2   # a quick look
    python bench/bench_aggregate.py --naive     # adds unblocked torch.median / torch.sort

Baseline, measured in the same run: the best time of one read pass over the (n, d) matrix
(``matrix.sum()``, one thread). Each line prints the operation's best time and its ratio to
that baseline, with the goal from issue F5. Flower's own ``aggregate`` (flwr, the ``bench``
extra) is timed on the same rows when flwr is installed, else skipped. Results are saved as
JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sorap2p.learn.strategies import (
    FedAvg,
    FLTrust,
    Krum,
    Median,
    RobustFLTrust,
    RobustMultiKrum,
    StreamingMean,
    TrimmedMean,
    UpdateBatch,
)

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="number of updates (rows)")
    ap.add_argument("--d", type=int, default=10_000_000, help="parameters per update")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is kept)")
    ap.add_argument("--slow-repeat", type=int, default=1, help="repetitions of the slow ones")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--f", type=int, default=0, help="Krum's f (default: n // 5)")
    ap.add_argument("--beta", type=float, default=0.1, help="trimmed-mean fraction per side")
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--skip-sorting", action="store_true", help="skip median / trimmed mean")
    ap.add_argument(
        "--naive",
        action="store_true",
        help="also time torch.median / torch.sort over dim 0 (the unblocked way; slow)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, d = args.n, args.d
    f = args.f or max(n // 5, 1)

    print(f"{n} updates x {d:,} float32 = {n * d * 4 / 2**30:.2f} GiB, {args.threads} thread(s)")
    gen = torch.Generator().manual_seed(0)
    matrix = torch.empty(n, d, dtype=torch.float32)
    for i in range(n):
        matrix[i].normal_(generator=gen)
    weights = [float(10 + i) for i in range(n)]
    batch = UpdateBatch.create(matrix, weights, [f"update-{i:05d}".encode() for i in range(n)])
    shuffled = UpdateBatch.create(
        matrix, weights, [f"update-{(i * 7919) % n:05d}-{i}".encode() for i in range(n)]
    )

    results: dict[str, Any] = {
        "n": n,
        "d": d,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seconds": {},
        "ratio_to_read": {},
        "goals": {},
    }

    def record(name: str, seconds: float, goal: str, ratio_goal: float | None = None) -> None:
        ratio = seconds / read
        results["seconds"][name] = seconds
        results["ratio_to_read"][name] = ratio
        results["goals"][name] = goal
        verdict = ""
        if ratio_goal is not None:
            verdict = "  ok" if ratio <= ratio_goal else "  MISSED"
        print(f"{name:<34} {seconds * 1e3:9.1f} ms  {ratio:6.2f}x read   goal {goal}{verdict}")

    read = best_of(lambda: matrix.sum(), args.repeat)
    results["seconds"]["read_baseline"] = read
    gbs = n * d * 4 / read / 1e9
    print(f"{'read baseline (matrix.sum())':<34} {read * 1e3:9.1f} ms  ({gbs:.1f} GB/s)")

    fedavg = FedAvg()
    t = best_of(lambda: fedavg.aggregate(batch), args.repeat)
    record("fedavg (rows in key order)", t, "<= 1.5x read", 1.5)
    t = best_of(lambda: fedavg.aggregate(shuffled), args.repeat)
    record("fedavg (rows not in key order)", t, "(gathers blocks)")

    def streaming() -> torch.Tensor:
        acc = StreamingMean(d)
        for i in range(n):
            acc.add(matrix[i], weights[i], i.to_bytes(4, "big"))
        return acc.result()

    t = best_of(streaming, args.repeat)
    record("streaming accumulation", t, "<= 2.5x read", 2.5)

    flower_time = None
    if not args.skip_flower:
        try:
            from flwr.server.strategy.aggregate import aggregate as flwr_aggregate
        except ImportError:
            print("flwr not installed: Flower comparison skipped (pip install 'sorap2p[bench]')")
        else:
            rows = [([matrix[i].numpy()], int(weights[i])) for i in range(n)]
            flower_time = best_of(lambda: flwr_aggregate(rows), args.slow_repeat)
            ours = results["seconds"]["fedavg (rows in key order)"]
            record(
                "flower aggregate()", flower_time, f"ours >= 5x faster: {flower_time / ours:.1f}x"
            )
            results["fedavg_speedup_vs_flower"] = flower_time / ours
            ref = fedavg.aggregate(batch).delta
            got = torch.from_numpy(flwr_aggregate(rows)[0])
            print(f"{'':<34} max |ours - flower| = {float((ref - got).abs().max()):.2e}")

    krum = Krum(f)
    t = best_of(lambda: krum.aggregate(batch), args.slow_repeat)
    record(f"krum (f={f}, one Gram matrix)", t, "<= 10x read", 10)
    robust = RobustMultiKrum()
    t = best_of(lambda: robust.aggregate(batch), args.slow_repeat)
    record("robust multi-krum (Gram + mean)", t, "<= 10x read", 10)
    with_ref = UpdateBatch.create(matrix, weights, batch.keys, matrix[0])  # server's delta
    for strategy in (FLTrust(), RobustFLTrust(reference_weight=100.0)):
        t = best_of(lambda s=strategy: s.aggregate(with_ref), args.slow_repeat)
        record(f"{strategy.name} (norms, dots, mean)", t, "<= 5x read", 5)

    if not args.skip_sorting:
        t = best_of(lambda: Median().aggregate(batch), args.slow_repeat)
        record("coordinate-wise median", t, "<= 50x read", 50)
        t = best_of(lambda: TrimmedMean(args.beta).aggregate(batch), args.slow_repeat)
        record(f"trimmed mean (beta={args.beta})", t, "<= 50x read", 50)
        if args.naive:
            trim = int(args.beta * n)
            t = best_of(lambda: torch.median(matrix, dim=0), args.slow_repeat)
            record("naive torch.median(dim=0)", t, "(reference)")
            t = best_of(
                lambda: torch.sort(matrix, dim=0).values[trim : n - trim].mean(0), args.slow_repeat
            )
            record("naive sort + trimmed mean", t, "(reference)")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"aggregate-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
