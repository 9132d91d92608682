from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.errors import RemoteProtocolError
from sorap2p.learn.compress import (
    ErrorFeedback,
    Int8Blocks,
    dequantize_int8,
    from_fp16,
    quantize_int8,
    to_fp16,
)
from sorap2p.learn.privacy import DPConfig, epsilon, privatize, rdp_sampled_gaussian


def test_fp16_round_trip_error() -> None:
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    back = from_fp16(to_fp16(x))
    assert bool(((back - x).abs() <= x.abs() * 2.0**-11 + 2.0**-24).all())
    with pytest.raises(RemoteProtocolError):
        from_fp16(x)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 2000), block=st.sampled_from([1, 7, 64, 256]), seed=st.integers(0, 99))
def test_int8_error_is_bounded_per_block(size: int, block: int, seed: int) -> None:
    x = torch.randn(size, generator=torch.Generator().manual_seed(seed)) * (seed + 1)
    x_copy = x.clone()
    q = quantize_int8(x, block)
    back = dequantize_int8(q)
    assert torch.equal(x, x_copy) and back.shape == x.shape
    assert q.nbytes <= size + 4 * (size // block + 1) + block
    for s in range(0, size, block):
        blk = x[s : s + block]
        bound = float(blk.abs().max()) / 127 / 2 * (1 + 1e-5)
        assert float((back[s : s + block] - blk).abs().max()) <= bound + 1e-12


def test_int8_rejects_malformed() -> None:
    q = quantize_int8(torch.randn(100), 32)
    for bad in (
        Int8Blocks(q.codes[:-1], q.scales, q.size, q.block),
        Int8Blocks(q.codes, q.scales[:-1], q.size, q.block),
        Int8Blocks(q.codes.to(torch.int16), q.scales, q.size, q.block),
        Int8Blocks(q.codes, q.scales, q.size, 0),
        Int8Blocks(q.codes, torch.full_like(q.scales, float("nan")), q.size, q.block),
    ):
        with pytest.raises(RemoteProtocolError):
            dequantize_int8(bad)


def test_error_feedback_keeps_the_running_sum_close() -> None:
    g = torch.Generator().manual_seed(1)
    ef = ErrorFeedback(5000, block=256)
    sent = torch.zeros(5000)
    true = torch.zeros(5000)
    for _ in range(20):
        d = torch.randn(5000, generator=g) * 0.01
        true += d
        sent += dequantize_int8(ef.compress(d))
    # without feedback the error of the sum grows with rounds; with it, it is one residual
    assert torch.allclose(sent + ef.residual, true, atol=1e-6)
    assert ef.residual_norm < 0.01 * float(true.norm())


def test_privatize_clips_and_adds_noise() -> None:
    x = torch.full((10_000,), 1.0)
    x_copy = x.clone()
    out = privatize(x, DPConfig(clip_norm=1.0, noise_multiplier=0.0), torch.Generator())
    assert math.isclose(float(out.norm()), 1.0, rel_tol=1e-5)
    noisy = privatize(
        x, DPConfig(clip_norm=2.0, noise_multiplier=0.5), torch.Generator().manual_seed(0)
    )
    assert torch.equal(x, x_copy)
    resid = noisy - x * (2.0 / 100.0)
    assert 0.95 < float(resid.std()) < 1.05  # noise std = 0.5 * 2.0


# (q, noise multiplier, steps, delta) -> eps, computed with Google's dp-accounting 0.6.0
# (RdpAccountant, PoissonSampledDpEvent(q, GaussianDpEvent(sigma)) composed `steps` times).
# The first row is the DP-SGD MNIST example of Abadi et al. 2016 / TF Privacy (batch 256 of
# 60,000, sigma 1.1, 60 epochs): 2.92 with the older RDP conversion, 2.597 with the improved one.
DP_ACCOUNTING_VALUES = [
    (256 / 60000, 1.1, 60 * 60000 // 256, 1e-5, 2.5965558697943036, 8.1),
    (0.01, 1.0, 1000, 1e-5, 2.101366525420273, 7.8),
    (0.1, 2.0, 100, 1e-6, 2.9141737620582155, 8.2),
    (1.0, 5.0, 20, 1e-5, 4.161624306053592, 5.9),
    (0.3, 0.8, 50, 1e-5, 24.679335988610887, 1.9),
    (0.05, 0.5, 10, 1e-3, 6.56741872987434, 2.1),
]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta", "eps", "order"), DP_ACCOUNTING_VALUES)
def test_rdp_accountant_matches_dp_accounting(
    q: float, sigma: float, steps: int, delta: float, eps: float, order: float
) -> None:
    got, got_order = epsilon(q, sigma, steps, delta)
    assert math.isclose(got, eps, rel_tol=1e-9)
    assert got_order == order


def test_rdp_closed_form_and_monotonicity() -> None:
    assert rdp_sampled_gaussian(1.0, 2.0, 3.0) == 3.0 / 8.0
    assert rdp_sampled_gaussian(0.0, 2.0, 3.0) == 0.0
    assert epsilon(0.1, 1.0, 100, 1e-5)[0] < epsilon(0.1, 1.0, 200, 1e-5)[0]
    assert epsilon(0.1, 2.0, 100, 1e-5)[0] < epsilon(0.1, 1.0, 100, 1e-5)[0]
    assert epsilon(0.05, 1.0, 100, 1e-5)[0] < epsilon(0.1, 1.0, 100, 1e-5)[0]
    assert epsilon(0.1, 1.0, 0, 1e-5)[0] == 0.0
