"""The compute of each role, synchronous and free of networking: training an update,
opening and checking updates, aggregating a round, and recomputing it as a validator.

Roles run these in `trio.to_thread.run_sync`. Everything is deterministic for the same
inputs on the same platform (updates are processed in ascending update-CID order, scores
are computed in float64), which is what lets validators sign the same round record.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import msgpack
import torch
from nacl.bindings import crypto_box_seal, crypto_box_seal_open

from sorap2p.core import messages as m
from sorap2p.core.cid import DAG_CBOR, Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId, RoundId, SubnetId
from sorap2p.learn.data import as_tensors, load_dataset, root_split
from sorap2p.learn.models import build_model
from sorap2p.learn.strategies import (
    UpdateBatch,
    apply_delta,
    make_strategy,
    needs_reference,
    reference_epochs,
)
from sorap2p.learn.train import DataLike, EvalResult, TrainConfig, evaluate, local_train
from sorap2p.learn.weights import ParamSpec
from sorap2p.store import dagcbor
from sorap2p.store.blockstore import Blockstore
from sorap2p.store.encrypted import decrypt_update_into, encrypt_update, load_envelope
from sorap2p.store.model import decode_state_dict, encode_state_dict

SCORE_ONE: Final = 1_000_000  # fixed point of contribution scores (cosine x 1e6)
REPUTATION_SCALE: Final = 10  # reputation delta = score / 10 (a perfect update: +0.1)
METADATA_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ModelContext:
    """A model architecture and its flat parameter layout (one per process and model ref)."""

    ref: str
    module: torch.nn.Module  # a template: never trained or evaluated in place
    spec: ParamSpec

    def fresh(self) -> torch.nn.Module:
        """A private copy of the model for one computation (threads must not share one)."""
        return copy.deepcopy(self.module)


@lru_cache(maxsize=4)
def model_context(ref: str, seed: int = 0) -> ModelContext:
    module = build_model(ref, seed=seed)
    return ModelContext(ref, module, ParamSpec.from_module(module))


def store_genesis(store: Blockstore, ref: str, seed: int = 0) -> Cid:
    """Store the initial global model of ``ref`` (deterministic for a seed)."""
    ctx = model_context(ref, seed)
    sd = {k: v.detach().clone() for k, v in ctx.module.state_dict().items()}
    return encode_state_dict(store, sd, meta={"model": ref, "round": 0})


def load_vector(store: Blockstore, root: Cid, ctx: ModelContext) -> torch.Tensor:
    """The flat float32 parameter vector of a stored model DAG."""
    sd = decode_state_dict(store, root)
    try:
        ctx.spec.check(sd)
    except Exception as exc:
        raise RemoteProtocolError(f"model {root} does not match {ctx.ref}: {exc}") from exc
    return ctx.spec.flatten(sd).clone()


def store_vector(store: Blockstore, vector: torch.Tensor, ctx: ModelContext, round: int) -> Cid:
    sd = ctx.spec.unflatten(vector)
    return encode_state_dict(store, sd, meta={"model": ctx.ref, "round": round})


# ---------------------------------------------------------------------------- trainer


def payload_id(subnet: SubnetId, round: RoundId, trainer: PeerId) -> bytes:
    return hashlib.sha256(
        b"sorap2p/update/" + subnet.name.encode() + round.number.to_bytes(8, "big") + trainer.raw
    ).digest()


def seal_metrics(recipient_x25519: bytes, loss: float, accuracy: float) -> bytes:
    """The seed's "encrypted loss/accuracy": a sealed box to the aggregator."""
    return bytes(crypto_box_seal(msgpack.packb([float(loss), float(accuracy)]), recipient_x25519))


def open_metrics(identity: IdentityKey, sealed: bytes) -> tuple[float, float]:
    try:
        raw = crypto_box_seal_open(sealed, identity.x25519_public, identity.x25519_private)
        loss, acc = msgpack.unpackb(raw)
        return float(loss), float(acc)
    except Exception as exc:
        raise IntegrityError("metrics cannot be opened") from exc


