from __future__ import annotations

import pytest
import torch

from sorap2p.core.errors import ConfigError
from sorap2p.learn.data import (
    as_tensors,
    dirichlet_partition,
    holdout_split,
    load_dataset,
    root_split,
    trainer_shard,
)
from sorap2p.learn.models import build_model
from sorap2p.learn.weights import ParamSpec


@pytest.mark.parametrize(
    ("ref", "shape"),
    [("digits_cnn", (2, 1, 8, 8)), ("digits_mlp", (2, 1, 8, 8)), ("mnist1d_cnn", (2, 1, 40))],
)
def test_builtin_models_are_seeded_and_run(ref: str, shape: tuple[int, ...]) -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_model(ref, seed=3), build_model(ref, seed=3), build_model(ref, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    spec = ParamSpec.from_module(a)
    assert torch.equal(spec.read_from(a), spec.read_from(b))
    assert not torch.equal(spec.read_from(a), spec.read_from(c))
    assert a(torch.zeros(shape)).shape == (2, 10)


def test_user_model_and_loader_by_import_path() -> None:
    model = build_model("tests.learn.userplug:tiny_model", seed=0, width=6)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    splits = load_dataset("tests.learn.userplug:private_data")
    assert len(splits.train) == 24 and len(splits.test) == 6 and splits.num_classes == 3  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ref",
    ["nope", "tests.learn.userplug", "tests.learn.no_such:thing", "tests.learn.userplug:missing"],
)
def test_bad_refs_raise_config_error(ref: str) -> None:
    with pytest.raises(ConfigError):
        build_model(ref)
    with pytest.raises(ConfigError):
        load_dataset(ref)


def test_non_callable_factory() -> None:
    with pytest.raises(ConfigError):
        build_model("tests.learn.userplug:NOT_CALLABLE")


def test_digits_splits() -> None:
    splits = load_dataset("digits")
    x, y = as_tensors(splits.train)
    xt, yt = as_tensors(splits.test)
    assert x.shape[1:] == (1, 8, 8) and len(x) + len(xt) == 1797
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(y.tolist()) == set(range(10)) and set(yt.tolist()) == set(range(10))


def test_mnist1d_generated_offline() -> None:
    pytest.importorskip("mnist1d")
    splits = load_dataset("mnist1d", num_samples=500)
    x, y = as_tensors(splits.train)
    assert x.shape[1:] == (1, 40) and len(y) == 400
    model = build_model("mnist1d_cnn")
    assert model(x[:3]).shape == (3, 10)


