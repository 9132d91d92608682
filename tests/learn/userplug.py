"""A user's model factory and private data loader, imported by path in the tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_model(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 3))


def private_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 1, 8, 8, generator=g)
    y = torch.arange(30) % 3
    return TensorDataset(x[:24], y[:24]), TensorDataset(x[24:], y[24:])


NOT_CALLABLE = 3