@dataclass(frozen=True, slots=True)
class TrainedUpdate:
    update: Cid
    num_samples: int
    update_size: int
    train_loss: float
    accuracy: float
    delta: torch.Tensor


def train_update(
    store: Blockstore,
    identity: IdentityKey,
    ro: m.RoundOpen,
    data: DataLike,
    cfg: TrainConfig,
    seed: int,
    transform: Any = None,
) -> TrainedUpdate:
    """Fetch-free part of a trainer's round: the global model must already be local."""
    ctx = model_context(ro.model)
    global_vec = load_vector(store, ro.global_model, ctx)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + ro.round.number)
    module = ctx.fresh()
    res = local_train(module, ctx.spec, global_vec, data, cfg, gen)
    delta = res.delta if transform is None else transform(res.delta, global_vec)
    ev = evaluate(module, data, vector=global_vec + delta, spec=ctx.spec)
    recipients = {r.peer: r.x25519 for r in ro.recipients if r.peer != identity.peer_id}
    pid = payload_id(ro.subnet, ro.round, identity.peer_id)
    cid = encrypt_update(store, delta.contiguous(), recipients, pid)
    env = load_envelope(store, cid)
    size = sum(store.size(c) for c in env.chunks)
    return TrainedUpdate(cid, res.num_samples, size, res.train_loss, ev.accuracy, delta)


def adversarial_transform(behaviour: str, seed: int) -> Any:
    """A delta transform for Byzantine trainers (tests and demos), or None when honest."""
    if behaviour == "sign_flip":
        return lambda d, g: -4.0 * d
    if behaviour == "scale":
        return lambda d, g: 10.0 * d
    if behaviour == "noise":
        gen = torch.Generator().manual_seed(seed)
        return lambda d, g: torch.randn(d.shape, generator=gen) * float(d.std()) * 10
    if behaviour == "free_rider":
        return lambda d, g: torch.zeros_like(d)
    return None


def flip_labels(data: DataLike, num_classes: int) -> DataLike:
    """A label-flipping trainer's data (Byzantine, for tests and demos): label ``y`` becomes
    ``num_classes - 1 - y``, so it trains honestly, on purpose towards wrong answers."""
    x, y = data if isinstance(data, tuple) else as_tensors(data)
    return x, (num_classes - 1 - y)


# ---------------------------------------------------------------------------- opening updates


def open_update(
    store: Blockstore, identity: IdentityKey, update: Cid, ctx: ModelContext, out: torch.Tensor
) -> None:
    """Decrypt ``update`` into ``out`` (one row) and check its structure and values."""
    env = load_envelope(store, update)
    if env.dtype != "float32" or env.numel != ctx.spec.size:
        raise RemoteProtocolError(
            f"update {update} has {env.numel} {env.dtype} values, model needs {ctx.spec.size}"
        )
    decrypt_update_into(store, update, identity, out)
    if not bool(torch.isfinite(out).all()):
        raise RemoteProtocolError(f"update {update} contains NaN or infinity")


# ---------------------------------------------------------------------------- aggregation


def contribution_scores(deltas: torch.Tensor, aggregate: torch.Tensor) -> list[int]:
    """Cosine similarity of each update with the aggregate, fixed point x 1e6 (float64)."""
    agg = aggregate.to(torch.float64)
    agg_norm = float(agg.norm())
    out = []
    for i in range(deltas.shape[0]):
        row = deltas[i].to(torch.float64)
        denom = float(row.norm()) * agg_norm
        cos = float(row.dot(agg)) / denom if denom > 0 else 0.0
        out.append(round(max(-1.0, min(1.0, cos)) * SCORE_ONE))
    return out


# -- the root dataset and the reference delta (FLTrust-style strategies) ----------------------

