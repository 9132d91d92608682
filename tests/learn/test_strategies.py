from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.cid import Cid
from sorap2p.core.errors import ConfigError, LocalProtocolError
from sorap2p.learn.strategies import (
    BLOCK,
    SUM_BLOCK,
    FedAvg,
    FedProx,
    FLTrust,
    Krum,
    Median,
    MultiKrum,
    NormClipped,
    RobustFLTrust,
    RobustMultiKrum,
    Strategy,
    StreamingMean,
    TrimmedMean,
    UpdateBatch,
    allocate_rows,
    apply_delta,
    make_strategy,
    needs_reference,
    reference_epochs,
)

ALL: list[Strategy] = [
    FedAvg(),
    FedAvg(weighted=False),
    FedProx(0.1),
    Median(),
    TrimmedMean(0.2),
    Krum(1),
    MultiKrum(1),
    MultiKrum(1, 3),
    RobustMultiKrum(),
    RobustMultiKrum(0.2, weighted=False),
    make_strategy("fedavg", {"clip_norm": 0.5}),
    make_strategy("median", {"clip_median": 1.0}),
    make_strategy("multi_krum", {"f": 1, "clip_median": 1.0}),
    FLTrust(),
    FLTrust(0.1, median_norm=True),
    RobustFLTrust(),
    RobustFLTrust(margin=0.0, clip=2.0, reference_weight=50.0, weighted=False),
    make_strategy("fltrust", {"clip_median": 1.0}),
]


def _batch(x: torch.Tensor, w: list[float], keys: list[Any]) -> UpdateBatch:
    return UpdateBatch.create(x, w, keys)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(5, 9),
    d=st.sampled_from([1, 7, 64, 1000]),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_order_independent_and_inputs_untouched(n: int, d: int, seed: int, data: Any) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 3
    w = [float(v) for v in torch.randint(1, 100, (n,), generator=g)]
    keys = [Cid.hash(f"update {seed} {i}".encode()) for i in range(n)]
    # the server's delta (FLTrust): near some rows, so that trust varies; others ignore it
    ref = x[0] * 0.5 + torch.randn(d, generator=g)
    perm = data.draw(st.permutations(range(n)))
    x_copy, ref_copy = x.clone(), ref.clone()
    a = UpdateBatch.create(x, w, keys, ref)
    b = UpdateBatch.create(x[perm].contiguous(), [w[i] for i in perm], [keys[i] for i in perm], ref)
    for strategy in ALL:
        ra, rb = strategy.aggregate(a), strategy.aggregate(b)
        assert torch.equal(ra.delta, rb.delta), strategy
        assert sorted(a.keys[i] for i in ra.selected) == sorted(b.keys[i] for i in rb.selected)
        assert torch.equal(x, x_copy) and torch.equal(ref, ref_copy)  # never modified


def test_in_place_and_gathered_paths_agree_bitwise_across_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 6, BLOCK + 4096  # two column blocks, rows 64-byte aligned -> in-place path
    x = torch.randn(n, d, generator=g)
    keys = [bytes([i]) for i in range(n)]
    w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    a = _batch(x, w, keys)
    rev = list(reversed(range(n)))
    b = _batch(x[rev].contiguous(), [w[i] for i in rev], [keys[i] for i in rev])
    for strategy in (FedAvg(), TrimmedMean(0.2), MultiKrum(1)):
        assert torch.equal(strategy.aggregate(a).delta, strategy.aggregate(b).delta)


def test_allocate_rows_gives_aligned_rows_and_same_results() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1001, generator=g)
    rows = allocate_rows(5, 1001)
    assert rows.shape == (5, 1001) and rows.stride(0) % 16 == 0 and rows.data_ptr() % 64 == 0
    rows.copy_(x)
    keys = [bytes([i]) for i in range(5)]
    for strategy in (FedAvg(), Median(), MultiKrum(1)):
        a = strategy.aggregate(UpdateBatch.create(rows, [1.0] * 5, keys)).delta
        b = strategy.aggregate(UpdateBatch.create(x, [1.0] * 5, keys)).delta
        assert torch.equal(a, b)


