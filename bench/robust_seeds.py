"""The Byzantine matrix across seeds: does a robust rule stay within 2 points everywhere?

    python bench/robust_seeds.py                         # seeds 0..4, 4 attacks, 20 rounds
    python bench/robust_seeds.py --seeds 2 --attacks sign_flip --honest-only
    python bench/robust_seeds.py --param margin=3 --param clip=1.5 --root-size 200

For each seed: the federation of ``tests/learn/test_federation.py`` (10 non-IID digits
trainers, Dirichlet 0.5, 2 local epochs) with that seed's own partition, model init and
training streams, and its own Byzantine set of 3 trainers drawn from the seed (`--byzantine`
overrides it). Each attack replaces the Byzantine trainers' deltas; the strategy's *clean
run* is the same strategy and root set with no Byzantine trainer (the baseline, measured in
the same run). Printed per seed and attack: the drop of the mean test accuracy over the last
3 rounds vs the clean run (positive = worse), how often Byzantine rows were kept and honest
rows dropped. ``--honest-only`` adds the run that removes exactly the Byzantine rows before
the strategy (what a perfect filter gets: the drop no rule can avoid). One thread, runs one
after another; ~2-3 s per 20-round run on one core. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from sorap2p.learn.attacks import make_attack
from sorap2p.learn.data import label_histogram
from sorap2p.learn.simulate import (
    FederationConfig,
    RoundRecord,
    WithoutTrainers,
    attack_transform,
    prepare,
    run_rounds,
)
from sorap2p.learn.strategies import Strategy, make_strategy, needs_reference
from sorap2p.learn.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9)
ATTACK_PARAMS: dict[str, dict[str, float]] = {
    "sign_flip": {},
    "scaling": {"factor": 10.0},
    "gaussian_noise": {"std": 0.5},
    "free_rider": {},
}


def byzantine_set(seed: int, n: int, k: int) -> tuple[int, ...]:
    """``k`` of ``n`` trainers drawn from the seed (its own stream, not the partition's)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 4_242))
    return tuple(sorted(int(i) for i in perm[:k]))


def tail(history: list[RoundRecord], k: int = 3) -> float:
    return sum(r.test.accuracy for r in history[-k:]) / k


def _param(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    return key, float(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--attacks", nargs="*", default=list(ATTACK_PARAMS), choices=ATTACK_PARAMS)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--trainers", type=int, default=10)
    ap.add_argument("--num-byzantine", type=int, default=3)
    ap.add_argument("--byzantine", default="", help="comma-separated trainers (all seeds)")
    ap.add_argument("--strategy", default="robust_fltrust")
    ap.add_argument("--param", type=_param, action="append", default=[], help="name=value")
    ap.add_argument("--root-size", type=int, default=100)
    ap.add_argument("--root-balanced", action="store_true")
    ap.add_argument("--honest-only", action="store_true", help="add the perfect-filter run")
    ap.add_argument("--curves", action="store_true", help="print accuracy curves")
    ap.add_argument("--tolerance", type=float, default=0.02)
    args = ap.parse_args()
    torch.set_num_threads(1)

    params = dict(args.param)
    if args.strategy == "robust_fltrust":
        params.setdefault("reference_weight", float(args.root_size))
    strategy = make_strategy(args.strategy, params)
    root = args.root_size if needs_reference(strategy) else 0
    print(
        f"strategy {args.strategy} {strategy.params()}; root {root}, balanced {args.root_balanced}"
    )
    rows: list[dict[str, Any]] = []
    start_all = time.perf_counter()
    for seed in args.seeds:
        config = FederationConfig(
            num_trainers=args.trainers,
            alpha=0.5,
            rounds=args.rounds,
            train=TRAIN,
            seed=seed,
            root_size=root,
            root_balanced=args.root_balanced,
        )
        if args.byzantine:
            byz = tuple(int(x) for x in args.byzantine.split(","))
        else:
            byz = byzantine_set(seed, args.trainers, args.num_byzantine)
        fed = prepare(config)
        hist = [label_histogram(s[1], 10) for s in fed.shards]
        totals = [sum(h[c] for h in hist) for c in range(10)]
        share = [sum(hist[i][c] for i in byz) / max(totals[c], 1) for c in range(10)]
        samples = sum(len(fed.shards[i][1]) for i in byz) / sum(len(s[1]) for s in fed.shards)
        t0 = time.perf_counter()
        clean = run_rounds(fed, strategy, args.rounds)
        took = time.perf_counter() - t0
        base = tail(clean)
        print(
            f"\nseed {seed}: Byzantine {byz} hold {samples:.0%} of the samples; class shares "
            f"{[round(s, 2) for s in share]}; clean {base:.4f} ({took:.1f} s)"
        )
        if args.curves:
            print(f"  clean curve {[round(r.test.accuracy, 3) for r in clean]}")
        runs: list[tuple[str, Strategy, str]] = [(a, strategy, a) for a in args.attacks]
        if args.honest_only:
            runs.append(("honest_only", WithoutTrainers(strategy, frozenset(byz)), "free_rider"))
        for label, strat, attack_name in runs:
            attack = make_attack(attack_name, **ATTACK_PARAMS[attack_name])
            transform = attack_transform({i: attack.apply for i in byz})
            hist_run = run_rounds(prepare(config), strat, args.rounds, transform=transform)
            got = tail(hist_run)
            kept = sum(i in r.result.selected for r in hist_run for i in byz)
            honest_dropped = sum(
                i not in r.result.selected
                for r in hist_run
                for i in range(args.trainers)
                if i not in byz
            )
            drop = base - got
            flag = "" if drop <= args.tolerance else "  <-- over"
            print(
                f"  {label:15s} {got:.4f}  drop {100 * drop:+5.2f} pts  Byzantine kept "
                f"{kept:3d}  honest dropped {honest_dropped:3d}{flag}"
            )
            if args.curves:
                print(f"    curve {[round(r.test.accuracy, 3) for r in hist_run]}")
            rows.append(
                {
                    "seed": seed,
                    "byzantine": list(byz),
                    "attack": label,
                    "clean_tail3": base,
                    "tail3": got,
                    "drop_points": 100 * drop,
                    "byzantine_kept": kept,
                    "honest_dropped": honest_dropped,
                    "curve": [r.test.accuracy for r in hist_run],
                    "clean_curve": [r.test.accuracy for r in clean],
                }
            )
    attacks_only = [r for r in rows if r["attack"] != "honest_only"]
    worst = max((r["drop_points"] for r in attacks_only), default=0.0)
    over = sum(r["drop_points"] > 100 * args.tolerance for r in attacks_only)
    total = time.perf_counter() - start_all
    print(f"\nworst drop {worst:+.2f} points; {over} of {len(attacks_only)} over; {total:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"robust_seeds-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.machine(),
                "torch": torch.__version__,
                "strategy": args.strategy,
                "params": strategy.params(),
                "root_size": root,
                "root_balanced": args.root_balanced,
                "rounds": args.rounds,
                "rows": rows,
                "worst_drop_points": worst,
                "seconds": total,
            },
            indent=1,
        )
    )
    print(f"saved {out}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