ROOT_SEED: Final = 1 << 40  # offset of the root draw's seed and of the reference's training seed
MAX_ROOT_SAMPLES: Final = 10_000  # a root DAG naming more samples is refused


def strategy_needs_reference(name: str, params: Mapping[str, float] | None = None) -> bool:
    """Whether strategy ``name`` aggregates against the server's reference delta (an
    unknown name or bad parameters raise `ConfigError`)."""
    return needs_reference(make_strategy(name, params))


def root_dataset(dataset: str, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The subnet's public root dataset: ``size`` samples of ``dataset``'s training split drawn
    with ``seed + ROOT_SEED`` (`sorap2p.learn.data.root_split`); (inputs, labels)."""
    splits = load_dataset(dataset)
    _, root = root_split(splits.train, size, torch.Generator().manual_seed(seed + ROOT_SEED))
    x, y = as_tensors(root)
    return x.contiguous(), y.to(torch.int64).contiguous()


def store_root_data(store: Blockstore, data: tuple[torch.Tensor, torch.Tensor]) -> Cid:
    """Store a root dataset as a tensor DAG (same samples -> same CID on every node)."""
    x, y = data
    return encode_state_dict(store, {"inputs": x, "labels": y}, meta={"kind": "root_data"})


def load_root_data(store: Blockstore, root: Cid) -> tuple[torch.Tensor, torch.Tensor]:
    """A root dataset DAG back as (inputs, labels); a malformed one raises
    `RemoteProtocolError`."""
    sd = decode_state_dict(store, root)
    x, y = sd.get("inputs"), sd.get("labels")
    if x is None or y is None or set(sd) != {"inputs", "labels"}:
        raise RemoteProtocolError(f"root data {root} must hold exactly inputs and labels")
    if y.dim() != 1 or y.dtype != torch.int64 or x.dim() < 1 or x.shape[0] != y.shape[0]:
        raise RemoteProtocolError(f"root data {root}: inputs and labels do not match")
    if not 0 < y.shape[0] <= MAX_ROOT_SAMPLES:
        raise RemoteProtocolError(f"root data {root}: {y.shape[0]} samples")
    return x, y


def reference_delta(
    ro: m.RoundOpen,
    global_vec: torch.Tensor,
    ctx: ModelContext,
    root: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The server's delta for the round: the round's training settings (no proximal term;
    the strategy's ``reference_epochs`` when set) on the root dataset from the global
    model, one thread, seeded by the round number, so that validators recompute it bit for
    bit on the same platform."""
    strategy = make_strategy(ro.strategy, dict(ro.strategy_params))
    tc = TrainConfig(
        epochs=reference_epochs(strategy, ro.training.epochs),
        batch_size=ro.training.batch_size,
        lr=ro.training.lr,
        momentum=ro.training.momentum,
        num_threads=1,
    )
    g = torch.Generator().manual_seed(ROOT_SEED + ro.round.number)
    return local_train(ctx.fresh(), ctx.spec, global_vec, root, tc, g).delta


@dataclass(frozen=True, slots=True)
class RoundResult:
    model: Cid
    vector: torch.Tensor
    metadata: Cid
    metadata_hash: bytes
    ranking: tuple[m.RankEntry, ...]
    reputation: tuple[tuple[PeerId, int], ...]  # (trainer, delta) best first


def aggregate_round(
    store: Blockstore,
    ro: m.RoundOpen,
    updates: Sequence[m.UpdateAnnounce],
    rows: torch.Tensor,
    global_vec: torch.Tensor,
    ctx: ModelContext,
    rejected: Mapping[Cid, str] | None = None,
    root: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> RoundResult:
    """Aggregate ``rows`` (one per update, ascending update CID) and store the results.

    ``root``: the round's root dataset, for strategies that need a `reference_delta`."""
    keys = [a.update for a in updates]
    if keys != sorted(keys):
        raise ValueError("updates must be sorted by CID")
    strategy = make_strategy(ro.strategy, dict(ro.strategy_params))
    reference = None
    if needs_reference(strategy):
        if root is None:
            raise LocalProtocolError(f"{ro.strategy} needs the round's root dataset")
        reference = reference_delta(ro, global_vec, ctx, root)
    batch = UpdateBatch.create(
        rows, [float(a.num_samples) for a in updates], keys, reference=reference
    )
    result = strategy.aggregate(batch)
    new_vec = apply_delta(global_vec, result.delta)
    model = store_vector(store, new_vec, ctx, ro.round.number)
    scores = contribution_scores(rows, result.delta)
    order = sorted(range(len(updates)), key=lambda i: (-scores[i], updates[i].update.raw))
    ranking = tuple(
        m.RankEntry(updates[i].signer, updates[i].update, scores[i], rank + 1)
        for rank, i in enumerate(order)
    )
    reputation = tuple((e.trainer, e.score // REPUTATION_SCALE) for e in ranking)
    doc = metadata_document(ro, model, updates, scores, rejected or {}, set(result.selected))
    raw = dagcbor.encode(doc)
    meta = store.put(raw, DAG_CBOR)
    return RoundResult(model, new_vec, meta, hashlib.sha256(raw).digest(), ranking, reputation)


def refused_updates(doc: Mapping[str, Any]) -> dict[Cid, str]:
    """The updates a round's aggregator refused, with its reasons, from the metadata document
    (``rejected``); a malformed list raises `RemoteProtocolError`."""
    try:
        return {r["update"]: str(r["reason"]) for r in doc.get("rejected", [])}
    except (TypeError, KeyError, AttributeError) as exc:
        raise RemoteProtocolError(f"malformed refused-update list: {exc}") from None


def read_metadata(store: Blockstore, cid: Cid) -> dict[str, Any]:
    """Load a round metadata document (DAG-CBOR map) from the store."""
    doc = dagcbor.decode(store.get(cid))
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"round metadata {cid} is not a map")
    return doc


def metadata_document(
    ro: m.RoundOpen,
    model: Cid,
    updates: Sequence[m.UpdateAnnounce],
    scores: Sequence[int],
    rejected: Mapping[Cid, str],
    kept: Collection[int] | None = None,
) -> dict[str, dagcbor.Value]:
    """The round metadata the aggregator stores and validators fetch (DAG-CBOR).

    ``kept``: the rows (indices into ``updates``) the strategy used; None: all of them."""
    doc: dict[str, dagcbor.Value] = {
        "v": METADATA_VERSION,
        "subnet": ro.subnet.name,
        "round": ro.round.number,
        "parent": ro.global_model,
        "model": model,
        "strategy": ro.strategy,
        "strategy_params": {k: float(v) for k, v in sorted(ro.strategy_params.items())},
        "opened_at": ro.opened_at,
        "deadline": ro.deadline,
        "updates": [
            {
                "update": a.update,
                "trainer": a.signer.raw,
                "device_hash": a.device_hash,
                "num_samples": a.num_samples,
                "timestamp": a.timestamp,
                "train_ms": a.train_ms,
                "score": s,
                "kept": kept is None or i in kept,
            }
            for i, (a, s) in enumerate(zip(updates, scores, strict=True))
        ],
        "rejected": [{"update": c, "reason": r} for c, r in sorted(rejected.items())],
    }
    if ro.root_data is not None:
        doc["root_data"] = ro.root_data
    return doc


# ---------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class Recheck:
    ok: bool
    reason: str
    result: RoundResult | None
    evaluation: EvalResult | None


def recheck_round(
    store: Blockstore,
    ro: m.RoundOpen,
    gm: m.GlobalModel,
    rankings: m.Rankings,
    updates: Sequence[m.UpdateAnnounce],
    rows: torch.Tensor,
    ctx: ModelContext,
    held_out: DataLike | None,
    root: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Recheck:
    """Recompute the round as the aggregator should have, and compare with what it published."""
    global_vec = load_vector(store, ro.global_model, ctx)
    # recompute into a scratch store path: the same function, so identical bytes give
    # identical CIDs; the blocks land in our store, which is harmless (same content)
    # the updates the aggregator refused are listed in its metadata; a validator cannot
    # re-check why (it may never have fetched them) but they must not change the result
    rejected: dict[Cid, str] = {}
    if store.has(gm.metadata):
        try:
            rejected = refused_updates(read_metadata(store, gm.metadata))
        except (RemoteProtocolError, IntegrityError):
            rejected = {}
    mine = aggregate_round(store, ro, updates, rows, global_vec, ctx, rejected, root)
    evaluation = None
    if held_out is not None:
        evaluation = evaluate(ctx.fresh(), held_out, vector=mine.vector, spec=ctx.spec)
    if gm.parent != ro.global_model:
        return Recheck(False, "wrong parent model", mine, evaluation)
    if tuple(a.update for a in updates) != gm.updates:
        return Recheck(False, "accepted updates differ", mine, evaluation)
    if mine.model != gm.model:
        published = load_vector(store, gm.model, ctx)
        diff = float((published - mine.vector).abs().max())
        return Recheck(False, f"wrong aggregate (max abs diff {diff:.3g})", mine, evaluation)
    if mine.metadata != gm.metadata:
        return Recheck(False, "metadata differs from the recomputation", mine, evaluation)
    if rankings.entries != mine.ranking:
        return Recheck(False, "rankings differ from the recomputation", mine, evaluation)
    return Recheck(True, "", mine, evaluation)


# Announces a validator saw this long before the deadline must be in the aggregate or in the
# aggregator's refused list: trainers re-announce every few seconds until the deadline, so
# the aggregator has heard them too (a later announce may legitimately have missed it).
INCLUSION_MARGIN_MS: Final = 10_000


def inclusion_problem(
    ro: m.RoundOpen,
    gm: m.GlobalModel,
    refused: Mapping[Cid, str],
    seen: Sequence[tuple[m.UpdateAnnounce, int]],
    margin_ms: int = INCLUSION_MARGIN_MS,
) -> str | None:
    """Why the aggregator's choice of updates is wrong, or None: every accepted update must
    have been announced (no injected update), and every update announced in time (received
    by us ``margin_ms`` before the deadline) must be accepted or listed as refused (no
    silently dropped update). ``seen``: (announce, our receive time in unix ms)."""
    announced = {a.update for a, _ in seen}
    injected = [c for c in gm.updates if c not in announced]
    if injected:
        return f"{len(injected)} accepted updates were never announced"
    accepted = set(gm.updates)
    dropped = [
        a.update
        for a, received in seen
        if received <= ro.deadline - margin_ms
        and a.update not in accepted
        and a.update not in refused
    ]
    if dropped:
        return f"{len(dropped)} announced updates silently dropped"
    return None


def forge_update(
    store: Blockstore, identity: IdentityKey, ro: m.RoundOpen, ctx: ModelContext, now_ms: int
) -> tuple[m.UpdateAnnounce, torch.Tensor]:
    """A Byzantine aggregator's injected update (tests and demos): a random delta encrypted
    to the round's recipients, with an announce that is never gossiped."""
    gen = torch.Generator().manual_seed(ro.round.number)
    delta = torch.randn(ctx.spec.size, generator=gen) * 0.01
    recipients = {r.peer: r.x25519 for r in ro.recipients if r.peer != identity.peer_id}
    cid = encrypt_update(
        store, delta, recipients, payload_id(ro.subnet, ro.round, identity.peer_id)
    )
    announce = m.UpdateAnnounce(
        subnet=ro.subnet,
        round=ro.round,
        update=cid,
        base_model=ro.global_model,
        device_hash=hashlib.sha256(b"forged").digest(),
        num_samples=100,
        update_size=0,
        timestamp=now_ms,
        train_ms=0,
        encrypted_metrics=b"",
        signer=identity.peer_id,
    )
    return announce, delta