def test_fedavg_matches_float64_reference_within_stated_bound() -> None:
    g = torch.Generator().manual_seed(1)
    n, d = 20, 5000
    x = torch.randn(n, d, generator=g)
    w = [float(i + 1) for i in range(n)]
    got = FedAvg().aggregate(_batch(x, w, [bytes([i]) for i in range(n)])).delta
    c = torch.tensor(w, dtype=torch.float64) / sum(w)
    ref = (c[:, None] * x.double()).sum(0)
    bound = 2 * n * 2.0**-24 * (c[:, None] * x.double().abs()).sum(0)
    assert bool(((got.double() - ref).abs() <= bound + 1e-12).all())
    plain = FedAvg(weighted=False).aggregate(_batch(x, w, [bytes([i]) for i in range(n)])).delta
    torch.testing.assert_close(plain, x.mean(0))


@pytest.mark.parametrize("n", [1, 2, 5, 6, 33, 50, 300])
def test_median_and_trimmed_mean_match_numpy(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 5000, generator=g)  # more than one column block
    b = _batch(x, [1.0] * n, [i.to_bytes(2, "big") for i in range(n)])
    torch.testing.assert_close(
        Median().aggregate(b).delta, torch.from_numpy(np.median(x.numpy(), 0))
    )
    s = np.sort(x.numpy(), 0)
    k = int(0.2 * n)
    ref = s[k : n - k].mean(0)
    torch.testing.assert_close(TrimmedMean(0.2).aggregate(b).delta, torch.from_numpy(ref))


def _sorted_reference(x: torch.Tensor, trim: int, median: bool) -> torch.Tensor:
    """The definition: sort each column, then sum the kept rows per `SUM_BLOCK` columns."""
    n, d = x.shape
    s = torch.sort(x, dim=0).values
    if median:
        mid = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) * 0.5
        return mid + 0.0
    keep = s[trim : n - trim]
    parts = [keep[:, a : a + SUM_BLOCK].contiguous().sum(0) for a in range(0, d, SUM_BLOCK)]
    return torch.cat(parts) / (n - 2 * trim) + 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 6, 33, 50, 300])
def test_median_and_trimmed_mean_equal_their_definition_bitwise(n: int) -> None:
    g = torch.Generator().manual_seed(100 + n)
    d = SUM_BLOCK + 1001  # a full and a partial summation block
    x = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 10
    x[0, :500] = 0.0  # ties, and zeros of both signs
    x[-1, 200:700] = -0.0
    if n > 2:
        x[1, 1000:1500] = x[2, 1000:1500]
    perm = list(reversed(range(n)))
    keys = [i.to_bytes(2, "big") for i in range(n)]
    a = _batch(x, [1.0] * n, keys)
    b = _batch(x[perm].contiguous(), [1.0] * n, [keys[i] for i in perm])
    cases: list[tuple[Any, int, bool]] = [(Median(), 0, True)]
    cases += [(TrimmedMean(beta), int(beta * n), False) for beta in (0.0, 0.1, 0.2, 0.45)]
    for strategy, trim, median in cases:
        ref = _sorted_reference(x, trim, median)
        for batch in (a, b):
            got = strategy.aggregate(batch).delta
            assert torch.equal(got.view(torch.int32), ref.view(torch.int32)), (strategy, n)


def test_krum_and_multi_krum_exclude_outliers() -> None:
    g = torch.Generator().manual_seed(2)
    honest = torch.randn(7, 50, generator=g) * 0.1 + 1.0
    bad = torch.randn(3, 50, generator=g) * 5 - 3
    x = torch.cat([honest, bad])
    b = _batch(x, [10.0] * 10, [f"k{i}" for i in range(10)])
    kr = Krum(3).aggregate(b)
    assert len(kr.selected) == 1 and kr.selected[0] < 7
    assert torch.equal(kr.delta, x[kr.selected[0]])
    mk = MultiKrum(3).aggregate(b)
    assert sorted(mk.selected) == list(range(7))
    torch.testing.assert_close(mk.delta, honest.mean(0))
    assert max(mk.scores[i] for i in range(7)) < min(mk.scores[i] for i in range(7, 10))
    with pytest.raises(LocalProtocolError):
        Krum(4).aggregate(b)  # needs n >= 2f + 3


