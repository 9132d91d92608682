"""ChainClient on anvil and eth-tester: concurrency, RPC restarts, reorgs, events, RPC down."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sorap2p.chain.aio import AsyncChain
from sorap2p.chain.client import ChainClient, ChainConfig, RetryPolicy, SubnetParams
from sorap2p.chain.deploy import deploy
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.devchain import Devchain, find_anvil, in_process_chain
from sorap2p.chain.events import EventFollower, EventStatus, EventUpdate
from sorap2p.chain.proof import RoundProof, RoundRecord, sign_round
from sorap2p.core.errors import ChainError, ConfigError
from sorap2p.core.ids import Role
from tests.chain.conftest import ANVIL_MISSING, FAST, SUBNET, Env, peer

pytestmark = pytest.mark.chain
needs_anvil = pytest.mark.skipif(find_anvil() is None, reason=ANVIL_MISSING)


async def wait_until(predicate: Callable[[], bool], deadline_s: float = 30.0) -> None:
    """Poll a predicate on chain/thread state (no trio event exists for it) with a generous
    deadline; the sleep is the polling period, not a synchronisation guess."""
    with trio.fail_after(deadline_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


def test_in_process_eth_tester_chain() -> None:
    client, keys = in_process_chain(FAST)
    assert client.chain_id != 31337
    deployment = deploy(client, keys[0])
    validators = sorted(keys[1:5], key=lambda k: int(k.address, 16))
    client.create_subnet(keys[0], SUBNET, SubnetParams(), [k.address for k in validators], 3)
    rec = RoundRecord(
        subnet=SUBNET,
        round=1,
        validator_set_version=1,
        parent_cid=b"\x01g",
        model_cid=b"\x01m",
        updates_root=bytes(32),
        metadata_hash=bytes(32),
        aggregator=peer(1).hashed,
        trainers=(peer(2).hashed,),
        deltas=(1000,),
    )
    sigs = [sign_round(k, client.domain, rec) for k in validators[:3]]
    rc = client.submit_round(keys[0], RoundProof.assemble(client.domain, rec, sigs))
    assert rc is not None and rc.status == 1
    assert client.reputation(SUBNET, peer(2).hashed) == (1000, 1)
    assert client.ledger.functions.roundDigest(rec.as_abi()).call() == client.domain.digest(
        rec.struct_hash()
    )
    assert deployment.chain_id == client.chain_id
    client.join(keys[6], SUBNET, peer(3), Role.TRAINER, 10**15)
    assert client.member(SUBNET, keys[6].address).role == Role.TRAINER.code


def test_deployment_file_round_trip(tmp_path: Path) -> None:
    dep = Deployment(31337, "0x" + "11" * 20, "0x" + "22" * 20, 7)
    path = tmp_path / "deployment.json"
    dep.save(path)
    assert Deployment.load(path) == Deployment(
        31337, "0x1111111111111111111111111111111111111111", "0x" + "22" * 20, 7
    )
    path.write_text('{"format": "other"}')
    with pytest.raises(ConfigError):
        Deployment.load(path)
    with pytest.raises(ConfigError, match="chain deploy"):
        Deployment.load(tmp_path / "missing.json")


async def test_concurrent_submitters_share_nonces(env: Env) -> None:
    """Many tasks send from one account (and several others) at once: no nonce errors."""
    chain = AsyncChain(env.client, max_threads=8)
    owner = env.owner
    joiners = env.keys[10:16]

    async def fund() -> None:
        await chain.fund_rewards(owner, SUBNET, 1000)

    async def join(i: int) -> None:
        await chain.join(joiners[i], SUBNET, peer(20 + i), Role.TRAINER, 10**16)

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(fund)
        for i in range(len(joiners)):
            nursery.start_soon(join, i)
        nursery.start_soon(chain.submit_round, owner, env.proof(env.record(1)))
    info = env.client.registry.functions.subnetInfo(SUBNET).call()
    assert info[4] == 12 * 1000
    for i, key in enumerate(joiners):
        assert (await chain.member(SUBNET, key.address)).peer_id_hash == peer(20 + i).hashed
    assert await chain.round_recorded(SUBNET, 1)
    assert env.client.nonces.statistics().resyncs == 0


def test_rpc_down_raises_chain_error() -> None:
    config = ChainConfig(retry=RetryPolicy(attempts=3, first_delay=0.001))
    client = ChainClient.connect("http://127.0.0.1:9", None, config)
    with pytest.raises(ChainError, match="RPC unreachable during chain id after 3 attempts"):
        _ = client.chain_id
    assert client.stats.retries == 2


@needs_anvil
async def test_rpc_restart_mid_submission(tmp_path: Path) -> None:
    state = tmp_path / "anvil-state.json"
    devchain = Devchain(state=state)
    devchain.start()
    try:
        config = ChainConfig(
            poll_interval=0.01, retry=RetryPolicy(attempts=200, first_delay=0.01, max_delay=0.1)
        )
        client = ChainClient.connect(devchain.url, None, config)
        keys = devchain.keys
        deploy(client, keys[0])
        validators = sorted(keys[1:4], key=lambda k: int(k.address, 16))
        client.create_subnet(keys[0], SUBNET, SubnetParams(), [k.address for k in validators], 2)
        rec = RoundRecord(
            subnet=SUBNET,
            round=1,
            validator_set_version=1,
            parent_cid=b"\x01g",
            model_cid=b"\x01m",
            updates_root=bytes(32),
            metadata_hash=bytes(32),
            aggregator=bytes(32),
        )
        proof = RoundProof.assemble(
            client.domain, rec, [sign_round(k, client.domain, rec) for k in validators[:2]]
        )
        await trio.to_thread.run_sync(devchain.stop)  # anvil dumps its state and exits
        retries_before = client.stats.retries
        done = threading.Event()

        def submit() -> None:
            client.submit_round(keys[0], proof)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, submit)
            await wait_until(lambda: client.stats.retries > retries_before + 2)
            assert not done.is_set()
            await trio.to_thread.run_sync(devchain.start)  # same port, same state
        assert done.is_set()
        assert client.round_recorded(SUBNET, 1)

        # the node restarts after the proof is mined, before it is confirmed
        rec2 = dataclasses.replace(rec, round=2, parent_cid=rec.model_cid, model_cid=b"\x01n")
        proof2 = RoundProof.assemble(
            client.domain, rec2, [sign_round(k, client.domain, rec2) for k in validators[:2]]
        )
        finished = threading.Event()

        def submit_confirmed() -> None:
            client.submit_round(keys[0], proof2, confirmations=2)
            finished.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, submit_confirmed)
            await wait_until(lambda: client.round_recorded(SUBNET, 2))
            await trio.to_thread.run_sync(devchain.stop)
            retries_before = client.stats.retries
            await wait_until(lambda: client.stats.retries > retries_before + 2)
            assert not finished.is_set()
            await trio.to_thread.run_sync(devchain.start)
            await trio.to_thread.run_sync(client.rpc_request, "anvil_mine", [1])
        assert finished.is_set()
        assert client.lineage(SUBNET, 2) == [2, 1]
    finally:
        devchain.stop()


async def test_reorg_drops_a_proof_which_is_resubmitted(env: Env) -> None:
    client = ChainClient.connect(
        env.devchain.url, env.deployment, ChainConfig(confirmations=3, poll_interval=0.01)
    )
    proof = env.proof(env.record(1))
    result: list[object] = []

    def submit() -> None:
        result.append(client.submit_round(env.owner, proof))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, submit)
        await wait_until(lambda: client.stats.sent == 1 and client.round_recorded(SUBNET, 1))
        mined_at = client.block_number()
        # replace the block holding the proof: the transaction is gone
        client.rpc_request("anvil_reorg", [1, []])
        assert client.block_number() == mined_at
        await wait_until(lambda: client.stats.resubmissions == 1)
        # let the resubmitted proof gather its confirmations
        while not result:
            client.rpc_request("anvil_mine", [1])
            await trio.sleep(0.02)
    rc = result[0]
    assert rc is not None
    assert client.round_recorded(SUBNET, 1)
    assert client.block_number() - rc.block_number + 1 >= 3  # type: ignore[attr-defined]


def test_resubmission_skipped_when_the_round_landed_elsewhere(env: Env) -> None:
    """A dropped proof whose round was recorded by another submitter is not sent again."""
    proof = env.proof(env.record(1))
    sent = env.client.send(
        env.owner,
        env.client.ledger.address,
        bytes.fromhex(
            env.client.ledger.encode_abi("submitRound", [proof.record.as_abi(), proof.packed])[2:]
        ),
        gas=400_000,
        what="submitRound",
        done=lambda: env.client.round_recorded(SUBNET, 1),
    )
    env.client.rpc_request("anvil_reorg", [1, []])
    other = env.keys[9]
    env.client.submit_round(other, proof)
    assert env.client.wait(sent) is None
    assert env.client.stats.resubmissions == 0


async def test_events_tentative_confirmed_and_retracted(env: Env) -> None:
    start = env.client.block_number() + 1
    follower = EventFollower(env.client, confirmations=3, from_block=start)
    env.client.submit_round(env.owner, env.proof(env.record(1)))
    updates = follower.poll()
    assert [(u.status, u.event.name) for u in updates] == [
        (EventStatus.TENTATIVE, "RoundRecorded"),
        (EventStatus.TENTATIVE, "ReputationsUpdated"),
    ]
    assert updates[0].event.args["round"] == 1
    env.client.rpc_request("anvil_reorg", [1, []])
    assert [u.status for u in follower.poll()] == [EventStatus.RETRACTED] * 2
    # the dropped transaction waited for 1 confirmation only, so nobody resubmits it: the
    # next transaction waits behind its nonce until the client fills the gap
    client = ChainClient.connect(
        env.devchain.url, env.deployment, ChainConfig(poll_interval=0.01, gap_grace=0.1)
    )
    client.nonces = env.client.nonces
    client.submit_round(env.owner, env.proof(env.record(1)))
    assert client.stats.gap_fills == 1
    assert [u.status for u in follower.poll()] == [EventStatus.TENTATIVE] * 2
    env.client.rpc_request("anvil_mine", [2])
    confirmed = follower.poll()
    assert [(u.status, u.event.name) for u in confirmed] == [
        (EventStatus.CONFIRMED, "RoundRecorded"),
        (EventStatus.CONFIRMED, "ReputationsUpdated"),
    ]
    env.client.rpc_request("anvil_mine", [3])
    assert follower.poll() == []


def test_a_nonce_taken_by_another_process_is_recovered(env: Env) -> None:
    """Two clients (two processes, in effect) send from one account: the stale one re-reads."""
    other = ChainClient.connect(env.devchain.url, env.deployment, FAST)
    env.client.fund_rewards(env.owner, SUBNET, 1)
    other.fund_rewards(env.owner, SUBNET, 1)
    env.client.fund_rewards(env.owner, SUBNET, 1)  # its cached nonce was taken by `other`
    assert env.client.nonces.statistics().resyncs == 1
    assert env.client.registry.functions.subnetInfo(SUBNET).call()[4] == 3


async def test_event_feed_and_async_devchain() -> None:
    if find_anvil() is None:
        pytest.skip(ANVIL_MISSING)
    async with Devchain() as dc:
        client = ChainClient.connect(dc.url, None, FAST)
        await trio.to_thread.run_sync(deploy, client, dc.keys[0])
        chain = AsyncChain(client)
        start = client.block_number() + 1
        send, receive = trio.open_memory_channel[EventUpdate](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    chain.follow_events,
                    send,
                    confirmations=2,
                    from_block=start,
                    poll_interval=0.01,
                )
            )
            params = SubnetParams()
            await trio.to_thread.run_sync(
                client.create_subnet, dc.keys[0], SUBNET, params, [dc.keys[1].address], 1
            )
            seen = [await receive.receive() for _ in range(2)]
            assert [(u.status, u.event.name) for u in seen] == [
                (EventStatus.TENTATIVE, "SubnetCreated"),
                (EventStatus.TENTATIVE, "ValidatorSetUpdated"),
            ]
            await trio.to_thread.run_sync(client.rpc_request, "anvil_mine", [1])
            confirmed = [await receive.receive() for _ in range(2)]
            assert {u.status for u in confirmed} == {EventStatus.CONFIRMED}
            nursery.cancel_scope.cancel()
    assert dc.pid is None
