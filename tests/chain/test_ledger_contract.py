"""RoundLedger on anvil: every rejection of submitRound, lineage, reputation, Merkle inclusion."""

from __future__ import annotations

import dataclasses

import pytest

from sorap2p.chain.client import TransactionRevertedError
from sorap2p.chain.proof import (
    SECP256K1_N,
    Domain,
    MerkleTree,
    RoundProof,
    UpdateLeaf,
    next_reputation,
    order_signatures,
    round_digest,
)
from tests.chain.conftest import QUORUM, SUBNET, Env, peer

pytestmark = pytest.mark.chain


def reverted(env: Env, proof: RoundProof) -> str:
    with pytest.raises(TransactionRevertedError) as info:
        env.client.submit_round(env.owner, proof)
    return info.value.error


def as_submitted(env: Env, proof: RoundProof) -> RoundProof:
    """Order the signatures as the contract will see them (by the address each recovers to
    under the real digest), so that what fails is the check under test, not the order."""
    digest = round_digest(env.domain, proof.record)
    return RoundProof(proof.record, order_signatures(digest, proof.signatures))


def test_accepts_a_quorum_and_records_the_round(env: Env) -> None:
    rec = env.record(1)
    rc = env.client.submit_round(env.owner, env.proof(rec))
    assert rc is not None and rc.status == 1
    assert env.client.round_recorded(SUBNET, 1)
    assert env.client.latest_round(SUBNET) == 1
    info = env.client.round_info(SUBNET, 1)
    assert info.record_hash == rec.struct_hash()[:20]
    assert info.parent_round == 0 and info.validator_set_version == 1
    assert env.client.ledger.functions.isRecorded(rec.as_abi()).call()
    tampered = dataclasses.replace(rec, metadata_hash=b"\x01" * 32)
    assert not env.client.ledger.functions.isRecorded(tampered.as_abi()).call()


def test_too_few_signatures(env: Env) -> None:
    rec = env.record(1)
    assert reverted(env, env.proof(rec, env.validators[: QUORUM - 1])) == "TooFewSignatures"
    assert reverted(env, RoundProof(rec, ())) == "TooFewSignatures"


def test_duplicate_signer(env: Env) -> None:
    rec = env.record(1)
    good = env.proof(rec)
    dup = RoundProof(rec, (good.signatures[0], *good.signatures[:QUORUM]))
    assert reverted(env, dup) == "DuplicateSigner"


def test_unordered_signers(env: Env) -> None:
    rec = env.record(1)
    good = env.proof(rec)
    swapped = (good.signatures[1], good.signatures[0], *good.signatures[2:])
    assert reverted(env, RoundProof(rec, swapped)) == "UnorderedSigners"


def test_non_validator_signer(env: Env) -> None:
    rec = env.record(1)
    outsider = env.keys[15]
    proof = env.proof(rec, [*env.validators[: QUORUM - 1], outsider])
    assert reverted(env, proof) == "NotAValidator"


def test_high_s_signature(env: Env) -> None:
    rec = env.record(1)
    good = env.proof(rec)
    sig = good.signatures[0]
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert reverted(env, RoundProof(rec, (flipped, *good.signatures[1:]))) == "BadSignature"


def test_another_chain_id(env: Env) -> None:
    rec = env.record(1)
    other = Domain(env.domain.chain_id + 1, env.domain.verifying_contract)
    assert reverted(env, as_submitted(env, env.proof(rec, domain=other))) == "NotAValidator"


def test_another_contract(env: Env) -> None:
    rec = env.record(1)
    other = Domain(env.domain.chain_id, env.deployment.registry)
    assert reverted(env, as_submitted(env, env.proof(rec, domain=other))) == "NotAValidator"


def test_old_validator_set_version(env: Env) -> None:
    new_set = [k.address for k in env.keys[10:15]]
    env.client.update_validator_set(
        env.owner, SUBNET, [*new_set, *[k.address for k in env.validators]], 5
    )
    assert env.client.validator_set(SUBNET)[0] == 2
    stale = env.record(1, validator_set_version=1)
    assert reverted(env, env.proof(stale)) == "StaleValidatorSet"
    # the same validators sign the current version: accepted
    assert env.client.submit_round(env.owner, env.proof(env.record(1, validator_set_version=2)))


def test_removed_validator_no_longer_counts(env: Env) -> None:
    kept = env.validators[1:]
    env.client.update_validator_set(env.owner, SUBNET, [k.address for k in kept], 5)
    rec = env.record(1, validator_set_version=2)
    proof = env.proof(rec, env.validators[:QUORUM])  # includes the removed one
    assert reverted(env, proof) == "NotAValidator"


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_cid", b"\x01other-model"),
        ("parent_cid", b"\x01other-parent"),
        ("updates_root", b"\x02" * 32),
        ("metadata_hash", b"\x03" * 32),
        ("aggregator", b"\x04" * 32),
        ("deltas", tuple([5] * 10)),
        ("trainers", tuple(peer(i + 50).hashed for i in range(10))),
    ],
)
def test_tampered_fields(env: Env, field: str, value: object) -> None:
    rec = env.record(1)
    signed = env.proof(rec)
    tampered = RoundProof(dataclasses.replace(rec, **{field: value}), signed.signatures)
    assert reverted(env, as_submitted(env, tampered)) == "NotAValidator"