def test_robust_multi_krum_drops_empty_rows_and_outliers() -> None:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 200, generator=g)
    honest = base * 0.3 + torch.randn(7, 200, generator=g)  # near-orthogonal, like non-IID
    w = [float(10 + i) for i in range(10)]
    keys = [f"k{i}" for i in range(10)]
    # free riders: the zero rows are closer to the honest rows than those are to each other,
    # so plain Multi-Krum keeps them; here they are dropped and use up the budget f = 3
    riders = torch.cat([honest, torch.zeros(3, 200)])
    b = _batch(riders, w, keys)
    assert set(range(7, 10)) <= set(MultiKrum(3).aggregate(b).selected)
    r = RobustMultiKrum().aggregate(b)
    assert r.selected == tuple(range(7))
    assert all(r.scores[i] == float("inf") for i in range(7, 10))
    torch.testing.assert_close(r.delta, FedAvg().aggregate(_batch(honest, w[:7], keys[:7])).delta)
    # boosted and noise rows are far from everything: Krum drops them
    bad = torch.cat([honest, honest[:2] * 10, torch.randn(1, 200, generator=g) * 20])
    r = RobustMultiKrum().aggregate(_batch(bad, w, keys))
    assert r.selected == tuple(range(7))
    # empty rows use up the budget: two empty rows leave f = 1 for two boosted rows
    mixed = torch.cat([honest[:6], torch.zeros(2, 200), honest[:2] * 10])
    r = RobustMultiKrum().aggregate(_batch(mixed, w, keys))
    assert len(r.selected) == 7 and {6, 7}.isdisjoint(r.selected)
    assert len(set(r.selected) & {8, 9}) == 1
    # small batches: f is capped at (live - 3) // 2; all-zero batches give a zero delta
    r = RobustMultiKrum().aggregate(_batch(honest[:4], w[:4], keys[:4]))
    assert r.selected == (0, 1, 2, 3)
    z = RobustMultiKrum().aggregate(_batch(torch.zeros(3, 5), [1.0] * 3, [b"a", b"b", b"c"]))
    assert z.selected == () and torch.equal(z.delta, torch.zeros(5))


