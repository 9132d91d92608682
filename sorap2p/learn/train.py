"""Local training (FedAvg local SGD, FedProx) and evaluation, on in-memory tensors.

`local_train` starts from the round's global vector, runs ``epochs`` of minibatch SGD over the
trainer's data (shuffled by the caller's generator) and returns the update as a *delta*
``local - global`` (a float32 vector in the model's `ParamSpec` layout). With ``prox_mu > 0``
it adds FedProx's proximal term ``mu/2 * ||w - w_global||^2`` to the loss.

Both functions call ``torch.set_num_threads(config.num_threads)`` (a process-wide setting;
the default of 1 suits machines shared by several node processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from sorap2p.core.errors import ConfigError
from sorap2p.learn.data import as_tensors
from sorap2p.learn.weights import ParamSpec


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Local training hyper-parameters; ``prox_mu > 0`` selects FedProx."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    num_threads: int = 1
    eval_batch_size: int = 1024

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0:
            raise ConfigError("lr must be > 0")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.prox_mu < 0:
            raise ConfigError("need 0 <= momentum < 1, weight_decay >= 0, prox_mu >= 0")
        if self.num_threads < 1:
            raise ConfigError("num_threads must be >= 1")


@dataclass(frozen=True, slots=True)
class LocalResult:
    """A trainer's update: ``delta = local - global``, its sample count and mean train loss."""

    delta: torch.Tensor
    num_samples: int
    train_loss: float


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy over ``num_samples`` examples."""

    loss: float
    accuracy: float
    num_samples: int


DataLike = Dataset[Any] | tuple[torch.Tensor, torch.Tensor]


def _tensors(data: DataLike) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, tuple):
        return data
    return as_tensors(data)


def local_train(
    model: nn.Module,
    spec: ParamSpec,
    global_vector: torch.Tensor,
    data: DataLike,
    config: TrainConfig,
    generator: torch.Generator,
) -> LocalResult:
    """Train ``model`` from ``global_vector`` on ``data``; return the delta (inputs untouched)."""
    config.validate()
    torch.set_num_threads(config.num_threads)
    x, y = _tensors(data)
    n = len(y)
    if n == 0:
        raise ConfigError("a trainer needs at least one sample")
    spec.load_into(model, global_vector)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if config.prox_mu > 0 else []
    opt = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    total_loss = 0.0
    steps = 0
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if config.prox_mu > 0:
                with torch.no_grad():
                    for p, a in zip(params, anchors, strict=True):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - a, alpha=config.prox_mu)
            opt.step()
            total_loss += float(loss.detach())
            steps += 1
    with torch.no_grad():
        local = spec.read_from(model)
        delta = local.sub_(global_vector)
    return LocalResult(delta, n, total_loss / max(steps, 1))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    vector: torch.Tensor | None = None,
    spec: ParamSpec | None = None,
    batch_size: int = 1024,
) -> EvalResult:
    """Loss and accuracy of ``model`` (loaded from ``vector`` first if given) on ``data``."""
    if vector is not None:
        (spec or ParamSpec.from_module(model)).load_into(model, vector)
    model.eval()
    x, y = _tensors(data)
    n = len(y)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    loss_sum = 0.0
    correct = 0
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return EvalResult(loss_sum / n, correct / n, n)
