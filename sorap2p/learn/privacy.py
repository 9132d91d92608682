"""Differential privacy for updates: clipping + Gaussian noise, and an RDP accountant.

`privatize` clips a delta to L2 norm ``clip_norm`` and adds ``N(0, (noise_multiplier *
clip_norm)^2)`` per coordinate (the Gaussian mechanism with sensitivity ``clip_norm``). With
user-level DP-FedAvg (McMahan et al. 2018) a round samples each trainer with probability ``q``;
`epsilon` bounds the privacy loss after ``steps`` rounds for a given ``delta``.

The accountant is the Rényi-DP analysis of the sampled Gaussian mechanism (Mironov, Talwar,
Zhang 2019), a port of the algorithm in TensorFlow Privacy / Google's ``dp-accounting``
(integer orders: exact binomial sum; fractional orders: the two-series expansion), with the
RDP-to-(eps, delta) conversion of Canonne, Kamath, Steinke 2020 as ``dp-accounting`` uses it.
``dp-accounting`` itself pins ``attrs<24`` (trio needs newer) and pulls ``dm-tree``, so it is
not a dependency; the tests compare against values it computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import special  # type: ignore[import-untyped, unused-ignore]

from sorap2p.core.errors import ConfigError, LocalProtocolError

_MAX_SERIES_TERMS = 1000
DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(float(x) for x in range(11, 64))
) + (128.0, 256.0, 512.0, 1024.0)


@dataclass(frozen=True, slots=True)
class DPConfig:
    """Per-update clipping norm and noise multiplier (noise std = multiplier * clip)."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0

    def validate(self) -> None:
        if not self.clip_norm > 0 or not self.noise_multiplier >= 0:
            raise ConfigError("dp: clip_norm must be > 0 and noise_multiplier >= 0")


def privatize(delta: torch.Tensor, config: DPConfig, generator: torch.Generator) -> torch.Tensor:
    """Clip ``delta`` to ``clip_norm`` and add Gaussian noise (a new tensor)."""
    config.validate()
    if delta.dim() != 1 or delta.dtype != torch.float32:
        raise LocalProtocolError("privatize takes a float32 vector")
    norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
    scale = min(1.0, config.clip_norm / norm) if norm > 0 else 1.0
    noise = torch.randn(delta.shape, generator=generator, dtype=torch.float32)
    return delta * scale + noise * (config.noise_multiplier * config.clip_norm)


# -- RDP of the sampled Gaussian mechanism ---------------------------------------------------


def _log_add(x: float, y: float) -> float:
    a, b = min(x, y), max(x, y)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_erfc(x: float) -> float:
    return math.log(2) + float(special.log_ndtr(-x * 2**0.5))


def _log_comb(n: float, k: float) -> float:
    return float(special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    log1mq = math.log1p(-q)
    for i in range(alpha + 1):
        log_coef = _log_comb(alpha, i) + i * math.log(q) + (alpha - i) * log1mq
        log_a = _log_add(log_a, log_coef + (i * i - i) / (2 * sigma**2))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """Sec. 3.3 of arXiv:1908.10530; terms summed by absolute value (an upper bound)."""
    log_a0 = log_a1 = -math.inf
    last_s0 = last_s1 = -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log1mq = math.log1p(-q)
    for i in range(_MAX_SERIES_TERMS):
        log_coef = _log_comb(alpha, i)
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * log1mq
        log_t1 = log_coef + j * math.log(q) + i * log1mq
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        log_a0 = _log_add(log_a0, log_s0)
        log_a1 = _log_add(log_a1, log_s1)
        total = _log_add(log_a0, log_a1)
        if log_s0 < last_s0 and log_s1 < last_s1 and max(log_s0, log_s1) < total - 30:
            return total
        last_s0, last_s1 = log_s0, log_s1
    return math.inf  # no convergence: the order is excluded, as dp-accounting does


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: float) -> float:
    """RDP at ``order`` of one step of the Gaussian mechanism with Poisson sampling rate q."""
    if not 0 <= q <= 1 or order <= 1:
        raise ConfigError("need 0 <= q <= 1 and order > 1")
    if noise_multiplier == 0:
        return math.inf
    if q == 0:
        return 0.0
    if q == 1:
        return order / (2 * noise_multiplier**2)
    if math.isinf(order):
        return math.inf
    if float(order).is_integer():
        return _log_a_int(q, noise_multiplier, int(order)) / (order - 1)
    return _log_a_frac(q, noise_multiplier, order) / (order - 1)


def epsilon(
    q: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> tuple[float, float]:
    """``(eps, best_order)`` after ``steps`` compositions, for the given ``delta``."""
    if not 0 < delta < 1 or steps < 0:
        raise ConfigError("need 0 < delta < 1 and steps >= 0")
    best = (math.inf, orders[0])
    for a in orders:
        r = steps * rdp_sampled_gaussian(q, noise_multiplier, a)
        if delta**2 + math.expm1(-r) > 0:
            eps = 0.0
        elif a > 1.01:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf
        if eps < best[0]:
            best = (eps, a)
    return max(0.0, best[0]), best[1]
