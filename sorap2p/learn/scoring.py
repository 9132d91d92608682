"""Contribution scoring of the updates of one round, on a validator's held-out data.

For every update ``i`` with delta ``d_i``, weight share ``s_i = w_i / sum(w)`` and the round's
global vector ``g`` (L = loss on the validator's held-out data, in nats):

* solo gain ``L(g) - L(g + s_i * d_i)``: the update's own effect at the step it gets in a
  FedAvg round (a free-rider's zero delta scores exactly 0; sign-flipped and noisy deltas
  score below 0); the accuracy difference is reported beside it;
* leave-one-out gain ``L(g + A(all but i)) - L(g + A(all))`` with the round's strategy ``A``:
  how much worse the aggregate gets without ``i`` (boosted updates that wreck a plain mean
  score far below 0);
* alignment: cosine similarity of ``d_i`` with the coordinate-wise median of the other
  deltas (honest updates share a direction while the model is still learning; a zero delta
  has 0, a flipped one a negative value).

``score = solo_weight * solo + loo_weight * loo + alignment_weight * alignment``; the
ranking sorts by descending score, ties by key. Scores are deterministic given the
evaluator. Limits, measured on digits (10 non-IID trainers): the ranking separates sign-flip,
x10 scaling, Gaussian-noise and free-rider updates from honest ones while the model is
learning (tested after 5 rounds); in the very first round a boosted copy of an honest update
can look helpful, and once the model has converged honest updates no longer measurably help,
so they can tie with free-riders. Reputation should therefore accumulate scores over rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sorap2p.core.errors import LocalProtocolError
from sorap2p.learn.strategies import Median, Strategy, UpdateBatch, row_norms
from sorap2p.learn.train import EvalResult

Evaluator = Callable[[torch.Tensor], EvalResult]
"""Evaluates a full model vector on the validator's held-out data."""


@dataclass(frozen=True, slots=True)
class Contribution:
    """One update's measured contribution; ``row`` indexes the batch, ``key`` identifies it."""

    key: bytes
    row: int
    solo_loss_gain: float
    solo_accuracy_gain: float
    loo_loss_gain: float
    loo_accuracy_gain: float
    alignment: float
    score: float


@dataclass(frozen=True, slots=True)
class ContributionReport:
    """Evaluations of the global model and the aggregate, and contributions best-first."""

    baseline: EvalResult
    aggregate: EvalResult
    ranking: tuple[Contribution, ...]

    def scores(self) -> dict[bytes, float]:
        return {c.key: c.score for c in self.ranking}


def _finite(x: float, worst: float) -> float:
    return x if x == x and abs(x) != float("inf") else worst


def _alignment(batch: UpdateBatch) -> list[float]:
    """Cosine similarity of each delta with the coordinate-wise median of the *other* deltas.

    Leaving the update out matters: a median that includes it leans towards it (an order
    statistic moves with every value), which would reward even pure noise.
    """
    norms = row_norms(batch.deltas).tolist()
    out: list[float] = []
    for row in range(batch.n):
        if batch.n < 2 or norms[row] == 0:
            out.append(0.0)
            continue
        consensus = Median().aggregate(batch.without(row)).delta.double()
        c_norm = float(torch.linalg.vector_norm(consensus))
        dot = float(batch.deltas[row].double() @ consensus)
        out.append(dot / (norms[row] * c_norm) if c_norm > 0 else 0.0)
    return out


def score_contributions(
    batch: UpdateBatch,
    strategy: Strategy,
    global_vector: torch.Tensor,
    evaluator: Evaluator,
    *,
    solo_weight: float = 1.0,
    loo_weight: float = 1.0,
    solo_step: float | None = None,
    alignment_weight: float = 1.0,
    max_loss: float = 1e3,
) -> ContributionReport:
    """Score every update of ``batch`` (rows in key order); inputs are not modified.

    Losses that come out as NaN or inf (a wrecked model) count as ``max_loss``.
    ``loo_weight = 0`` skips the leave-one-out aggregations (n extra aggregations).
    """

    def ev(vector: torch.Tensor) -> tuple[float, float]:
        r = evaluator(vector)
        return min(_finite(r.loss, max_loss), max_loss), _finite(r.accuracy, 0.0)

    base = evaluator(global_vector)
    base_loss, base_acc = ev(global_vector)
    full = global_vector + strategy.aggregate(batch).delta
    agg_result = evaluator(full)
    agg_loss, agg_acc = ev(full)
    out: list[Contribution] = []
    total_weight = sum(batch.weights)
    alignment = _alignment(batch) if alignment_weight else [0.0] * batch.n
    for row in batch.order:
        step = batch.weights[row] / total_weight if solo_step is None else solo_step
        solo_loss, solo_acc = ev(torch.add(global_vector, batch.deltas[row], alpha=step))
        loo_loss_gain = loo_acc_gain = 0.0
        if loo_weight and batch.n > 1:
            try:
                without = strategy.aggregate(batch.without(row)).delta
            except LocalProtocolError:  # the strategy cannot run on n-1 rows (Krum: 2f+3)
                without = None
            if without is not None:
                wl, wa = ev(global_vector + without)
                loo_loss_gain, loo_acc_gain = wl - agg_loss, agg_acc - wa
        solo_gain = base_loss - solo_loss
        score = (
            solo_weight * solo_gain + loo_weight * loo_loss_gain + alignment_weight * alignment[row]
        )
        out.append(
            Contribution(
                batch.keys[row],
                row,
                solo_gain,
                solo_acc - base_acc,
                loo_loss_gain,
                loo_acc_gain,
                alignment[row],
                score,
            )
        )
    out.sort(key=lambda c: (-c.score, c.key))
    return ContributionReport(base, agg_result, tuple(out))
