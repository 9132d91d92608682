"""Datasets: built-in offline demos, private data by import path, a non-IID partitioner.

* ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 real images, no download), as
  ``(N, 1, 8, 8)`` float32 in [0, 1] and int64 labels; a seeded 80/20 train/test split.
* ``"mnist1d"``: generated offline by the optional ``mnist1d`` package (``make_dataset()``,
  never a download), ``(N, 1, 40)``; raises ConfigError when the package is absent
  (``pip install 'sorap2p[mnist1d]'``).
* ``"pkg.module:loader"``: a user callable returning a `DatasetSplits` or a ``(train, test)``
  pair of torch datasets; it may read private files: that I/O is the user's, not ours.

`dirichlet_partition` splits a label vector into ``n`` non-IID shards (Dirichlet(alpha) class
proportions per shard, seeded); `trainer_shard` gives trainer ``i`` of ``n`` its own shard
after `holdout_split` has set aside the validator's held-out part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from sorap2p.core.errors import ConfigError
from sorap2p.learn.models import resolve_import_path

TensorPair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, slots=True)
class DatasetSplits:
    """A train and a test dataset of ``(input, int label)`` items."""

    train: Dataset[Any]
    test: Dataset[Any]
    num_classes: int


def as_tensors(dataset: Dataset[Any]) -> TensorPair:
    """``(inputs, labels)`` tensors of a dataset, without copying for TensorDatasets.

    Subsets of TensorDatasets index the underlying tensors once; other datasets are
    materialised item by item (fine for the small local datasets of a trainer).
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return x, y
    if isinstance(dataset, Subset):
        x, y = as_tensors(dataset.dataset)
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return x[idx], y[idx]
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    xs = torch.stack([torch.as_tensor(item[0]) for item in items])
    ys = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    return xs, ys


def _to_x(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32)).unsqueeze(1)


