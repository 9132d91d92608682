"""Aggregation strategies: pure functions over a stacked matrix of update deltas.

An `UpdateBatch` holds ``n`` updates as rows of one ``(n, d)`` float32 matrix of *deltas*
(local model minus the round's global model), a positive weight per row (its sample count)
and a sortable key per row (the update's CID). Strategies are frozen dataclasses whose
``aggregate(batch) -> AggregateResult`` never modifies the batch.

Determinism: every strategy reads rows in ascending key order, so the result does not depend
on the order in which updates arrived or were stacked, and a validator that stacks the same
updates recomputes the same bits on the same platform (same torch build, CPU kind and
``torch.set_num_threads``). Precision, stated for recomputation elsewhere:

* means (FedAvg, FedProx, Multi-Krum's average) are float32 GEMVs over column blocks of
  `BLOCK` columns with float32 coefficients ``w_i / sum(w)`` computed in float64; two correct
  platforms agree within ``2 * n * 2**-24 * sum_i |c_i x_ij|`` per coordinate;
* trimmed mean and median sort each column in float32 and sum the kept values in float32
  in sorted order (median of an even count: ``(a + b) * 0.5``); sorted values do not depend
  on the platform, only the final float32 sums do (same bound);
* Krum's Gram matrix is a float32 GEMM per column block, blocks accumulated in float64;
  selection ties break by key order.

Rows already in key order are read in place (the aggregator should allocate rows by key);
otherwise each column block is gathered into a small buffer first (same results, a bit slower).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Protocol

import torch

from sorap2p.core.cid import Cid
from sorap2p.core.errors import ConfigError, LocalProtocolError

BLOCK: Final = 1 << 18
"""Columns per block (1 MiB of float32 per row): the unit of accumulation order."""

UpdateKey = Cid | bytes | str


def allocate_rows(n: int, d: int) -> torch.Tensor:
    """A zeroed ``(n, d)`` float32 matrix whose rows are 64-byte aligned (stride padded to 16).

    Decrypt or copy update ``j`` (in ascending key order) into row ``j``: strategies then read
    the rows in place instead of gathering column blocks.
    """
    stride = -(-d // 16) * 16
    return torch.zeros(n, stride, dtype=torch.float32)[:, :d]


def key_bytes(key: UpdateKey) -> bytes:
    """The sort key of an update: a CID's binary form, or the bytes / UTF-8 text given."""
    if isinstance(key, Cid):
        return key.raw
    if isinstance(key, str):
        return key.encode()
    return bytes(key)


