"""An in-memory federation: n trainers, one aggregation strategy, r rounds (no I/O).

This is the learning half of a round without the network: trainer ``i`` trains on its own
non-IID shard from the round's global model, optional per-trainer transforms (attacks,
compression, DP) turn its delta into what it would send, the strategy aggregates, the global
model moves. Tests, benchmarks and the local testnet's reference numbers use it; nodes call
the same functions (`local_train`, `UpdateBatch`, strategies) one role at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sorap2p.core.errors import ConfigError
from sorap2p.learn.data import (
    DatasetSplits,
    as_tensors,
    dirichlet_partition,
    holdout_split,
    load_dataset,
    root_split,
)
from sorap2p.learn.models import build_model
from sorap2p.learn.strategies import (
    AggregateResult,
    Strategy,
    UpdateBatch,
    apply_delta,
    needs_reference,
    reference_epochs,
)
from sorap2p.learn.train import EvalResult, TrainConfig, evaluate, local_train
from sorap2p.learn.weights import ParamSpec

DeltaTransform = Callable[[int, int, torch.Tensor], torch.Tensor]
"""``(trainer_index, round, delta) -> delta to send``."""


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """What to simulate; every random choice derives from ``seed``."""

    model: str = "digits_cnn"
    dataset: str = "digits"
    num_trainers: int = 10
    alpha: float = 0.5
    rounds: int = 20
    holdout_fraction: float = 0.1
    server_lr: float = 1.0
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    root_size: int = 0
    """Samples of the server's root dataset (FLTrust), cut from the validators' held-out
    part (so the trainers' shards do not change); 0: none."""
    root_balanced: bool = False
    """Draw the root dataset class-balanced (``root_size // classes`` per class)."""

    def validate(self) -> None:
        if self.num_trainers < 1 or self.rounds < 0 or self.alpha <= 0:
            raise ConfigError("num_trainers >= 1, rounds >= 0 and alpha > 0 are required")
        if self.root_size < 0:
            raise ConfigError("root_size must be >= 0")
        self.train.validate()


@dataclass(slots=True)
class Federation:
    """The prepared state of a simulation: data shards, model, layout, global vector."""

    config: FederationConfig
    splits: DatasetSplits
    shards: list[tuple[torch.Tensor, torch.Tensor]]
    validator_data: tuple[torch.Tensor, torch.Tensor]
    test_data: tuple[torch.Tensor, torch.Tensor]
    model: torch.nn.Module
    spec: ParamSpec
    global_vector: torch.Tensor
    root_data: tuple[torch.Tensor, torch.Tensor] | None = None

    def evaluate(
        self, vector: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> EvalResult:
        return evaluate(self.model, data or self.test_data, vector=vector, spec=self.spec)


def prepare(config: FederationConfig, splits: DatasetSplits | None = None) -> Federation:
    """Load data, cut the validator's held-out part and the trainers' shards, build the model."""
    config.validate()
    splits = splits or load_dataset(config.dataset)
    g = torch.Generator().manual_seed(config.seed)
    pool, held = holdout_split(splits.train, config.holdout_fraction, g)
    px, py = as_tensors(pool)
    parts = dirichlet_partition(py, config.num_trainers, config.alpha, g)
    shards = [(px[idx], py[idx]) for idx in parts]
    root = None
    if config.root_size:
        # cut from the held-out part (training split, disjoint from every shard) with its own
        # generator, so that the shards are the same as without a root dataset
        rg = torch.Generator().manual_seed(config.seed * 1_000_003 + ROOT_STREAM)
        held, root_set = root_split(held, config.root_size, rg, balanced=config.root_balanced)
        root = as_tensors(root_set)
    model = build_model(config.model, seed=config.seed)
    spec = ParamSpec.from_module(model)
    return Federation(
        config,
        splits,
        shards,
        as_tensors(held),
        as_tensors(splits.test),
        model,
        spec,
        spec.read_from(model),
        root,
    )


ROOT_STREAM = 1 << 40
"""Offset of the root dataset's seeds (the root draw and the server's training per round)."""


def root_update(
    fed: Federation, round_index: int, train: TrainConfig | None = None
) -> torch.Tensor:
    """The server's reference delta: local training on the root dataset from the global model.

    Same settings as the trainers (``train`` or the config's), seeded by the round; what an
    FLTrust aggregator computes and a validator recomputes.
    """
    if fed.root_data is None:
        raise ConfigError("this federation has no root dataset (set root_size)")
    g = torch.Generator().manual_seed(
        fed.config.seed * 1_000_003 + round_index * 1009 + ROOT_STREAM
    )
    cfg = train or fed.config.train
    return local_train(fed.model, fed.spec, fed.global_vector, fed.root_data, cfg, g).delta


def round_updates(
    fed: Federation,
    round_index: int,
    transform: DeltaTransform | None = None,
    train: TrainConfig | None = None,
    *,
    reference: bool = False,
    reference_train: TrainConfig | None = None,
) -> UpdateBatch:
    """Every trainer's (transformed) delta for this round, stacked; keys are trainer indices.

    ``reference=True`` also attaches the server's `root_update` (for FLTrust), trained with
    ``reference_train`` (default: the trainers' settings).
    """
    cfg = train or fed.config.train
    n = len(fed.shards)
    deltas = torch.empty(n, fed.spec.size, dtype=torch.float32)
    weights: list[float] = []
    for i, data in enumerate(fed.shards):
        g = torch.Generator().manual_seed(fed.config.seed * 1_000_003 + round_index * 1009 + i)
        result = local_train(fed.model, fed.spec, fed.global_vector, data, cfg, g)
        delta = result.delta if transform is None else transform(i, round_index, result.delta)
        deltas[i].copy_(delta)
        weights.append(float(result.num_samples))
    keys = [trainer_key(i) for i in range(n)]
    ref = root_update(fed, round_index, reference_train or cfg) if reference else None
    return UpdateBatch.create(deltas, weights, keys, ref)


@dataclass(frozen=True, slots=True)
class RoundRecord:
    round: int
    test: EvalResult
    result: AggregateResult


def run_rounds(
    fed: Federation,
    strategy: Strategy,
    rounds: int | None = None,
    *,
    transform: DeltaTransform | None = None,
    on_round: Callable[[RoundRecord], bool | None] | None = None,
) -> list[RoundRecord]:
    """Run rounds, moving ``fed.global_vector``; stop early when ``on_round`` returns True.

    Strategies that need a reference get the server's `root_update`, trained for the
    strategy's `reference_epochs` (the trainers' settings otherwise)."""
    history: list[RoundRecord] = []
    cfg = fed.config.train
    ref_cfg = replace(cfg, epochs=reference_epochs(strategy, cfg.epochs))
    for r in range(fed.config.rounds if rounds is None else rounds):
        batch = round_updates(
            fed, r, transform, reference=needs_reference(strategy), reference_train=ref_cfg
        )
        result = strategy.aggregate(batch)
        fed.global_vector = apply_delta(fed.global_vector, result.delta, fed.config.server_lr)
        record = RoundRecord(r, fed.evaluate(fed.global_vector), result)
        history.append(record)
        if on_round is not None and on_round(record):
            break
    return history


def centralized_baseline(
    config: FederationConfig, epochs: int = 20, splits: DatasetSplits | None = None
) -> EvalResult:
    """Train one model on all trainers' data pooled (same holdout cut) and test it."""
    fed = prepare(config, splits)
    x = torch.cat([s[0] for s in fed.shards])
    y = torch.cat([s[1] for s in fed.shards])
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        momentum=config.train.momentum,
        num_threads=config.train.num_threads,
    )
    res = local_train(
        fed.model,
        fed.spec,
        fed.global_vector,
        (x, y),
        cfg,
        torch.Generator().manual_seed(config.seed),
    )
    return fed.evaluate(fed.global_vector + res.delta)


def trainer_key(i: int) -> bytes:
    """The update key of trainer ``i`` in `round_updates` batches."""
    return f"trainer-{i:04d}".encode()


@dataclass(frozen=True, slots=True)
class WithoutTrainers:
    """Oracle for experiments: drop the given trainers' rows, aggregate the rest with ``inner``.

    With the Byzantine trainers dropped this is a perfect filter: what any rule that removes
    exactly them gets, i.e. the clean run minus their data."""

    inner: Strategy
    trainers: frozenset[int]

    @property
    def name(self) -> str:
        return f"{self.inner.name}_without"

    @property
    def needs_reference(self) -> bool:
        return needs_reference(self.inner)

    @property
    def reference_epochs(self) -> int:
        return reference_epochs(self.inner, 0)

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        drop = {trainer_key(i) for i in self.trainers}
        keep = [i for i in range(batch.n) if batch.keys[i] not in drop]
        idx = torch.as_tensor(keep, dtype=torch.long)
        sub = UpdateBatch.create(
            batch.deltas.index_select(0, idx),
            [batch.weights[i] for i in keep],
            [batch.keys[i] for i in keep],
            batch.reference,
        )
        res = self.inner.aggregate(sub)
        scores = {keep[j]: v for j, v in res.scores.items()}
        return AggregateResult(res.delta, tuple(keep[j] for j in res.selected), scores)

    def params(self) -> dict[str, Any]:
        return self.inner.params()


def attack_transform(
    attacks: Mapping[int, Callable[[torch.Tensor, torch.Generator], torch.Tensor]], seed: int = 0
) -> DeltaTransform:
    """A transform applying ``attacks[i]`` to trainer ``i``'s delta (others unchanged)."""

    def transform(i: int, r: int, delta: torch.Tensor) -> torch.Tensor:
        fn = attacks.get(i)
        if fn is None:
            return delta
        return fn(delta, torch.Generator().manual_seed(seed * 7919 + r * 131 + i))

    return transform


__all__ = [
    "DeltaTransform",
    "Federation",
    "FederationConfig",
    "RoundRecord",
    "WithoutTrainers",
    "attack_transform",
    "centralized_baseline",
    "prepare",
    "root_update",
    "round_updates",
    "run_rounds",
    "trainer_key",
]