def _to_y(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _seeded_split(y: torch.Tensor, test_fraction: float, seed: int) -> TensorPair:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = round(len(y) * test_fraction)
    return perm[n_test:], perm[:n_test]


def load_digits_splits(*, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """scikit-learn's bundled digits as tensors, split 80/20 by a seeded permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    train_idx, test_idx = _seeded_split(y, test_fraction, seed)
    return DatasetSplits(
        TensorDataset(x[train_idx].clone(), y[train_idx].clone()),
        TensorDataset(x[test_idx].clone(), y[test_idx].clone()),
        10,
    )


def load_mnist1d_splits(*, seed: int = 42, num_samples: int = 5000) -> DatasetSplits:
    """mnist1d generated offline (requires the optional ``mnist1d`` package)."""
    try:
        from mnist1d.data import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            get_dataset_args,
            make_dataset,
        )
    except ImportError as exc:
        raise ConfigError(
            "dataset 'mnist1d' needs the optional package: pip install 'sorap2p[mnist1d]'"
        ) from exc
    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    data = make_dataset(args)
    return DatasetSplits(
        TensorDataset(_to_x(data["x"]), _to_y(data["y"])),
        TensorDataset(_to_x(data["x_test"]), _to_y(data["y_test"])),
        10,
    )


def load_dataset(ref: str, **kwargs: Any) -> DatasetSplits:
    """Built-in ``"digits"`` / ``"mnist1d"``, or a user loader ``"pkg.module:loader"``."""
    if ref == "digits":
        return load_digits_splits(**kwargs)
    if ref == "mnist1d":
        return load_mnist1d_splits(**kwargs)
    if ":" not in ref:
        raise ConfigError(f"unknown dataset {ref!r}: use 'digits', 'mnist1d' or 'pkg.mod:loader'")
    loader = resolve_import_path(ref)
    if not callable(loader):
        raise ConfigError(f"dataset loader {ref!r} is not callable")
    result = loader(**kwargs)
    if isinstance(result, DatasetSplits):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        train, test = cast(tuple[Dataset[Any], Dataset[Any]], result)
        _, y = as_tensors(train)
        return DatasetSplits(train, test, int(y.max().item()) + 1 if len(y) else 0)
    raise ConfigError(f"loader {ref!r} must return DatasetSplits or (train, test)")


def dirichlet_partition(
    labels: torch.Tensor,
    num_shards: int,
    alpha: float,
    generator: torch.Generator,
    *,
    min_size: int = 10,
    max_tries: int = 100,
) -> list[torch.Tensor]:
    """Split sample indices into ``num_shards`` non-IID shards.

    For each class, proportions over the shards are drawn from Dirichlet(alpha) and that
    class's (shuffled) samples are cut accordingly; small alpha means more skew. Redraws
    (up to ``max_tries``) until every shard has at least ``min_size`` samples. Deterministic
    given the generator's state. Each returned index tensor is sorted.
    """
    if num_shards < 1 or alpha <= 0:
        raise ConfigError("num_shards must be >= 1 and alpha > 0")
    labels = labels.reshape(-1).long()
    classes = torch.unique(labels)
    # numpy's Dirichlet sampler, seeded from the caller's torch generator
    rng = np.random.default_rng(
        int(torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64).item())
    )
    for _ in range(max_tries):
        shards: list[list[torch.Tensor]] = [[] for _ in range(num_shards)]
        for c in classes.tolist():
            idx = torch.nonzero(labels == c).reshape(-1)
            idx = idx[torch.randperm(len(idx), generator=generator)]
            props = torch.as_tensor(rng.dirichlet(np.full(num_shards, float(alpha))))
            cuts = (torch.cumsum(props, 0) * len(idx)).round().long().tolist()[:-1]
            for s, part in enumerate(torch.tensor_split(idx, cuts)):
                shards[s].append(part)
        out = [torch.sort(torch.cat(parts)).values for parts in shards]
        if min(len(s) for s in out) >= min_size:
            return out
    raise ConfigError(
        f"could not give each of {num_shards} shards >= {min_size} samples with alpha={alpha}"
    )


def holdout_split(
    dataset: Dataset[Any], fraction: float, generator: torch.Generator
) -> tuple[Subset[Any], Subset[Any]]:
    """``(rest, held_out)``: a seeded random ``fraction`` kept back for the validators."""
    if not 0 <= fraction < 1:
        raise ConfigError("holdout fraction must be in [0, 1)")
    n = len(dataset)  # type: ignore[arg-type]
    perm = torch.randperm(n, generator=generator).tolist()
    n_hold = round(n * fraction)
    return Subset(dataset, sorted(perm[n_hold:])), Subset(dataset, sorted(perm[:n_hold]))


def root_split(
    dataset: Dataset[Any], size: int, generator: torch.Generator, *, balanced: bool = False
) -> tuple[Subset[Any], Subset[Any]]:
    """``(rest, root)``: ``size`` samples drawn at random (seeded) as a root dataset.

    The *root dataset* is FLTrust's small, clean, labelled set (the paper draws 100 samples
    uniformly from the training data): the aggregator trains the round's global model on it
    to get the reference delta that every update is compared with, and validators recompute
    that delta from the same public samples. Cut it from the training split so that it is
    disjoint from every trainer's shard (here: from the validators' held-out part); it must
    not be test data. ``balanced=True`` takes ``size // num_classes`` samples of each class
    (the first ones of a seeded permutation) instead of a uniform draw.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if not 0 < size < n:
        raise ConfigError(f"root dataset size must be in (0, {n})")
    perm = torch.randperm(n, generator=generator)
    if balanced:
        _, y = as_tensors(dataset)
        classes = torch.unique(y).tolist()
        per = size // len(classes)
        labels = y[perm].tolist()
        counts = dict.fromkeys(classes, 0)
        picked: list[int] = []
        for pos, label in enumerate(labels):
            if counts[label] < per:
                counts[label] += 1
                picked.append(pos)
        if len(picked) != per * len(classes):
            raise ConfigError(f"not {per} samples of every class for a balanced root set")
        chosen = set(picked)
        root = [int(perm[p]) for p in picked]
        rest = [int(perm[p]) for p in range(n) if p not in chosen]
    else:
        root, rest = perm[:size].tolist(), perm[size:].tolist()
    return Subset(dataset, sorted(rest)), Subset(dataset, sorted(root))


def trainer_shard(
    dataset: Dataset[Any],
    index: int,
    num_trainers: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
) -> Subset[Any]:
    """Trainer ``index`` of ``num_trainers``'s own non-IID shard (same seed -> same shards)."""
    if not 0 <= index < num_trainers:
        raise ConfigError(f"trainer index {index} not in [0, {num_trainers})")
    _, y = as_tensors(dataset)
    shards = dirichlet_partition(
        y, num_trainers, alpha, torch.Generator().manual_seed(seed), min_size=min_size
    )
    return Subset(dataset, shards[index].tolist())


def label_histogram(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Counts per class (for reports and tests)."""
    return cast(list[int], torch.bincount(labels.long(), minlength=num_classes).tolist())


__all__: Sequence[str] = (
    "DatasetSplits",
    "as_tensors",
    "dirichlet_partition",
    "holdout_split",
    "label_histogram",
    "load_dataset",
    "load_digits_splits",
    "load_mnist1d_splits",
    "root_split",
    "trainer_shard",
)
