"""SubnetRegistry and disputes on anvil: membership, unbonding, rewards, slashing verdicts."""

from __future__ import annotations

import pytest

from sorap2p.chain.artifacts import load_artifact
from sorap2p.chain.client import DisputeStatus, SubnetParams, TransactionRevertedError
from sorap2p.chain.proof import Verdict, order_signatures, sign_verdict, verdict_digest
from sorap2p.core.ids import Role, SubnetId
from tests.chain.conftest import QUORUM, SUBNET, Env, peer

pytestmark = pytest.mark.chain
STAKE = 10**18
BOND = 10**16


def trainer_joined(env: Env, index: int = 12, peer_index: int = 0) -> None:
    env.client.join(env.keys[index], SUBNET, peer(peer_index), Role.TRAINER, STAKE)


def test_join_binds_address_peer_and_role(env: Env) -> None:
    key = env.keys[12]
    trainer_joined(env)
    m = env.client.member(SUBNET, key.address)
    assert (m.peer_id_hash, m.role, m.stake, m.unbonding_ends) == (
        peer(0).hashed,
        Role.TRAINER.code,
        STAKE,
        0,
    )
    assert env.client.registry.functions.memberOfPeer(SUBNET, peer(0).hashed).call() == key.address
    with pytest.raises(TransactionRevertedError, match="AlreadyMember"):
        env.client.join(key, SUBNET, peer(1), Role.TRAINER, STAKE)
    with pytest.raises(TransactionRevertedError, match="PeerIdTaken"):
        env.client.join(env.keys[13], SUBNET, peer(0), Role.TRAINER, STAKE)
    with pytest.raises(TransactionRevertedError, match="StakeTooLow"):
        env.client.join(env.keys[13], SUBNET, peer(1), Role.AGGREGATOR, 1)
    env.client.add_stake(key, SUBNET, 5)
    assert env.client.member(SUBNET, key.address).stake == STAKE + 5


def test_early_withdrawal_is_refused(env: Env) -> None:
    key = env.keys[12]
    trainer_joined(env)
    with pytest.raises(TransactionRevertedError, match="NotUnbonding"):
        env.client.withdraw_stake(key, SUBNET)
    env.client.leave(key, SUBNET)
    assert not env.client.registry.functions.isActiveMember(SUBNET, key.address).call()
    with pytest.raises(TransactionRevertedError, match="UnbondingNotOver"):
        env.client.withdraw_stake(key, SUBNET)
    env.rpc("evm_increaseTime", 3601)
    env.rpc("evm_mine")
    before = env.client.balance(key.address)
    rc = env.client.withdraw_stake(key, SUBNET)
    assert rc is not None
    assert env.client.balance(key.address) > before + STAKE - 10**16  # minus gas
    assert env.client.member(SUBNET, key.address).role == 0


def test_validator_set_rules(env: Env) -> None:
    with pytest.raises(TransactionRevertedError, match="NotSubnetOwner"):
        env.client.update_validator_set(env.keys[3], SUBNET, [env.keys[3].address], 1)
    with pytest.raises(TransactionRevertedError, match="BadQuorum"):
        env.client.update_validator_set(env.owner, SUBNET, [env.keys[3].address], 2)
    with pytest.raises(TransactionRevertedError, match="SubnetExists"):
        env.client.create_subnet(env.owner, SUBNET, SubnetParams(), [env.keys[1].address], 1)


def test_rewards_in_eth_credited_per_round_and_claimed(env: Env) -> None:
    alice, bob = env.keys[12], env.keys[13]
    env.client.fund_rewards(env.owner, SUBNET, 10**18)
    with pytest.raises(TransactionRevertedError, match="RoundNotRecorded"):
        env.client.credit_round(env.owner, SUBNET, 1, [(alice.address, 1)])
    env.client.submit_round(env.owner, env.proof(env.record(1)))
    with pytest.raises(TransactionRevertedError, match="NotSubnetOwner"):
        env.client.credit_round(alice, SUBNET, 1, [(alice.address, 1)])
    with pytest.raises(TransactionRevertedError, match="PoolTooSmall"):
        env.client.credit_round(env.owner, SUBNET, 1, [(alice.address, 2 * 10**18)])
    env.client.credit_round(
        env.owner, SUBNET, 1, [(alice.address, 3 * 10**17), (bob.address, 10**17)]
    )
    with pytest.raises(TransactionRevertedError, match="RoundAlreadyCredited"):
        env.client.credit_round(env.owner, SUBNET, 1, [(alice.address, 1)])
    assert env.client.claimable(SUBNET, alice.address) == 3 * 10**17
    before = env.client.balance(alice.address)
    env.client.claim(alice, SUBNET)
    assert env.client.balance(alice.address) > before + 3 * 10**17 - 10**15
    with pytest.raises(TransactionRevertedError, match="NothingToClaim"):
        env.client.claim(alice, SUBNET)


