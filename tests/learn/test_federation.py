"""Multi-round federations on the real digits data (marked slow; they still run in CI).

Numbers are printed (run with ``-s``) so that the report can quote them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sorap2p.learn.attacks import Attack, FreeRider, GaussianNoise, Scaling, SignFlip
from sorap2p.learn.compress import ErrorFeedback, dequantize_int8, from_fp16, to_fp16
from sorap2p.learn.privacy import DPConfig, epsilon, privatize
from sorap2p.learn.scoring import score_contributions
from sorap2p.learn.simulate import (
    DeltaTransform,
    Federation,
    FederationConfig,
    RoundRecord,
    attack_transform,
    centralized_baseline,
    prepare,
    round_updates,
    run_rounds,
)
from sorap2p.learn.strategies import FedAvg, RobustFLTrust
from sorap2p.learn.train import TrainConfig

pytestmark = pytest.mark.slow

TRAIN = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9)
CONFIG = FederationConfig(num_trainers=10, alpha=0.5, rounds=20, train=TRAIN, seed=0)
BYZANTINE = (1, 4, 7)
SHORT = 12  # rounds for the damage and compression comparisons
# The robust setting: RobustFLTrust on the aggregator, which trains the round's global model
# on a root dataset of 100 samples (drawn from the validators' held-out part of the training
# split, so disjoint from every shard and the shards are those of CONFIG; never test data)
# and joins that delta as a row of weight 100; trainers train as in CONFIG.
ROOT = 100
ROBUST_CONFIG = FederationConfig(
    num_trainers=10, alpha=0.5, rounds=20, train=TRAIN, seed=0, root_size=ROOT
)
ROBUST = RobustFLTrust(reference_weight=float(ROOT))


def _accs(history: list[RoundRecord]) -> list[float]:
    return [round(r.test.accuracy, 4) for r in history]


def _tail(history: list[RoundRecord], k: int = 3) -> float:
    return sum(r.test.accuracy for r in history[-k:]) / k


@pytest.fixture(scope="module")
def clean_fedavg() -> list[RoundRecord]:
    return run_rounds(prepare(CONFIG), FedAvg(), 20)


@pytest.fixture(scope="module")
def clean_robust() -> list[RoundRecord]:
    """The "clean run" of the robust strategy: the same strategy, no Byzantine trainer."""
    return run_rounds(prepare(ROBUST_CONFIG), ROBUST, 20)


def test_digits_cnn_non_iid_reaches_95_percent(clean_fedavg: list[RoundRecord]) -> None:
    accs = _accs(clean_fedavg)
    first = next((i + 1 for i, a in enumerate(accs) if a >= 0.95), None)
    central = centralized_baseline(CONFIG, epochs=10)
    print(f"\nFedAvg digits CNN, 10 trainers, alpha=0.5: {accs}")
    print(f"first round >= 95%: {first}; centralized baseline: {central.accuracy:.4f}")
    assert first is not None and first <= 20
    assert central.accuracy >= 0.95


def test_rounds_are_deterministic() -> None:
    a = run_rounds(prepare(CONFIG), FedAvg(), 2)
    b = run_rounds(prepare(CONFIG), FedAvg(), 2)
    assert torch.equal(a[-1].result.delta, b[-1].result.delta)


ATTACKS: dict[str, Attack] = {
    "sign_flip": SignFlip(),
    "scaling_x10": Scaling(10.0),
    "gaussian_noise": GaussianNoise(0.5),
    "free_rider": FreeRider(),
}
# Allowed drop (mean test accuracy of the last 3 of 20 rounds) of the robust strategy under
# attack vs its own clean run (`clean_robust`: same strategy and root set, no Byzantine
# trainer): 2 points for every attack (issue F5). digits has 359 test images: 1 image = 0.28
# points, 0.09 in a last-3 mean. Measured here (seed 0, Byzantine 1/4/7): clean 0.9610; sign
# flip 0.9526, x10 scaling 0.9656, noise 0.9415, free riders 0.9434.
#
# Across seeds this holds for 18 of 20 drawn cases, not all (bench/robust_seeds.py: each seed its
# own partition and its own Byzantine set of 3; drop in points, + = worse; "filter" is the
# same strategy with exactly the Byzantine rows removed, `WithoutTrainers`, i.e. the clean
# run minus their data):
#   seed  Byzantine  held  clean   sign   x10   noise  free  filter
#   0     1 6 7      23%   0.9610  +1.11  -0.37 -0.46  +0.00 +0.00
#   1     2 5 8      23%   0.9499  -1.02  -1.39 +0.46  -0.09 -0.09
#   2     5 8 9      37%   0.9582  +0.37  +0.00 +1.02  +1.11 +1.11
#   3     1 3 6      28%   0.9517  +1.86  -1.67 +1.11  +1.11 +1.11
#   4     4 6 7      35%   0.9786  +1.67  +0.93 +2.14  +2.60 +2.60
#   2     0 3 6      31%   0.9582  +3.06  +0.19 -0.19  +0.19 +0.19
#   0     1 4 7      27%   0.9610  +0.84  -0.46 +1.95  +1.76 +1.76   (this test)
# Seed 4 fails by data loss, not by filtering: its Byzantine trainers hold 35% of the samples
# and 86% of all 3s, and even the perfect filter ends 2.6 points low; it is a speed loss
# (FedAvg on the 7 honest trainers alone: 2.9 points below FedAvg on all 10 at round 20, 0.7
# at round 40). Sign flip is the thin case elsewhere: late in training the 100-sample root
# delta barely correlates with honest non-IID deltas (cosines ~0 +- 0.2), some honest rows
# are dropped (20-40 of 140 per run) and a flipped row passes now and then (1-8 of 60);
# on seed 2 with Byzantine 0/3/6 one flipped row passed in round 19 (0.947 -> 0.900).
# This test's own margins are thin for the same reason: noise 1.95 and free riders 1.76
# where the perfect filter loses 1.76 (shards 1, 4, 7 hold 85% of all 8s); if another CPU or
# torch build lands above 2.0 here, check "Byzantine rows kept 0 times" before suspecting the
# filter. Single cells are noisy (+-1 point: noise and free riders, both filtered exactly,
# end up to 0.8 points apart because the dropped noise rows loosen the clip bound).
# Tried, none holds all 20 (worst drop, cells over 2.0): root weight 200 (2.69, 2), 300
# (3.62, 4); reference trained 6 or 10 epochs (2.88, 3; 4.64, 5: fewer honest rows dropped,
# so the clean run improves more than the attacked ones); margin 0 or 2 (seeds 3-4: 3.44;
# 2.88); balanced root (3.81); 30 rounds (sign flip leaks accumulate: 5.2); clip to the kept
# rows' median (scaling: 9.0); rows weighted by min(1, cos / 0.1) (seed 3: 3.16).
ROBUST_TOLERANCE = 0.02


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_byzantine_damage_fedavg_but_not_robust_strategy(
    attack: str,
    clean_fedavg: list[RoundRecord],
    clean_robust: list[RoundRecord],
) -> None:
    transform = attack_transform({i: ATTACKS[attack].apply for i in BYZANTINE})
    damaged = run_rounds(prepare(CONFIG), FedAvg(), SHORT, transform=transform)
    robust = run_rounds(prepare(ROBUST_CONFIG), ROBUST, 20, transform=transform)
    clean_short = clean_fedavg[SHORT - 1].test.accuracy
    picked = sum(i in r.result.selected for r in robust for i in BYZANTINE)
    print(
        f"\n{attack}: FedAvg {damaged[-1].test.accuracy:.4f} vs clean {clean_short:.4f} "
        f"at round {SHORT}; {ROBUST.name} last-3 mean {_tail(robust):.4f} vs its clean "
        f"{_tail(clean_robust):.4f} (clean FedAvg {_tail(clean_fedavg):.4f}); Byzantine rows "
        f"kept {picked} times in 20 rounds; robust curve {_accs(robust)}"
    )
    # plain FedAvg is measurably damaged
    if attack == "free_rider":
        # zero deltas only dilute a FedAvg step: it is slowed (measured -7.5 points), not wrecked
        assert damaged[-1].test.accuracy < clean_short - 0.05
    else:
        assert damaged[-1].test.accuracy < clean_short - 0.10
    assert _tail(robust) >= _tail(clean_robust) - ROBUST_TOLERANCE
    if attack == "scaling_x10":
        # boosted honest directions are kept, clipped to an ordinary step
        assert picked > 0
    else:
        # flipped rows are kept only when the honest delta pointed away from the root delta
        # (measured 2 of 60); noise and free riders never
        assert picked <= (6 if attack == "sign_flip" else 0)


# A second partition and Byzantine set (seed 1, trainers 2/5/8 as bench/robust_seeds.py
# draws them), robust runs only: a regression guard, not a claim that every seed holds
# (see the table above; measured here: sign flip -1.02, x10 -1.39, noise +0.46, free
# riders -0.09 points).
SEED1_CONFIG = FederationConfig(
    num_trainers=10, alpha=0.5, rounds=20, train=TRAIN, seed=1, root_size=ROOT
)
SEED1_BYZANTINE = (2, 5, 8)


@pytest.fixture(scope="module")
def clean_robust_seed1() -> list[RoundRecord]:
    return run_rounds(prepare(SEED1_CONFIG), ROBUST, 20)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_robust_strategy_holds_on_a_second_partition(
    attack: str, clean_robust_seed1: list[RoundRecord]
) -> None:
    transform = attack_transform({i: ATTACKS[attack].apply for i in SEED1_BYZANTINE})
    robust = run_rounds(prepare(SEED1_CONFIG), ROBUST, 20, transform=transform)
    drop = _tail(clean_robust_seed1) - _tail(robust)
    print(f"\nseed 1, {attack}: last-3 mean {_tail(robust):.4f}, drop {100 * drop:+.2f} points")
    assert drop <= ROBUST_TOLERANCE


@pytest.fixture(scope="module")
def warm_federation() -> Federation:
    fed = prepare(CONFIG)
    run_rounds(fed, FedAvg(), 5)
    return fed


@pytest.mark.parametrize(
    "attack", [SignFlip(), Scaling(10.0), GaussianNoise(0.5), FreeRider()], ids=lambda a: a.name
)
def test_scoring_ranks_byzantine_below_honest(warm_federation: Federation, attack: Attack) -> None:
    fed = warm_federation
    batch = round_updates(fed, 5, attack_transform({i: attack.apply for i in BYZANTINE}))
    before = batch.deltas.clone()
    report = score_contributions(
        batch,
        FedAvg(),
        fed.global_vector,
        lambda v: fed.evaluate(v, fed.validator_data),
    )
    assert torch.equal(batch.deltas, before)
    ranked_rows = [c.row for c in report.ranking]
    scores = [round(c.score, 3) for c in report.ranking]
    print(f"\n{attack.name}: ranking {ranked_rows}, scores {scores}")
    assert set(ranked_rows[-3:]) == set(BYZANTINE)
    assert report.scores()[batch.keys[0]] == report.ranking[ranked_rows.index(0)].score


def _int8_with_feedback() -> DeltaTransform:
    memory: dict[int, ErrorFeedback] = {}

    def transform(i: int, r: int, delta: torch.Tensor) -> torch.Tensor:
        ef = memory.setdefault(i, ErrorFeedback(delta.numel()))
        return dequantize_int8(ef.compress(delta))

    return transform


DP = DPConfig(clip_norm=2.0, noise_multiplier=0.005)


def _dp(i: int, r: int, delta: torch.Tensor) -> torch.Tensor:
    return privatize(delta, DP, torch.Generator().manual_seed(1000 * r + i))


TRANSFORMS: dict[str, tuple[Callable[[], DeltaTransform], float]] = {
    # name: (transform factory, allowed accuracy change in points at round SHORT)
    "fp16": (lambda: lambda i, r, d: from_fp16(to_fp16(d)), 0.02),
    "int8_error_feedback": (_int8_with_feedback, 0.03),
    "dp_clip2_sigma0.005": (lambda: _dp, 0.08),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_compression_and_dp_change_accuracy_by_a_bounded_amount(
    name: str, clean_fedavg: list[RoundRecord]
) -> None:
    factory, bound = TRANSFORMS[name]
    history = run_rounds(prepare(CONFIG), FedAvg(), SHORT, transform=factory())
    clean = _tail(clean_fedavg[:SHORT])
    got = _tail(history)
    extra = ""
    if name.startswith("dp"):
        eps, _ = epsilon(1.0, DP.noise_multiplier, SHORT, 1e-5)
        extra = f" (per-update DP, eps = {eps:.3g} at delta = 1e-5 over {SHORT} rounds)"
    print(f"\n{name}: last-3 mean {got:.4f} vs clean {clean:.4f}, change {got - clean:+.4f}{extra}")
    assert abs(got - clean) <= bound