@dataclass(frozen=True, slots=True)
class UpdateBatch:
    """``n`` update deltas as rows of an ``(n, d)`` float32 matrix, with weights and keys."""

    deltas: torch.Tensor
    weights: tuple[float, ...]
    keys: tuple[bytes, ...]
    order: tuple[int, ...] = field(default=())

    @classmethod
    def create(
        cls,
        deltas: torch.Tensor,
        weights: Sequence[float] | torch.Tensor,
        keys: Sequence[UpdateKey],
    ) -> UpdateBatch:
        """Validate and wrap (no copy). Keys must be unique; weights finite and > 0."""
        if deltas.dim() != 2 or deltas.dtype != torch.float32:
            raise LocalProtocolError("deltas must be a 2-D float32 tensor (n, d)")
        if deltas.stride(1) != 1:
            raise LocalProtocolError("deltas rows must be contiguous")
        n = deltas.shape[0]
        w = tuple(
            float(x) for x in (weights.tolist() if isinstance(weights, torch.Tensor) else weights)
        )
        kb = tuple(key_bytes(k) for k in keys)
        if len(w) != n or len(kb) != n:
            raise LocalProtocolError(f"{n} rows but {len(w)} weights and {len(kb)} keys")
        if n == 0:
            raise LocalProtocolError("an update batch needs at least one row")
        if not all(x > 0 and x < float("inf") for x in w):
            raise LocalProtocolError("weights must be finite and > 0")
        if len(set(kb)) != n:
            raise LocalProtocolError("update keys must be unique")
        order = tuple(sorted(range(n), key=kb.__getitem__))
        return cls(deltas, w, kb, order)

    @property
    def n(self) -> int:
        return int(self.deltas.shape[0])

    @property
    def d(self) -> int:
        return int(self.deltas.shape[1])

    def without(self, row: int) -> UpdateBatch:
        """A batch without ``row`` (copies the other rows; used for leave-one-out)."""
        keep = [i for i in range(self.n) if i != row]
        idx = torch.as_tensor(keep, dtype=torch.long)
        return UpdateBatch.create(
            self.deltas.index_select(0, idx),
            [self.weights[i] for i in keep],
            [self.keys[i] for i in keep],
        )

    def replace_deltas(self, deltas: torch.Tensor) -> UpdateBatch:
        if deltas.shape != self.deltas.shape:
            raise LocalProtocolError("replacement deltas must have the same shape")
        return UpdateBatch(deltas, self.weights, self.keys, self.order)


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The aggregated delta, the rows that entered it (ascending key order) and diagnostics."""

    delta: torch.Tensor
    selected: tuple[int, ...]
    scores: Mapping[int, float] = field(default_factory=dict)


class Strategy(Protocol):
    """A frozen, I/O-free aggregation rule."""

    name: ClassVar[str]

    def aggregate(self, batch: UpdateBatch) -> AggregateResult: ...

    def params(self) -> dict[str, Any]: ...


# -- kernels --------------------------------------------------------------------------


def _row_blocks(deltas: torch.Tensor, rows: Sequence[int]) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, block)`` with ``block[j] = deltas[rows[j], start:start+B]``.

    Reads in place when ``rows`` is ``0..n-1`` and the rows are 64-byte aligned; otherwise
    gathers each block into a reused, aligned buffer (identical arithmetic afterwards).
    """
    n_all, d = deltas.shape
    in_place = (
        list(rows) == list(range(n_all))
        and (deltas.stride(0) % 16 == 0 or n_all == 1)
        and deltas.data_ptr() % 64 == 0
    )
    if in_place:
        for s in range(0, d, BLOCK):
            yield s, deltas[:, s : s + BLOCK]
        return
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    width = min(BLOCK, d)
    buf = torch.empty(len(rows), width, dtype=torch.float32)
    for s in range(0, d, BLOCK):
        e = min(s + BLOCK, d)
        # a (k, e-s) view of an aligned buffer whose row stride is BLOCK (or d)
        block = buf[:, : e - s]
        torch.index_select(deltas[:, s:e], 0, idx, out=block)
        yield s, block


def weighted_sum(
    deltas: torch.Tensor, rows: Sequence[int], coeffs: Sequence[float]
) -> torch.Tensor:
    """``sum_j coeffs[j] * deltas[rows[j]]`` as float32, rows read in the given order."""
    c = torch.tensor(list(coeffs), dtype=torch.float32)
    out = torch.empty(deltas.shape[1], dtype=torch.float32)
    for s, block in _row_blocks(deltas, rows):
        torch.mv(block.t(), c, out=out[s : s + block.shape[1]])
    return out