def test_erc20_subnet_stake_and_rewards(env: Env) -> None:
    token_address = env.deployment.token
    assert token_address is not None
    token = env.client.w3.eth.contract(address=token_address, abi=load_artifact("TestToken").abi)
    subnet = SubnetId("erc20-subnet").key
    params = SubnetParams(token=token_address, min_stake=(100, 100, 100, 0))
    env.client.create_subnet(env.owner, subnet, params, [k.address for k in env.validators], QUORUM)
    trainer = env.keys[12]
    for who in (env.owner, trainer):
        env.client.transact(env.owner, token, "mint", [who.address, 10_000])
        env.client.approve(who, token_address, 10_000)
    env.client.join(trainer, subnet, peer(3), Role.TRAINER, 500)
    env.client.fund_rewards(env.owner, subnet, 1_000)
    rec = env.record(1, subnet=subnet)
    env.client.submit_round(env.owner, env.proof(rec))
    env.client.credit_round(env.owner, subnet, 1, [(trainer.address, 250)])
    env.client.claim(trainer, subnet)
    assert token.functions.balanceOf(trainer.address).call() == 10_000 - 500 + 250


def _dispute(env: Env, challenger_index: int = 13) -> tuple[int, Verdict]:
    trainer_joined(env)  # the offender: keys[12]
    challenger = env.keys[challenger_index]
    env.client.join(challenger, SUBNET, peer(7), Role.VALIDATOR, STAKE)
    env.client.submit_round(env.owner, env.proof(env.record(1)))
    dispute_id = env.client.open_dispute(challenger, SUBNET, 1, b"\x42" * 32, BOND)
    verdict = Verdict(dispute_id, SUBNET, 1, 1, True, env.keys[12].address, STAKE // 2)
    return dispute_id, verdict


def _signed(env: Env, verdict: Verdict, n: int = QUORUM) -> list[bytes]:
    keys = env.validators[:n]
    return [sign_verdict(k, env.domain, verdict) for k in keys]  # validators are sorted


def test_upheld_dispute_slashes_and_pays_the_challenger(env: Env) -> None:
    _, verdict = _dispute(env)
    challenger = env.keys[13]
    with pytest.raises(TransactionRevertedError, match="TooFewSignatures"):
        env.client.resolve_dispute(env.owner, verdict, _signed(env, verdict, QUORUM - 1))
    env.client.resolve_dispute(env.owner, verdict, _signed(env, verdict))
    assert env.client.member(SUBNET, env.keys[12].address).stake == STAKE // 2
    assert env.client.claimable(SUBNET, challenger.address) == STAKE // 2
    assert env.client.ledger.functions.withdrawable(challenger.address).call() == BOND
    env.client.withdraw_bond(challenger)
    with pytest.raises(TransactionRevertedError, match="DisputeNotOpen"):
        env.client.resolve_dispute(env.owner, verdict, _signed(env, verdict))


def test_rejected_dispute_forfeits_the_bond(env: Env) -> None:
    _, upheld = _dispute(env)
    verdict = Verdict(upheld.dispute_id, SUBNET, 1, 1, False, upheld.offender, 0)
    env.client.resolve_dispute(env.owner, verdict, _signed(env, verdict))
    assert env.client.member(SUBNET, env.keys[12].address).stake == STAKE
    assert env.client.ledger.functions.withdrawable(env.owner.address).call() == BOND
    assert env.client.ledger.functions.withdrawable(env.keys[13].address).call() == 0


def test_verdict_must_match_its_dispute_and_signatures(env: Env) -> None:
    _, verdict = _dispute(env)
    wrong_round = Verdict(verdict.dispute_id, SUBNET, 2, 1, True, verdict.offender, 1)
    with pytest.raises(TransactionRevertedError, match="VerdictMismatch"):
        env.client.resolve_dispute(env.owner, wrong_round, _signed(env, wrong_round))
    bigger = Verdict(verdict.dispute_id, SUBNET, 1, 1, True, verdict.offender, STAKE)
    # signatures over the smaller amount, ordered as the contract recovers them for `bigger`
    sigs = order_signatures(verdict_digest(env.domain, bigger), _signed(env, verdict))
    with pytest.raises(TransactionRevertedError, match="NotAValidator"):
        env.client.resolve_dispute(env.owner, bigger, sigs)


def test_dispute_after_the_window_and_other_rejections(env: Env) -> None:
    trainer_joined(env)
    env.client.submit_round(env.owner, env.proof(env.record(1)))
    outsider = env.keys[16]
    with pytest.raises(TransactionRevertedError, match="NotStaked"):
        env.client.open_dispute(outsider, SUBNET, 1, bytes(32), BOND)
    with pytest.raises(TransactionRevertedError, match="BondTooLow"):
        env.client.open_dispute(env.keys[12], SUBNET, 1, bytes(32), BOND - 1)
    with pytest.raises(TransactionRevertedError, match="RoundZero"):
        env.client.open_dispute(env.keys[12], SUBNET, 0, bytes(32), BOND)
    env.rpc("evm_increaseTime", 601)
    env.rpc("evm_mine")
    with pytest.raises(TransactionRevertedError, match="DisputeWindowClosed"):
        env.client.open_dispute(env.keys[12], SUBNET, 1, bytes(32), BOND)


def test_unproven_round_is_disputed_and_its_offender_slashed(env: Env) -> None:
    """A round that never got a proof (the validators refused it) can still be disputed,
    at any time, once at a time; an upheld verdict slashes its offender."""
    trainer_joined(env)  # the offender: keys[12]
    challenger = env.keys[13]
    env.client.join(challenger, SUBNET, peer(7), Role.VALIDATOR, STAKE)
    env.rpc("evm_increaseTime", 10_000)  # far beyond any challenge window
    env.rpc("evm_mine")
    assert not env.client.round_recorded(SUBNET, 2)
    dispute_id = env.client.open_dispute(challenger, SUBNET, 2, b"\x01" * 32, BOND)
    assert env.client.open_dispute_of(SUBNET, 2) == dispute_id
    assert env.client.dispute_status(dispute_id) is DisputeStatus.OPEN
    with pytest.raises(TransactionRevertedError, match="DisputeExists"):
        env.client.open_dispute(env.keys[12], SUBNET, 2, bytes(32), BOND)
    verdict = Verdict(dispute_id, SUBNET, 2, 1, True, env.keys[12].address, STAKE)
    env.client.resolve_dispute(env.owner, verdict, _signed(env, verdict))
    assert env.client.member(SUBNET, env.keys[12].address).stake == 0
    assert env.client.claimable(SUBNET, challenger.address) == STAKE
    assert env.client.open_dispute_of(SUBNET, 2) == 0
    assert env.client.dispute_status(dispute_id) is DisputeStatus.UPHELD
    # resolved: the round can be disputed again (a new bond, a new verdict)
    again = env.client.open_dispute(challenger, SUBNET, 2, bytes(32), BOND)
    assert again == dispute_id + 1
    listed = env.client.disputes(SUBNET)
    assert [(d.dispute_id, d.round, d.status, d.slashed) for d in listed] == [
        (dispute_id, 2, DisputeStatus.UPHELD, STAKE),
        (again, 2, DisputeStatus.OPEN, 0),
    ]
    assert listed[0].challenger == challenger.address and listed[0].reason == "\x01" * 32
    assert listed[0].offender == env.keys[12].address


def test_only_the_ledger_slashes(env: Env) -> None:
    trainer_joined(env)
    with pytest.raises(TransactionRevertedError, match="NotLedger"):
        env.client.transact(
            env.owner,
            env.client.registry,
            "slash",
            [SUBNET, env.keys[12].address, 1, env.owner.address],
            gas=100_000,
        )
