"""The update batch and the numeric primitives every aggregation strategy shares.

`UpdateBatch` (rows of deltas, weights, keys, optional reference), `AggregateResult`, the
`Strategy` protocol, and the blocked kernels whose accumulation order is part of each
result's definition (see `sorap2p.learn.strategies` for the precision statement).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Protocol

import torch

from sorap2p.core.cid import Cid
from sorap2p.core.errors import LocalProtocolError

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
    reference: torch.Tensor | None = None

    @classmethod
    def create(
        cls,
        deltas: torch.Tensor,
        weights: Sequence[float] | torch.Tensor,
        keys: Sequence[UpdateKey],
        reference: torch.Tensor | None = None,
    ) -> UpdateBatch:
        """Validate and wrap (no copy). Keys must be unique; weights finite and > 0.

        ``reference`` is the server's own delta for the round (a float32 vector of ``d``),
        needed by strategies with ``needs_reference`` (`FLTrust`) and ignored by the others.
        """
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
        if reference is not None and (
            reference.shape != (deltas.shape[1],) or reference.dtype != torch.float32
        ):
            raise LocalProtocolError(f"reference must be a float32 vector of {deltas.shape[1]}")
        order = tuple(sorted(range(n), key=kb.__getitem__))
        return cls(deltas, w, kb, order, reference)

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
            self.reference,
        )

    def replace_deltas(self, deltas: torch.Tensor) -> UpdateBatch:
        if deltas.shape != self.deltas.shape:
            raise LocalProtocolError("replacement deltas must have the same shape")
        return UpdateBatch(deltas, self.weights, self.keys, self.order, self.reference)


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


SUM_BLOCK: Final = 1 << 12
"""Columns per ``torch.sum`` of the sorting strategies (the last block may be narrower).

Part of the result's definition: ``torch.sum`` over rows rounds a column differently
depending on the block's width, so a recomputation must use the same blocks."""

_SORT_BLOCK_BYTES: Final = 1 << 19


def _sort_width(n: int) -> int:
    """Columns sorted at a time: about 512 KiB of values (fits a core's L2), a power of two."""
    w = min(max(_SORT_BLOCK_BYTES // (4 * n), 256), SUM_BLOCK)
    return 1 << (w.bit_length() - 1)


def _sorted_reduce(
    deltas: torch.Tensor, rows: Sequence[int], trim: int, median: bool
) -> torch.Tensor:
    """Per column: the median, or the mean of the values left after trimming ``trim`` per side.

    Cache-blocked: a slab of columns is copied transposed into a ``(width, n)`` buffer whose
    rows (one column each) numpy sorts in place (a SIMD sort for short rows); the median is
    read from the middle, or the kept middle is copied back into a contiguous
    ``(n - 2 * trim, SUM_BLOCK)`` block summed over rows by ``torch.sum`` in ascending order.
    Sorted values do not depend on how they were sorted, so the result equals sorting each
    column and summing the same blocks. Zeros come out as +0.0 (``x + 0.0``): the order of
    tied -0.0 and +0.0 depends on the sort, so their sign would not be reproducible.
    Rows must be finite (NaN would spread).
    """
    deltas = deltas.detach()  # numpy sorts views of buffers copied from it
    n = len(rows)
    d = deltas.shape[1]
    out = torch.empty(d, dtype=torch.float32)
    width = _sort_width(n)
    keep = n - 2 * trim
    in_place = list(rows) == list(range(deltas.shape[0]))
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    gathered = torch.empty(0 if in_place else n * width, dtype=torch.float32)
    columns = torch.empty(width, n, dtype=torch.float32)
    middle = torch.empty(0 if median else keep * min(SUM_BLOCK, d), dtype=torch.float32)
    for s in range(0, d, SUM_BLOCK):
        e = min(s + SUM_BLOCK, d)
        kept = middle if median else middle[: keep * (e - s)].view(keep, e - s)
        for a in range(s, e, width):
            b = min(a + width, e)
            w = b - a
            if in_place:
                block = deltas[:, a:b]
            else:
                block = gathered[: n * w].view(n, w)
                torch.index_select(deltas[:, a:b], 0, idx, out=block)
            col = columns[:w]
            col.copy_(block.t())
            col.numpy().sort(axis=-1)
            if not median:
                kept[:, a - s : b - s].copy_(col[:, trim : n - trim].t())
            elif n % 2:
                torch.add(col[:, n // 2], 0.0, out=out[a:b])
            else:
                torch.add(col[:, n // 2 - 1], col[:, n // 2], out=out[a:b]).mul_(0.5).add_(0.0)
        if not median:
            torch.sum(kept, dim=0, out=out[s:e]).div_(keep).add_(0.0)
    return out


def row_norms(deltas: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
    """L2 norm of each row: float32 per block, squares summed in float64 (20x faster than
    a float64 reduction, which casts each block)."""
    rows = list(range(deltas.shape[0])) if rows is None else rows
    sq = torch.zeros(len(rows), dtype=torch.float64)
    for _, block in _row_blocks(deltas, rows):
        sq += torch.linalg.vector_norm(block, dim=1).double().square()
    return sq.sqrt()


def strategy_params(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