def test_dirichlet_partition_is_seeded_disjoint_complete_and_skewed() -> None:
    labels = torch.arange(2000) % 10
    a = dirichlet_partition(labels, 10, 0.5, torch.Generator().manual_seed(1))
    b = dirichlet_partition(labels, 10, 0.5, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    allidx = torch.cat(a)
    assert len(allidx) == 2000 and len(torch.unique(allidx)) == 2000
    assert min(len(s) for s in a) >= 10

    def skew(shards: list[torch.Tensor]) -> float:
        # mean over shards of the largest class share
        return sum(
            float(torch.bincount(labels[s], minlength=10).max()) / len(s) for s in shards
        ) / len(shards)

    iid = dirichlet_partition(labels, 10, 1000.0, torch.Generator().manual_seed(1))
    assert skew(a) > 0.3 > 0.15 > skew(iid)


def test_trainer_shard_and_holdout() -> None:
    splits = load_dataset("digits")
    rest, held = holdout_split(splits.train, 0.1, torch.Generator().manual_seed(0))
    assert len(held) == round(len(splits.train) * 0.1)  # type: ignore[arg-type]
    assert not set(rest.indices) & set(held.indices)
    shards = [trainer_shard(rest, i, 5, 0.5, seed=9) for i in range(5)]
    assert sum(len(s) for s in shards) == len(rest)
    assert trainer_shard(rest, 2, 5, 0.5, seed=9).indices == shards[2].indices
    with pytest.raises(ConfigError):
        trainer_shard(rest, 5, 5, 0.5, seed=9)


def test_root_split_is_seeded_disjoint_and_optionally_balanced() -> None:
    ds = load_dataset("digits").train
    rest, root = root_split(ds, 100, torch.Generator().manual_seed(1))
    _, root2 = root_split(ds, 100, torch.Generator().manual_seed(1))
    assert list(root.indices) == list(root2.indices) and len(root) == 100
    assert set(rest.indices).isdisjoint(root.indices)
    assert len(rest) + len(root) == len(ds)  # type: ignore[arg-type]
    _, bal = root_split(ds, 100, torch.Generator().manual_seed(1), balanced=True)
    assert torch.bincount(as_tensors(bal)[1], minlength=10).tolist() == [10] * 10
    with pytest.raises(ConfigError):
        root_split(ds, 0, torch.Generator())


def test_federation_root_set_leaves_shards_unchanged_and_root_update_is_seeded() -> None:
    from sorap2p.learn.simulate import FederationConfig, prepare, root_update

    plain = prepare(FederationConfig(num_trainers=4))
    fed = prepare(FederationConfig(num_trainers=4, root_size=50))
    assert plain.root_data is None and fed.root_data is not None
    for (xa, ya), (xb, yb) in zip(plain.shards, fed.shards, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the root set is carved from the validators' held-out part: disjoint from every shard
    assert len(fed.root_data[1]) == 50
    assert len(fed.validator_data[1]) + 50 == len(plain.validator_data[1])
    held = {tuple(x.flatten().tolist()) for x in plain.validator_data[0]}
    assert all(tuple(x.flatten().tolist()) in held for x in fed.root_data[0])
    a, b = root_update(fed, 3), root_update(fed, 3)
    assert torch.equal(a, b) and a.shape == (fed.spec.size,) and float(a.norm()) > 0
    assert not torch.equal(a, root_update(fed, 4))
    with pytest.raises(ConfigError):
        root_update(plain, 0)


def test_round_reference_follows_the_strategys_reference_epochs() -> None:
    from dataclasses import replace

    from sorap2p.learn.simulate import (
        FederationConfig,
        prepare,
        root_update,
        round_updates,
        run_rounds,
    )
    from sorap2p.learn.strategies import RobustFLTrust, apply_delta

    fed = prepare(FederationConfig(num_trainers=3, root_size=40))
    start = fed.global_vector.clone()
    three = replace(fed.config.train, epochs=3)
    assert not torch.equal(root_update(fed, 0, three), root_update(fed, 0))
    strategy = RobustFLTrust(reference_weight=40.0, reference_epochs=3)
    batch = round_updates(fed, 0, reference=True, reference_train=three)
    assert batch.reference is not None and torch.equal(batch.reference, root_update(fed, 0, three))
    expected = apply_delta(start, strategy.aggregate(batch).delta)
    run_rounds(fed, strategy, 1)
    assert torch.equal(fed.global_vector, expected)


def test_without_trainers_is_the_perfect_filter() -> None:
    from sorap2p.learn.simulate import WithoutTrainers, trainer_key
    from sorap2p.learn.strategies import FedAvg, RobustFLTrust, UpdateBatch, needs_reference

    rows = torch.tensor([[1.0, 0.0], [100.0, 100.0], [0.0, 3.0]])
    batch = UpdateBatch.create(rows, [1.0, 5.0, 2.0], [trainer_key(i) for i in range(3)])
    res = WithoutTrainers(FedAvg(), frozenset({1})).aggregate(batch)
    assert res.selected == (0, 2)
    torch.testing.assert_close(res.delta, torch.tensor([1.0 / 3, 2.0]))
    oracle = WithoutTrainers(RobustFLTrust(reference_epochs=4), frozenset({0}))
    assert needs_reference(oracle) and oracle.reference_epochs == 4
    assert torch.equal(rows, torch.tensor([[1.0, 0.0], [100.0, 100.0], [0.0, 3.0]]))
