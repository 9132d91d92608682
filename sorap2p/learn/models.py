"""Model registry: built-in demo models and user models by import path.

A model reference is either a built-in name (``"digits_cnn"``, ``"digits_mlp"``,
``"mnist1d_cnn"``) or an import path ``"pkg.module:factory"`` naming a callable that returns an
``nn.Module``. `build_model` seeds parameter initialisation without touching the caller's
global RNG state, so every node builds bit-identical initial weights from (ref, seed, kwargs).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import torch
from torch import nn

from sorap2p.core.errors import ConfigError

ModelFactory = Callable[..., nn.Module]


class DigitsCNN(nn.Module):
    """A ~38k-parameter CNN for scikit-learn's 8x8 digits (input ``(N, 1, 8, 8)``)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 2 * 2, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # 8x8 -> 4x4
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # 4x4 -> 2x2
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)  # type: ignore[no-any-return]


class DigitsMLP(nn.Module):
    """A small MLP for the 8x8 digits (accepts ``(N, 1, 8, 8)`` or ``(N, 64)``)."""

    def __init__(self, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class Mnist1dCNN(nn.Module):
    """A 1-D CNN for mnist1d (input ``(N, 1, 40)``)."""

    def __init__(self, num_classes: int = 10, length: int = 40, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, stride=2)
        self.conv3 = nn.Conv1d(channels, channels, 3, padding=1, stride=2)
        self.fc = nn.Linear(channels * ((length + 3) // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.flatten(1))  # type: ignore[no-any-return]


BUILTIN_MODELS: Final[Mapping[str, ModelFactory]] = MappingProxyType(
    {"digits_cnn": DigitsCNN, "digits_mlp": DigitsMLP, "mnist1d_cnn": Mnist1dCNN}
)


def resolve_import_path(ref: str) -> Any:
    """Import ``"pkg.module:attr"`` and return the attribute; bad paths raise ConfigError."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"expected 'pkg.module:name', got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} (from {ref!r}): {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}") from exc
    return obj


def resolve_model_factory(ref: str) -> ModelFactory:
    """The factory for a built-in name or an import path."""
    if ref in BUILTIN_MODELS:
        return BUILTIN_MODELS[ref]
    if ":" not in ref:
        raise ConfigError(
            f"unknown model {ref!r}: use one of {sorted(BUILTIN_MODELS)} or 'pkg.module:factory'"
        )
    factory = resolve_import_path(ref)
    if not callable(factory):
        raise ConfigError(f"model factory {ref!r} is not callable")
    return factory  # type: ignore[no-any-return]


def build_model(ref: str, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build model ``ref`` with parameters initialised from ``seed`` (global RNG untouched)."""
    factory = resolve_model_factory(ref)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {ref!r} returned {type(model).__name__}, not nn.Module")
    return model