def gram_matrix(deltas: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``G[a, b] = <deltas[rows[a]], deltas[rows[b]]>`` (float32 GEMM per block, float64 sum)."""
    k = len(rows)
    g = torch.zeros(k, k, dtype=torch.float64)
    for _, block in _row_blocks(deltas, rows):
        g += (block @ block.t()).double()
    return g


_NETWORK_MAX_ROWS: Final = 256


def _bitonic_sort_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sort each column of ``a`` (``(N, C)``, N a power of two) ascending; ``b`` is scratch.

    A bitonic sorting network whose compare-exchange layers are strided views of the block
    (min/max over many rows at once, written to the other buffer), so a cache-sized block is
    sorted without gathers. Returns whichever of ``a`` / ``b`` holds the result.
    """
    n, c = a.shape
    p = 1
    while p < n:
        v, w = a.view(n // (2 * p), 2 * p, c), b.view(n // (2 * p), 2 * p, c)
        lo, hi_rev = v[:, :p], v[:, p:].flip(1)
        torch.minimum(lo, hi_rev, out=w[:, :p])
        w[:, p:].copy_(torch.maximum(lo, hi_rev).flip(1))
        a, b = b, a
        k = p // 2
        while k >= 1:
            v, w = a.view(n // (2 * k), 2, k, c), b.view(n // (2 * k), 2, k, c)
            torch.minimum(v[:, 0], v[:, 1], out=w[:, 0])
            torch.maximum(v[:, 0], v[:, 1], out=w[:, 1])
            a, b = b, a
            k //= 2
        p *= 2
    return a


def _sorted_reduce(
    deltas: torch.Tensor, rows: Sequence[int], trim: int, median: bool
) -> torch.Tensor:
    """Per column: the median, or the mean of the values left after trimming ``trim`` per side.

    Columns are sorted block by block (bitonic network padded with +inf up to a power of two;
    ``torch.sort`` beyond 256 rows). Rows must be finite (NaN would spread through a column).
    """
    n = len(rows)
    d = deltas.shape[1]
    out = torch.empty(d, dtype=torch.float32)
    width = 1 << 12
    size = 1 << max(n - 1, 1).bit_length()
    use_network = n <= _NETWORK_MAX_ROWS
    buf = torch.empty(size, width, dtype=torch.float32)
    scratch = torch.empty(size, width, dtype=torch.float32)
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    for s in range(0, d, width):
        e = min(s + width, d)
        if use_network:
            if e - s != width:
                buf = torch.empty(size, e - s, dtype=torch.float32)
                scratch = torch.empty(size, e - s, dtype=torch.float32)
            buf[n:].fill_(float("inf"))
            torch.index_select(deltas[:, s:e], 0, idx, out=buf[:n])
            ordered = _bitonic_sort_rows(buf, scratch)
        else:
            ordered = torch.sort(deltas[:, s:e].index_select(0, idx), dim=0).values
        dst = out[s:e]
        if median:
            if n % 2:
                dst.copy_(ordered[n // 2])
            else:
                torch.add(ordered[n // 2 - 1], ordered[n // 2], out=dst).mul_(0.5)
        else:
            torch.sum(ordered[trim : n - trim], dim=0, out=dst).div_(n - 2 * trim)
    return out


def row_norms(deltas: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
    """L2 norm of each row (float64; per block in float64, blocks summed in order)."""
    rows = list(range(deltas.shape[0])) if rows is None else rows
    sq = torch.zeros(len(rows), dtype=torch.float64)
    for _, block in _row_blocks(deltas, rows):
        sq += torch.linalg.vector_norm(block, dim=1, dtype=torch.float64).square()
    return sq.sqrt()


def _mean_coeffs(batch: UpdateBatch, rows: Sequence[int], weighted: bool) -> list[float]:
    w = [batch.weights[i] if weighted else 1.0 for i in rows]
    total = sum(w)  # float64, in key order
    return [x / total for x in w]


# -- strategies -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FedAvg:
    """Sample-weighted mean of the deltas (``weighted=False``: the plain mean)."""

    name: ClassVar[str] = "fedavg"
    weighted: bool = True

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        rows = batch.order
        delta = weighted_sum(batch.deltas, rows, _mean_coeffs(batch, rows, self.weighted))
        return AggregateResult(delta, tuple(rows))

    def params(self) -> dict[str, Any]:
        return _params(self)


@dataclass(frozen=True, slots=True)
class FedProx:
    """FedAvg on the server; ``mu`` is the proximal weight trainers must use locally."""

    name: ClassVar[str] = "fedprox"
    mu: float = 0.01
    weighted: bool = True

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ConfigError("fedprox: mu must be >= 0")

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        return FedAvg(self.weighted).aggregate(batch)

    def params(self) -> dict[str, Any]:
        return _params(self)


@dataclass(frozen=True, slots=True)
class Median:
    """Coordinate-wise median (mean of the two middle values for an even count)."""

    name: ClassVar[str] = "median"

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        return AggregateResult(_sorted_reduce(batch.deltas, batch.order, 0, True), batch.order)

    def params(self) -> dict[str, Any]:
        return _params(self)


@dataclass(frozen=True, slots=True)
class TrimmedMean:
    """Coordinate-wise mean after dropping the ``floor(beta * n)`` lowest and highest values."""

    name: ClassVar[str] = "trimmed_mean"
    beta: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ConfigError("trimmed_mean: beta must be in [0, 0.5)")

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        trim = int(self.beta * batch.n)
        if batch.n - 2 * trim < 1:
            raise LocalProtocolError("trimmed_mean: nothing left after trimming")
        return AggregateResult(_sorted_reduce(batch.deltas, batch.order, trim, False), batch.order)

    def params(self) -> dict[str, Any]:
        return _params(self)


def krum_scores(gram: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score per row: the sum of squared distances to its ``n - f - 2`` nearest others."""
    n = gram.shape[0]
    diag = gram.diagonal()
    dist = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min_(0)
    dist.fill_diagonal_(float("inf"))
    k = max(n - f - 2, 1)
    return torch.sort(dist, dim=1).values[:, :k].sum(1)


@dataclass(frozen=True, slots=True)
class MultiKrum:
    """Multi-Krum: average (sample-weighted) of the ``m`` rows with the lowest Krum scores.

    ``f`` is the number of Byzantine updates tolerated (needs ``n >= 2f + 3``); ``m = 0``
    means ``n - f``. Pairwise distances come from one Gram matrix.
    """

    name: ClassVar[str] = "multi_krum"
    f: int = 1
    m: int = 0
    weighted: bool = True

    def __post_init__(self) -> None:
        if self.f < 0 or self.m < 0:
            raise ConfigError(f"{self.name}: f and m must be >= 0")

    def _select(self, batch: UpdateBatch, m: int) -> AggregateResult:
        n = batch.n
        if n < 2 * self.f + 3:
            raise LocalProtocolError(f"{self.name} with f={self.f} needs >= {2 * self.f + 3} rows")
        rows = batch.order
        scores = krum_scores(gram_matrix(batch.deltas, rows), self.f).tolist()
        # ascending score, ties by key order (positions in `rows` are key-ordered)
        ranked = sorted(range(n), key=lambda j: (scores[j], j))
        chosen = sorted(ranked[: min(m, n)])
        sel = [rows[j] for j in chosen]
        delta = weighted_sum(batch.deltas, sel, _mean_coeffs(batch, sel, self.weighted))
        return AggregateResult(delta, tuple(sel), {rows[j]: scores[j] for j in range(n)})

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        return self._select(batch, self.m or batch.n - self.f)

    def params(self) -> dict[str, Any]:
        return _params(self)


@dataclass(frozen=True, slots=True)
class Krum:
    """Krum: the single row with the lowest score (sum of distances to its nearest peers)."""

    name: ClassVar[str] = "krum"
    f: int = 1

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ConfigError("krum: f must be >= 0")

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        return MultiKrum(self.f, 1)._select(batch, 1)

    def params(self) -> dict[str, Any]:
        return _params(self)


@dataclass(frozen=True, slots=True)
class NormClipped:
    """Scale each delta to L2 norm <= a bound before the ``inner`` strategy.

    The bound is ``max_norm`` (absolute) or, with ``relative=True``, ``max_norm`` times the
    median row norm of the batch (adaptive: with ``max_norm=1`` every update above the median
    is scaled down to it, so neither large shards nor boosted updates dominate).
    For FedAvg / FedProx the scales fold into the coefficients (no copy); other strategies
    get a clipped copy of the matrix.
    """

    name: ClassVar[str] = "norm_clip"
    inner: Strategy
    max_norm: float
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise ConfigError("clip_norm must be > 0")

    def scales(self, batch: UpdateBatch) -> list[float]:
        norms = row_norms(batch.deltas)
        bound = self.max_norm
        if self.relative:
            bound *= float(torch.quantile(norms, 0.5))
        return [min(1.0, bound / x) if x > 0 else 1.0 for x in norms.tolist()]

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        scales = self.scales(batch)
        if isinstance(self.inner, FedAvg | FedProx):
            rows = batch.order
            coeffs = _mean_coeffs(batch, rows, self.inner.weighted)
            delta = weighted_sum(
                batch.deltas, rows, [c * scales[i] for c, i in zip(coeffs, rows, strict=True)]
            )
            return AggregateResult(delta, tuple(rows))
        factor = torch.tensor(scales, dtype=torch.float32)[:, None]
        return self.inner.aggregate(batch.replace_deltas(batch.deltas * factor))

    def params(self) -> dict[str, Any]:
        key = "clip_median" if self.relative else "clip_norm"
        return {**self.inner.params(), key: self.max_norm}


def _params(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


STRATEGIES: Final[Mapping[str, type[Any]]] = {
    cls.name: cls for cls in (FedAvg, FedProx, Median, TrimmedMean, Krum, MultiKrum)
}


def _same_kind(default: object, value: object) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return False


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Build a strategy by registry name.

    ``clip_norm`` (absolute) or ``clip_median`` (times the median norm) in ``params`` wraps it
    in `NormClipped`.

    Unknown names or parameters raise ConfigError (params come from RoundOpen messages).
    """
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    kwargs = dict(params or {})
    clip = kwargs.pop("clip_norm", None)
    clip_median = kwargs.pop("clip_median", None)
    if clip is not None and clip_median is not None:
        raise ConfigError("give clip_norm or clip_median, not both")
    defaults = {f.name: f.default for f in fields(cls)}
    for key, value in kwargs.items():
        if key not in defaults:
            raise ConfigError(f"strategy {name!r} has no parameter {key!r}")
        if not _same_kind(defaults[key], value):
            raise ConfigError(f"strategy {name!r}: bad value {value!r} for {key!r}")
        if isinstance(defaults[key], float):
            kwargs[key] = float(value)
    strategy: Strategy = cls(**kwargs)
    if clip is not None:
        if not isinstance(clip, int | float) or isinstance(clip, bool):
            raise ConfigError("clip_norm must be a number")
        strategy = NormClipped(strategy, float(clip))
    if clip_median is not None:
        if not isinstance(clip_median, int | float) or isinstance(clip_median, bool):
            raise ConfigError("clip_median must be a number")
        strategy = NormClipped(strategy, float(clip_median), relative=True)
    return strategy


class StreamingMean:
    """Weighted mean accumulated one row at a time (float32, ``acc += w * row``).

    For aggregators that cannot hold all rows. Its result depends on arrival order in the
    last bits; it agrees with `FedAvg` within the tolerance stated in the module docstring.
    Validators recompute with the batch path.
    """

    def __init__(self, size: int) -> None:
        self._acc = torch.zeros(size, dtype=torch.float32)
        self._total = 0.0
        self._keys: set[bytes] = set()

    def add(self, row: torch.Tensor, weight: float, key: UpdateKey) -> None:
        kb = key_bytes(key)
        if kb in self._keys:
            raise LocalProtocolError("update already added")
        if row.shape != self._acc.shape or row.dtype != torch.float32:
            raise LocalProtocolError(f"row must be a float32 vector of {self._acc.shape[0]}")
        if not 0 < weight < float("inf"):
            raise LocalProtocolError("weight must be finite and > 0")
        self._acc.add_(row, alpha=weight)
        self._total += weight
        self._keys.add(kb)

    def result(self) -> torch.Tensor:
        if not self._keys:
            raise LocalProtocolError("no rows added")
        return self._acc / self._total

    def statistics(self) -> dict[str, float]:
        return {"rows": float(len(self._keys)), "total_weight": self._total}


def apply_delta(
    global_vector: torch.Tensor, delta: torch.Tensor, server_lr: float = 1.0
) -> torch.Tensor:
    """The next global model ``global + server_lr * delta`` (a new tensor)."""
    return torch.add(global_vector, delta, alpha=server_lr)
