"""Whole rounds of the protocol over the in-memory subnet, with trio's autojump clock."""

from __future__ import annotations

import trio

from sorap2p.core.cid import DAG_CBOR, Cid
from sorap2p.core.ids import RoundId
from sorap2p.testing.simnet import SimConfig, SimNet

GENESIS = Cid.hash(b"genesis", DAG_CBOR)


async def test_ten_rounds_finalize(autojump_clock: trio.abc.Clock) -> None:
    async with SimNet(SimConfig()) as net:
        model = GENESIS
        for r in range(1, 11):
            done = await net.run_round(r, model)
            assert done.ok, done
            model = Cid.hash(b"right" + r.to_bytes(8, "big"), DAG_CBOR)
        assert sorted(net.chain.proofs) == [RoundId(r) for r in range(1, 11)]
        for proof in net.chain.proofs.values():
            assert len(proof.signatures) == 2
        # rotation: the primary differs between consecutive rounds
        # and nobody needed a backup
        assert net.chain.duplicates == 0
        # every trainer announced every round
        for i in range(5):
            assert [f.ok for f in net.finished[f"trainer-{i}"]] == [True] * 10


async def test_dead_trainer_does_not_stop_the_round(autojump_clock: trio.abc.Clock) -> None:
    async with SimNet(SimConfig(dead_trainers=frozenset({2}))) as net:
        start = trio.current_time()
        done = await net.run_round(1, GENESIS)
        assert done.ok
        # without early aggregation the aggregator waited for the deadline
        assert trio.current_time() - start >= 30
        assert len(net.chain.proofs[RoundId(1)].signatures) == 2


async def test_one_validator_offline_still_quorum(autojump_clock: trio.abc.Clock) -> None:
    for offline in range(3):
        async with SimNet(SimConfig(offline_validators=frozenset({offline}))) as net:
            done = await net.run_round(1, GENESIS)
            assert done.ok, (offline, done)


async def test_two_validators_offline_nothing_written(autojump_clock: trio.abc.Clock) -> None:
    async with SimNet(SimConfig(offline_validators=frozenset({0, 1}))) as net:
        done = await net.run_round(1, GENESIS)
        assert not done.ok and done.reason == "no quorum proof"
        assert net.chain.proofs == {}


async def test_wrong_model_gets_no_proof_and_is_disputed(autojump_clock: trio.abc.Clock) -> None:
    async with SimNet(SimConfig(wrong_model=True)) as net:
        done = await net.run_round(1, GENESIS)
        assert not done.ok
        assert net.chain.proofs == {}
        assert {d.accused for d in net.chain.disputes} == {net.cast.aggregator.peer_id}
        assert len(net.chain.disputes) == 3
