"""One federated round of real compute (digits CNN, encrypted updates on a real blockstore),
without networking: train -> open -> aggregate -> validator recheck."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sorap2p.core import messages as m
from sorap2p.core.errors import IntegrityError, RemoteProtocolError
from sorap2p.learn.data import load_dataset, trainer_shard
from sorap2p.learn.train import TrainConfig
from sorap2p.node import work
from sorap2p.store.blockstore import Blockstore
from sorap2p.testing.factories import Cast, round_open

CAST = Cast.make(validators=2, trainers=3)


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits")


def test_round_of_real_compute(tmp_path: Path, digits: object) -> None:
    store = Blockstore(tmp_path / "blocks")
    genesis = work.store_genesis(store, "digits_cnn")
    assert work.store_genesis(store, "digits_cnn") == genesis  # deterministic
    ro = dataclasses.replace(
        round_open(CAST.aggregator, 1, CAST.recipients(), model=genesis, duration=600_000),
        model="digits_cnn",
    )
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    announces, deltas = [], []
    for i, t in enumerate(CAST.trainers):
        shard = trainer_shard(digits.train, i, 3, 0.5, seed=0)  # type: ignore[attr-defined]
        up = work.train_update(store, t, ro, shard, cfg, seed=i)
        deltas.append(up.delta)
        ann = m.UpdateAnnounce(
            subnet=ro.subnet,
            round=ro.round,
            update=up.update,
            base_model=genesis,
            device_hash=b"\x00" * 32,
            num_samples=up.num_samples,
            update_size=up.update_size,
            timestamp=1,
            train_ms=1,
            encrypted_metrics=work.seal_metrics(
                CAST.aggregator.x25519_public, up.train_loss, up.accuracy
            ),
            signer=t.peer_id,
        )
        announces.append(ann)
    loss, acc = work.open_metrics(CAST.aggregator, announces[0].encrypted_metrics)
    assert 0 <= acc <= 1 and loss > 0
    with pytest.raises(IntegrityError):
        work.open_metrics(CAST.validators[0], announces[0].encrypted_metrics)
    announces.sort(key=lambda a: a.update)
    ctx = work.model_context("digits_cnn")
    rows = torch.empty(len(announces), ctx.spec.size)
    for i, a in enumerate(announces):
        work.open_update(store, CAST.aggregator, a.update, ctx, rows[i])
    # trainers cannot open each other's updates
    with pytest.raises(IntegrityError):
        work.open_update(
            store, CAST.trainers[0], announces[1].update, ctx, torch.empty(ctx.spec.size)
        )
    global_vec = work.load_vector(store, genesis, ctx)
    res = work.aggregate_round(store, ro, announces, rows, global_vec, ctx)
    assert [e.rank for e in res.ranking] == [1, 2, 3]
    gm = m.GlobalModel(
        subnet=ro.subnet,
        round=ro.round,
        model=res.model,
        parent=genesis,
        strategy="fedavg",
        updates=tuple(a.update for a in announces),
        num_samples=sum(a.num_samples for a in announces),
        metadata=res.metadata,
        created_at=2,
        signer=CAST.aggregator.peer_id,
    )
    rk = m.Rankings(
        subnet=ro.subnet,
        round=ro.round,
        model=res.model,
        entries=res.ranking,
        signer=CAST.aggregator.peer_id,
    )
    # a validator decrypts the same updates and reaches the same bytes
    vrows = torch.empty_like(rows)
    for i, a in enumerate(announces):
        work.open_update(store, CAST.validators[0], a.update, ctx, vrows[i])
    assert torch.equal(rows, vrows)
    check = work.recheck_round(store, ro, gm, rk, announces, vrows, ctx, digits.test)  # type: ignore[attr-defined]
    assert check.ok, check.reason
    assert check.evaluation is not None and check.evaluation.num_samples == len(digits.test)  # type: ignore[attr-defined]
    # a wrong aggregate is detected
    bad_vec = res.vector.clone()
    bad_vec[0] += 1e-3
    bad = dataclasses.replace(gm, model=work.store_vector(store, bad_vec, ctx, 1))
    check = work.recheck_round(store, ro, bad, rk, announces, vrows, ctx, None)
    assert not check.ok and check.reason.startswith("wrong aggregate")
    # fake rankings are detected
    fake = dataclasses.replace(
        rk,
        entries=tuple(
            dataclasses.replace(e, rank=len(rk.entries) - e.rank + 1) for e in reversed(rk.entries)
        ),
    )
    check = work.recheck_round(store, ro, gm, fake, announces, vrows, ctx, None)
    assert not check.ok and "rankings" in check.reason
    # a dropped update is detected
    dropped = dataclasses.replace(gm, updates=gm.updates[1:])
    check = work.recheck_round(store, ro, dropped, rk, announces, vrows, ctx, None)
    assert not check.ok


def test_sign_flipped_update_scores_last(tmp_path: Path, digits: object) -> None:
    store = Blockstore(tmp_path / "b")
    genesis = work.store_genesis(store, "digits_cnn")
    ctx = work.model_context("digits_cnn")
    torch.manual_seed(0)
    base = torch.randn(ctx.spec.size) * 0.01
    rows = torch.stack([base + torch.randn(ctx.spec.size) * 0.002 for _ in range(4)])
    rows[2] = -10 * rows[2]
    scores = work.contribution_scores(rows, rows.median(dim=0).values)
    assert min(range(4), key=lambda i: scores[i]) == 2
    assert scores[2] < 0 < min(s for i, s in enumerate(scores) if i != 2)
    assert genesis is not None


def test_open_update_rejects_wrong_shape(tmp_path: Path) -> None:
    from sorap2p.store.encrypted import encrypt_update

    store = Blockstore(tmp_path / "c")
    ctx = work.model_context("digits_cnn")
    cid = encrypt_update(
        store, torch.zeros(10), {CAST.aggregator.peer_id: CAST.aggregator.x25519_public}, b"p"
    )
    with pytest.raises(RemoteProtocolError, match="model needs"):
        work.open_update(store, CAST.aggregator, cid, ctx, torch.empty(ctx.spec.size))
    nan = torch.full((ctx.spec.size,), float("nan"))
    cid = encrypt_update(store, nan, {CAST.aggregator.peer_id: CAST.aggregator.x25519_public}, b"q")
    with pytest.raises(RemoteProtocolError, match="NaN"):
        work.open_update(store, CAST.aggregator, cid, ctx, torch.empty(ctx.spec.size))


def test_inclusion_problems_injected_and_silently_dropped_updates(tmp_path: Path) -> None:
    from sorap2p.testing.factories import announce

    ro = round_open(CAST.aggregator, 1, CAST.recipients(), opened_at=0, duration=60_000)
    anns = sorted((announce(t, ro) for t in CAST.trainers), key=lambda a: a.update)
    seen = [(a, 5_000) for a in anns]  # received long before the deadline
    gm = m.GlobalModel(
        subnet=ro.subnet,
        round=ro.round,
        model=anns[0].update,
        parent=ro.global_model,
        strategy="fedavg",
        updates=tuple(a.update for a in anns),
        num_samples=300,
        metadata=anns[0].update,
        created_at=61_000,
        signer=CAST.aggregator.peer_id,
    )
    assert work.inclusion_problem(ro, gm, {}, seen) is None
    dropped = dataclasses.replace(gm, updates=gm.updates[1:])
    assert work.inclusion_problem(ro, dropped, {}, seen) == "1 announced updates silently dropped"
    # refused openly (listed with a reason in the metadata): not a silent drop
    assert work.inclusion_problem(ro, dropped, {anns[0].update: "refused"}, seen) is None
    # heard by us only just before the deadline: the aggregator may have missed it
    late = [(a, 55_000 if a is anns[0] else 5_000) for a in anns]
    assert work.inclusion_problem(ro, dropped, {}, late) is None
    # an accepted update nobody announced (injected by the aggregator)
    store = Blockstore(tmp_path / "blocks")
    ctx = work.model_context("digits_cnn")
    forged, row = work.forge_update(store, CAST.aggregator, ro, ctx, 10_000)
    assert row.shape == (ctx.spec.size,)
    # the forged update is a real encrypted update the validators can open...
    out = torch.empty(ctx.spec.size)
    work.open_update(store, CAST.validators[0], forged.update, ctx, out)
    assert torch.equal(out, row)
    injected = dataclasses.replace(gm, updates=tuple(sorted([*gm.updates, forged.update])))
    assert (
        work.inclusion_problem(ro, injected, {}, seen) == "1 accepted updates were never announced"
    )


def test_refused_updates_reader() -> None:
    from sorap2p.core.cid import Cid

    c = Cid.hash(b"x")
    assert work.refused_updates({"rejected": [{"update": c, "reason": "refused"}]}) == {
        c: "refused"
    }
    assert work.refused_updates({}) == {}
    with pytest.raises(RemoteProtocolError):
        work.refused_updates({"rejected": [{"reason": "no update"}]})
    with pytest.raises(RemoteProtocolError):
        work.refused_updates({"rejected": 5})


def test_root_dataset_is_content_addressed_and_checked(tmp_path: Path) -> None:
    """Two nodes deriving the subnet's root set get one CID; the reference delta is the same
    bit for bit; a malformed root DAG is refused as a remote error."""
    a, b = Blockstore(tmp_path / "a"), Blockstore(tmp_path / "b")
    root = work.root_dataset("digits", 100, 0)
    cid = work.store_root_data(a, root)
    assert cid == work.store_root_data(b, work.root_dataset("digits", 100, 0))
    assert cid != work.store_root_data(b, work.root_dataset("digits", 60, 0))
    x, y = work.load_root_data(a, cid)
    assert torch.equal(x, root[0]) and torch.equal(y, root[1]) and y.shape == (100,)
    ctx = work.model_context("digits_cnn")
    genesis_cid = work.store_genesis(a, "digits_cnn")
    genesis = work.load_vector(a, genesis_cid, ctx)
    ro = round_open(CAST.aggregator, 3, CAST.recipients(), model=genesis_cid)
    ref = work.reference_delta(ro, genesis, ctx, (x, y))
    assert torch.equal(ref, work.reference_delta(ro, genesis, ctx, root))
    assert float(ref.norm()) > 0
    bad = work.store_root_data(a, (x, y[:-1]))
    with pytest.raises(RemoteProtocolError, match="do not match"):
        work.load_root_data(a, bad)
    other = work.store_genesis(a, "digits_cnn")
    with pytest.raises(RemoteProtocolError, match="exactly inputs and labels"):
        work.load_root_data(a, other)
    assert work.strategy_needs_reference("robust_fltrust")
    assert not work.strategy_needs_reference("fedavg")
