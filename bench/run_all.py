"""Run every benchmark and write one JSON report: ``python bench/run_all.py [--quick]``.

Each benchmark measures its own baseline in the same run and prints ratios; this runner
collects their JSON results (bench/results/*.json) into bench/results/all.json and prints
one table of the headline numbers. ``--quick`` uses small sizes (a smoke run, not a
measurement to quote)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

BENCHES = {
    "aggregate": (
        ["bench_aggregate.py"],
        ["--n", "8", "--d", "1000000", "--repeat", "1", "--skip-flower"],
    ),
    "store": (["bench_store.py"], ["--mb", "8", "--repeat", "1"]),
    "net": (["bench_net.py"], ["--mib", "16"]),
    "gas": (["bench_gas.py"], ["--timed", "3"]),
    # a real testnet: 10 trainers (quick: 4) as processes, anvil, digits CNN
    "round": (["bench_round.py"], ["--trainers", "4", "--rounds", "1"]),
}


def headlines(obj: object, path: str = "") -> list[tuple[str, float]]:
    """Every number in a result whose key path names a ratio (its headline figures)."""
    out: list[tuple[str, float]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += headlines(v, f"{path}.{k}" if path else str(k))
    elif (
        isinstance(obj, int | float)
        and not isinstance(obj, bool)
        and any(word in path.lower() for word in ("ratio", "speedup", "vs_", "_x"))
    ):
        out.append((path, float(obj)))
    return out


def print_table(benches: dict[str, dict[str, object]], per_bench: int = 12) -> None:
    """One line per headline ratio of each benchmark (baseline measured in the same run)."""
    print(f"{'bench':<10} {'figure':<64} {'ratio':>9}")
    for name, entry in benches.items():
        rows = headlines(entry.get("results", {}))
        status = "ok" if entry.get("exit_code") == 0 else f"exit {entry.get('exit_code')}"
        if not rows:
            print(f"{name:<10} {'(no ratios reported; ' + status + ')':<64} {'':>9}")
        for path, value in rows[:per_bench]:
            print(f"{name:<10} {path[:64]:<64} {value:>9.3g}")
        if len(rows) > per_bench:
            print(f"{name:<10} {f'... {len(rows) - per_bench} more in all.json':<64}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    report: dict[str, object] = {"started": time.time(), "quick": args.quick, "benches": {}}
    failures = 0
    for name, (script, quick_args) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script[0]), *(quick_args if args.quick else [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        started_wall = time.time() - 1
        proc = subprocess.run(cmd, check=False)
        entry: dict[str, object] = {
            "exit_code": proc.returncode,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        fresh = [
            p
            for p in [*RESULTS.glob(f"bench_{name}.json"), *RESULTS.glob(f"{name}-*.json")]
            if p.stat().st_mtime >= started_wall
        ]
        if fresh:
            newest = max(fresh, key=lambda p: p.stat().st_mtime)
            entry["results"] = json.loads(newest.read_text())
        failures += proc.returncode != 0
        report["benches"][name] = entry  # type: ignore[index]
    (RESULTS / "all.json").write_text(json.dumps(report, indent=1, default=str))
    print_table(report["benches"])  # type: ignore[arg-type]
    print(f"wrote {RESULTS / 'all.json'}; {failures} benchmark(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
