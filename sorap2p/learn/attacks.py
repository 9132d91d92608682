"""Byzantine trainer behaviours, for tests, benchmarks and the local testnet.

Each attack maps the honest delta a trainer computed to the delta it sends. They are pure
(no in-place changes) and seeded by the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from sorap2p.core.errors import ConfigError


class Attack(Protocol):
    name: ClassVar[str]

    def apply(self, delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True, slots=True)
class SignFlip:
    """Send ``-scale * delta``."""

    name: ClassVar[str] = "sign_flip"
    scale: float = 1.0

    def apply(self, delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return delta * -self.scale


@dataclass(frozen=True, slots=True)
class Scaling:
    """Send ``factor * delta`` (a boosted update)."""

    name: ClassVar[str] = "scaling"
    factor: float = 10.0

    def apply(self, delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return delta * self.factor


@dataclass(frozen=True, slots=True)
class GaussianNoise:
    """Send pure Gaussian noise with standard deviation ``std`` per coordinate."""

    name: ClassVar[str] = "gaussian_noise"
    std: float = 0.1

    def apply(self, delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(delta.shape, generator=generator, dtype=delta.dtype) * self.std


@dataclass(frozen=True, slots=True)
class FreeRider:
    """Return the global model unchanged (a zero delta) while claiming its sample count."""

    name: ClassVar[str] = "free_rider"

    def apply(self, delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros_like(delta)


ATTACKS: dict[str, type[Attack]] = {
    a.name: a for a in (SignFlip, Scaling, GaussianNoise, FreeRider)
}


def make_attack(name: str, **params: float) -> Attack:
    cls = ATTACKS.get(name)
    if cls is None:
        raise ConfigError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    return cls(**params)
