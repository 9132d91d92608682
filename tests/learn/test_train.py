from __future__ import annotations

import pytest
import torch

from sorap2p.core.errors import ConfigError
from sorap2p.learn.data import as_tensors, load_dataset
from sorap2p.learn.models import build_model
from sorap2p.learn.train import TrainConfig, evaluate, local_train
from sorap2p.learn.weights import ParamSpec


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_tensors(load_dataset("digits").train)
    return x[:200], y[:200]


def test_local_train_is_deterministic_and_pure(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = build_model("digits_cnn", seed=0)
    spec = ParamSpec.from_module(model)
    g0 = spec.read_from(model)
    g0_copy = g0.clone()
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9)
    a = local_train(model, spec, g0, digits, cfg, torch.Generator().manual_seed(1))
    b = local_train(model, spec, g0, digits, cfg, torch.Generator().manual_seed(1))
    c = local_train(model, spec, g0, digits, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(g0, g0_copy)
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, c.delta)
    assert a.num_samples == 200 and a.train_loss > 0
    before = evaluate(model, digits, vector=g0)
    after = evaluate(model, digits, vector=g0 + a.delta)
    assert after.loss < before.loss and after.num_samples == 200


def test_fedprox_keeps_local_model_closer(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = build_model("digits_mlp", seed=0)
    spec = ParamSpec.from_module(model)
    g0 = spec.read_from(model)
    norms = []
    for mu in (0.0, 1.0, 10.0):
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, prox_mu=mu)
        r = local_train(model, spec, g0, digits, cfg, torch.Generator().manual_seed(3))
        norms.append(float(r.delta.norm()))
    assert norms[0] > norms[1] > norms[2] > 0


def test_num_threads_and_validation(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = build_model("digits_mlp")
    spec = ParamSpec.from_module(model)
    before = torch.get_num_threads()
    try:
        local_train(
            model,
            spec,
            spec.read_from(model),
            digits,
            TrainConfig(num_threads=1),
            torch.Generator().manual_seed(0),
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (
        TrainConfig(epochs=0),
        TrainConfig(lr=0),
        TrainConfig(momentum=1.0),
        TrainConfig(prox_mu=-1),
        TrainConfig(num_threads=0),
    ):
        with pytest.raises(ConfigError):
            bad.validate()