def _fltrust_reference(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """FLTrust by its definition, in float64."""
    xd, rd = x.double(), ref.double()
    norms = xd.norm(dim=1)
    trust = ((xd @ rd) / (norms * rd.norm())).clamp_min(0)
    trust = torch.where(norms > 0, trust, torch.zeros_like(trust))
    rescaled = xd * (rd.norm() / norms.clamp_min(1e-300))[:, None]
    out: torch.Tensor = (trust[:, None] * rescaled).sum(0) / trust.sum()
    return out


def test_fltrust_weights_by_direction_and_rescales_to_the_reference() -> None:
    g = torch.Generator().manual_seed(6)
    ref = torch.randn(300, generator=g)
    honest = ref * 0.4 + torch.randn(6, 300, generator=g)  # positive cosine, various norms
    keys = [f"k{i}" for i in range(10)]
    rows = torch.cat([honest, -honest[:2], honest[2:3] * 10, torch.zeros(1, 300)])
    batch = UpdateBatch.create(rows, [float(10 + i) for i in range(10)], keys, ref)
    r = FLTrust().aggregate(batch)
    # flipped and zero rows get no trust; the boosted one is rescaled like any other
    assert set(r.selected) == set(range(6)) | {8}
    assert r.scores[6] == r.scores[7] == r.scores[9] == 0.0
    assert r.scores[8] == pytest.approx(r.scores[2], abs=1e-6)
    torch.testing.assert_close(r.delta, _fltrust_reference(rows, ref).float())
    boosted = rows[8] * (ref.norm() / rows[8].norm())
    assert float(r.delta.norm()) <= float(boosted.norm()) * (1 + 1e-5)
    # median_norm: rescale to the median row norm instead of the reference's
    m = FLTrust(median_norm=True).aggregate(batch)
    ratio = float(rows.double().norm(dim=1).quantile(0.5) / ref.double().norm())
    torch.testing.assert_close(m.delta, r.delta * ratio)
    # nothing trusted: zero delta; no reference: a local error
    away = UpdateBatch.create(-honest, [1.0] * 6, keys[:6], ref)
    z = FLTrust().aggregate(away)
    assert z.selected == () and torch.equal(z.delta, torch.zeros(300))
    with pytest.raises(LocalProtocolError):
        FLTrust().aggregate(UpdateBatch.create(rows, [1.0] * 10, keys))
    with pytest.raises(LocalProtocolError):
        UpdateBatch.create(rows, [1.0] * 10, keys, ref[:5])
    assert batch.without(0).reference is ref


def test_robust_fltrust_keeps_rows_toward_the_reference_and_clips_them() -> None:
    g = torch.Generator().manual_seed(7)
    d = 400
    ref = torch.randn(d, generator=g)
    honest = ref * 0.3 + torch.randn(7, d, generator=g)  # cos ~ 0.3, various directions
    keys = [f"k{i}" for i in range(10)]
    w = [float(10 + i) for i in range(10)]
    noise = torch.randn(1, d, generator=g) * 50  # |cos| ~ 1/sqrt(d): below the margin
    rows = torch.cat([honest, -honest[:1], honest[1:2] * 10, noise])
    batch = UpdateBatch.create(rows, w, keys, ref)
    s = RobustFLTrust()
    r = s.aggregate(batch)
    assert set(r.selected) == set(range(7)) | {8}  # flipped (7) and noise (9) dropped
    assert r.scores[7] == pytest.approx(-r.scores[0]) and abs(r.scores[9]) < 4 / d**0.5
    # the definition in float64: clip kept rows to the median non-empty norm, weighted mean
    norms = rows.double().norm(dim=1)
    bound = float(norms.quantile(0.5))
    kept = [*range(7), 8]
    total = sum(w[i] for i in kept)
    ref64 = sum(w[i] * min(1.0, bound / float(norms[i])) * rows[i].double() for i in kept)
    torch.testing.assert_close(r.delta, (ref64 / total).float())
    # the boosted copy of row 1 is clipped to the bound: it weighs like an ordinary row
    assert float(rows[8].norm()) > 5 * bound
    # the root row: weight 100, clipped the same way
    rr = RobustFLTrust(reference_weight=100.0).aggregate(batch)
    expect = (ref64 + 100.0 * min(1.0, bound / float(ref.norm())) * ref.double()) / (total + 100)
    torch.testing.assert_close(rr.delta, expect.float())
    # free riders are empty rows (and do not lower the clip bound)
    riders = torch.cat([honest, torch.zeros(3, d)])
    f = RobustFLTrust().aggregate(UpdateBatch.create(riders, w, keys, ref))
    assert f.selected == tuple(range(7)) and f.scores[9] == 0.0
    # nothing kept: zero delta, or only the root row
    away = UpdateBatch.create(-honest, w[:7], keys[:7], ref)
    assert torch.equal(RobustFLTrust().aggregate(away).delta, torch.zeros(d))
    only_root = RobustFLTrust(reference_weight=5.0).aggregate(away)
    assert only_root.selected == ()
    torch.testing.assert_close(
        only_root.delta,
        ref * min(1.0, float(honest.norm(dim=1).median()) / float(ref.norm())),
        rtol=1e-3,
        atol=1e-3,
    )
    with pytest.raises(LocalProtocolError):
        s.aggregate(UpdateBatch.create(rows, w, keys))


def test_needs_reference() -> None:
    assert needs_reference(FLTrust()) and needs_reference(RobustFLTrust())
    assert needs_reference(make_strategy("fltrust", {"clip_norm": 1.0}))
    assert not needs_reference(FedAvg()) and not needs_reference(RobustMultiKrum())


def test_reference_epochs_tell_the_server_how_long_to_train_the_root_set() -> None:
    assert reference_epochs(RobustFLTrust(), 2) == 2  # default 0: the round's epochs
    assert reference_epochs(RobustFLTrust(reference_epochs=10), 3) == 10
    assert reference_epochs(make_strategy("robust_fltrust", {"reference_epochs": 6.0}), 2) == 6
    clipped = make_strategy("robust_fltrust", {"reference_epochs": 6.0, "clip_norm": 1.0})
    assert reference_epochs(clipped, 2) == 6
    assert reference_epochs(FLTrust(), 2) == 2 and reference_epochs(FedAvg(), 4) == 4
    for bad in (-1.0, 1.5, 1001.0):
        with pytest.raises(ConfigError):
            make_strategy("robust_fltrust", {"reference_epochs": bad})


def test_norm_clipping() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    b = _batch(x, [1.0, 1.0, 1.0], [b"a", b"b", b"c"])
    r = NormClipped(FedAvg(), 1.0).aggregate(b)
    torch.testing.assert_close(r.delta, torch.tensor([0.6 + 0.3, 0.8 + 0.4]) / 3)
    r2 = NormClipped(Median(), 1.0).aggregate(b)
    torch.testing.assert_close(r2.delta, torch.tensor([0.3, 0.4]))
    rel = make_strategy("fedavg", {"clip_median": 1.0}).aggregate(b)  # median norm 0.5
    torch.testing.assert_close(rel.delta, torch.tensor([0.3 + 0.3, 0.4 + 0.4]) / 3)


def test_registry_and_params() -> None:
    s = make_strategy("trimmed_mean", {"beta": 0.25})
    assert s == TrimmedMean(0.25) and s.params() == {"beta": 0.25}
    assert make_strategy("multi_krum", {"f": 2, "m": 5}).params() == {
        "f": 2,
        "m": 5,
        "weighted": True,
    }
    assert make_strategy("fedprox", {"mu": 0.5, "clip_norm": 2}).params()["clip_norm"] == 2.0
    assert make_strategy("robust_multi_krum") == RobustMultiKrum()
    assert make_strategy("robust_multi_krum", {"fraction": 0.2, "min_norm": 0}).params() == {
        "fraction": 0.2,
        "min_norm": 0.0,
        "weighted": True,
    }
    assert make_strategy("fltrust") == FLTrust()
    assert make_strategy("fltrust", {"min_norm": 0.1}).params() == {
        "min_norm": 0.1,
        "median_norm": False,
    }
    assert make_strategy("robust_fltrust", {"reference_weight": 100}) == RobustFLTrust(
        reference_weight=100.0
    )
    for name, params in [
        ("fltrust", {"min_norm": 1.0}),
        ("robust_fltrust", {"clip": 0.0}),
        ("robust_fltrust", {"margin": -1.0}),
        ("nope", {}),
        ("fedavg", {"bogus": 1}),
        ("krum", {"f": 1.5}),
        ("krum", {"f": "1"}),
        ("fedavg", {"weighted": 2}),
        ("fedavg", {"weighted": "yes"}),
        ("trimmed_mean", {"beta": 0.5}),
        ("fedprox", {"mu": -1.0}),
        ("robust_multi_krum", {"fraction": 0.5}),
        ("robust_multi_krum", {"min_norm": 1.0}),
        ("robust_multi_krum", {"f": 3}),
        ("fedavg", {"clip_norm": 0}),
        ("fedavg", {"clip_norm": 1, "clip_median": 1}),
    ]:
        with pytest.raises(ConfigError):
            make_strategy(name, params)


def test_wire_params_are_floats() -> None:
    """RoundOpen carries strategy params as floats: integral floats fill int parameters and
    0.0 / 1.0 fill bool ones."""
    krum = make_strategy("krum", {"f": 3.0})
    assert krum.f == 3 and isinstance(krum.f, int)
    fedavg = make_strategy("fedavg", {"weighted": 0.0})
    assert fedavg.weighted is False
    with pytest.raises(ConfigError):
        make_strategy("krum", {"f": 3.5})


def test_update_batch_validation() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(LocalProtocolError):
        UpdateBatch.create(x, [1.0, 1.0], [b"a", b"a"])
    with pytest.raises(LocalProtocolError):
        UpdateBatch.create(x, [1.0, 0.0], [b"a", b"b"])
    with pytest.raises(LocalProtocolError):
        UpdateBatch.create(x, [1.0], [b"a", b"b"])
    with pytest.raises(LocalProtocolError):
        UpdateBatch.create(x.double(), [1.0, 1.0], [b"a", b"b"])
    with pytest.raises(LocalProtocolError):
        UpdateBatch.create(torch.zeros(3, 2).t(), [1.0, 1.0], [b"a", b"b"])


def test_streaming_mean_agrees_with_fedavg() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 2000, generator=g)
    w = [float(i + 1) for i in range(8)]
    acc = StreamingMean(2000)
    for i in (3, 1, 7, 0, 2, 6, 5, 4):
        acc.add(x[i], w[i], bytes([i]))
    with pytest.raises(LocalProtocolError):
        acc.add(x[0], 1.0, bytes([0]))
    ref = FedAvg().aggregate(_batch(x, w, [bytes([i]) for i in range(8)])).delta
    torch.testing.assert_close(acc.result(), ref, rtol=0, atol=1e-5)
    assert acc.statistics()["rows"] == 8


def test_apply_delta_is_pure() -> None:
    g, d = torch.ones(3), torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(apply_delta(g, d, 0.5), torch.tensor([1.5, 2.0, 2.5]))
    assert torch.equal(g, torch.ones(3))