def test_tampered_subnet_and_round(env: Env) -> None:
    rec = env.record(1)
    signed = env.proof(rec)
    moved = RoundProof(dataclasses.replace(rec, round=2), signed.signatures)
    assert reverted(env, as_submitted(env, moved)) == "NotAValidator"
    other_subnet = RoundProof(dataclasses.replace(rec, subnet=b"\x07" * 32), signed.signatures)
    assert reverted(env, as_submitted(env, other_subnet)) == "UnknownSubnet"


def test_replayed_round(env: Env) -> None:
    proof = env.proof(env.record(1))
    env.client.submit_round(env.owner, proof)
    assert reverted(env, proof) == "RoundAlreadyRecorded"
    older = env.proof(env.record(1, model_cid=b"\x01different"))
    assert reverted(env, older) == "RoundAlreadyRecorded"


def test_parent_must_be_the_latest_model(env: Env) -> None:
    first = env.record(1)
    env.client.submit_round(env.owner, env.proof(first))
    assert reverted(env, env.proof(env.record(2, parent=b"\x01not-it"))) == "ParentMismatch"
    assert env.client.submit_round(env.owner, env.proof(env.record(2, parent=first.model_cid)))


def test_round_zero_and_bad_signature_length(env: Env) -> None:
    proof = env.proof(env.record(1))
    with pytest.raises(TransactionRevertedError, match="BadSignatureLength"):
        env.client.preflight(
            env.owner,
            env.client.ledger.address,
            bytes.fromhex(
                env.client.ledger.encode_abi(
                    "submitRound", [proof.record.as_abi(), proof.packed[:-1]]
                )[2:]
            ),
            0,
            "submitRound",
        )


def test_lineage_with_a_gap_and_reputation_rule(env: Env) -> None:
    trainer = peer(0).hashed
    parent = b"\x01genesis"
    expected, last = 0, 0
    for rnd, delta in [(1, 2_000_000), (2, -100_000), (5, 300_000), (6, 0)]:
        rec = env.record(rnd, parent=parent, trainers=(trainer,), deltas=(delta,))
        env.client.submit_round(env.owner, env.proof(rec))
        expected = next_reputation(expected, last, rnd, delta)
        last = rnd
        assert env.client.reputation(SUBNET, trainer) == (expected, rnd)
        parent = rec.model_cid
    assert env.client.lineage(SUBNET, 6) == [6, 5, 2, 1]
    assert env.client.lineage(SUBNET, 6, 2) == [6, 5]
    assert env.client.round_info(SUBNET, 5).parent_round == 2
    # by hand: 2.0; 2.0*0.95 - 0.1 = 1.8; 1.8*0.95^3 (floor each time) = 1.543275, + 0.3;
    # then * 0.95 = 1.75111125, floored to 1.751111
    assert expected == 1_751_111
    rule = env.client.ledger.functions.nextReputation
    for value, lr, rnd, delta in [(10**9, 1, 100, 5), (123_457, 3, 7, -1), (0, 0, 9, -5)]:
        assert rule(value, lr, rnd, delta).call() == next_reputation(value, lr, rnd, delta)


def test_merkle_inclusion_matches_the_python_tree(env: Env) -> None:
    leaves = [UpdateLeaf(b"\x01update-%d" % i, peer(i).hashed, 1_700_000_000 + i) for i in range(5)]
    tree = MerkleTree(leaves)
    rec = env.record(1, updates_root=tree.root)
    env.client.submit_round(env.owner, env.proof(rec))
    ledger = env.client.ledger.functions
    for leaf in leaves:
        assert (
            ledger.updateLeaf(leaf.update_cid, leaf.trainer, leaf.timestamp).call() == leaf.hash()
        )
        args = (rec.as_abi(), leaf.update_cid, leaf.trainer, leaf.timestamp, tree.proof(leaf))
        assert ledger.isUpdateIncluded(*args).call()
    stranger = UpdateLeaf(b"\x01nope", peer(9).hashed, 1)
    proof = tree.proof(leaves[0])
    args = (rec.as_abi(), stranger.update_cid, stranger.trainer, stranger.timestamp, proof)
    assert not ledger.isUpdateIncluded(*args).call()


def test_python_digests_equal_the_contracts(env: Env) -> None:
    rec = env.record(3, deltas=tuple(range(-5, 5)))
    ledger = env.client.ledger.functions
    assert ledger.hashRound(rec.as_abi()).call() == rec.struct_hash()
    assert ledger.roundDigest(rec.as_abi()).call() == round_digest(env.domain, rec)
    assert ledger.domainSeparator().call() == env.domain.separator()
