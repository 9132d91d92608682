"""protocols/vectors/quorum-proof.json: Python reproduces every vector; RoundLedger on anvil
computes the same digests. Regenerate with ``SORAP2P_REGEN_VECTORS=1 pytest tests/chain``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.chain.devchain import mnemonic_keys
from sorap2p.chain.proof import (
    Domain,
    MerkleTree,
    RoundProof,
    RoundRecord,
    UpdateLeaf,
    Verdict,
    next_reputation,
    recover_signer,
    round_digest,
    sign_round,
    verdict_digest,
)
from sorap2p.core.cid import Cid
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.core.ids import RoundId, SubnetId
from tests.chain.conftest import Env, peer

VECTORS = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / "quorum-proof.json"
# The ledger address of a fresh anvil after `deploy` (deployer: mnemonic account 0, nonce 1).
LEDGER = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"


def build() -> dict[str, Any]:
    domain = Domain(31337, LEDGER)
    leaves = [
        UpdateLeaf.of(Cid.hash(b"update %d" % i), peer(i), 1_700_000_000 + i) for i in range(5)
    ]
    tree = MerkleTree(leaves)
    record = RoundRecord.build(
        subnet=SubnetId("digits"),
        round=RoundId(7),
        validator_set_version=1,
        parent=Cid.hash(b"model 6"),
        model=Cid.hash(b"model 7"),
        updates=leaves,
        metadata_hash=bytes(range(32)),
        aggregator=peer(99),
        ranking=[(peer(i), d) for i, d in enumerate([250_000, 100_000, 0, -50_000, -1_000_000])],
    )
    keys = mnemonic_keys(4)[1:4]
    proof = RoundProof.assemble(domain, record, [sign_round(k, domain, record) for k in keys])
    verdict = Verdict(1, record.subnet, 7, 1, True, keys[0].address, 10**17)
    return {
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
            "separator": domain.separator().hex(),
        },
        "round": {
            "record": {
                "subnet": record.subnet.hex(),
                "round": record.round,
                "validatorSetVersion": record.validator_set_version,
                "parentCid": record.parent_cid.hex(),
                "modelCid": record.model_cid.hex(),
                "updatesRoot": record.updates_root.hex(),
                "metadataHash": record.metadata_hash.hex(),
                "aggregator": record.aggregator.hex(),
                "trainers": [t.hex() for t in record.trainers],
                "deltas": list(record.deltas),
            },
            "structHash": record.struct_hash().hex(),
            "digest": round_digest(domain, record).hex(),
            "signers": list(proof.signers(domain)),
            "signerKeys": [k.private_key.hex() for k in keys],
            "signatures": [s.hex() for s in proof.signatures],
        },
        "merkle": {
            "leaves": [
                {
                    "updateCid": leaf.update_cid.hex(),
                    "trainer": leaf.trainer.hex(),
                    "timestamp": leaf.timestamp,
                    "hash": leaf.hash().hex(),
                    "proof": [p.hex() for p in tree.proof(leaf)],
                }
                for leaf in leaves
            ],
            "root": tree.root.hex(),
            "emptyRoot": MerkleTree([]).root.hex(),
        },
        "verdict": {
            "disputeId": verdict.dispute_id,
            "subnet": verdict.subnet.hex(),
            "round": verdict.round,
            "validatorSetVersion": verdict.validator_set_version,
            "upheld": verdict.upheld,
            "offender": verdict.offender,
            "slashAmount": verdict.slash_amount,
            "structHash": verdict.struct_hash().hex(),
            "digest": verdict_digest(domain, verdict).hex(),
        },
        "reputation": [
            {
                "value": v,
                "lastRound": lr,
                "round": r,
                "delta": d,
                "next": next_reputation(v, lr, r, d),
            }
            for v, lr, r, d in [
                (0, 0, 1, 250_000),
                (1_000_000, 1, 2, 0),
                (1_000_000, 1, 4, 100_000),
                (1_000_000, 1, 65, 7),
                (500, 3, 4, -1_000),
                (999_999_999_000_000, 9, 9, 2_000_000),
            ]
        ],
    }


def test_vectors_are_reproduced() -> None:
    built = json.loads(json.dumps(build()))
    if os.environ.get("SORAP2P_REGEN_VECTORS"):
        VECTORS.write_text(json.dumps(built, indent=2) + "\n")
    assert json.loads(VECTORS.read_text()) == built


def test_round_signatures_recover_to_the_listed_signers() -> None:
    v = json.loads(VECTORS.read_text())["round"]
    digest = bytes.fromhex(v["digest"])
    signers = [recover_signer(digest, bytes.fromhex(s)) for s in v["signatures"]]
    assert signers == v["signers"] == sorted(signers, key=lambda a: int(a, 16))


@pytest.mark.chain
def test_contract_agrees_with_the_vectors(env: Env) -> None:
    v = json.loads(VECTORS.read_text())
    assert env.deployment.ledger == v["domain"]["verifyingContract"]
    ledger = env.client.ledger.functions
    r = v["round"]["record"]
    record = RoundRecord(
        subnet=bytes.fromhex(r["subnet"]),
        round=r["round"],
        validator_set_version=r["validatorSetVersion"],
        parent_cid=bytes.fromhex(r["parentCid"]),
        model_cid=bytes.fromhex(r["modelCid"]),
        updates_root=bytes.fromhex(r["updatesRoot"]),
        metadata_hash=bytes.fromhex(r["metadataHash"]),
        aggregator=bytes.fromhex(r["aggregator"]),
        trainers=tuple(bytes.fromhex(t) for t in r["trainers"]),
        deltas=tuple(r["deltas"]),
    )
    assert ledger.domainSeparator().call().hex() == v["domain"]["separator"]
    assert ledger.hashRound(record.as_abi()).call().hex() == v["round"]["structHash"]
    assert ledger.roundDigest(record.as_abi()).call().hex() == v["round"]["digest"]
    vd = v["verdict"]
    verdict = Verdict(
        vd["disputeId"],
        bytes.fromhex(vd["subnet"]),
        vd["round"],
        vd["validatorSetVersion"],
        vd["upheld"],
        vd["offender"],
        vd["slashAmount"],
    )
    assert ledger.verdictDigest(verdict.as_abi()).call().hex() == vd["digest"]
    for leaf in v["merkle"]["leaves"]:
        got = ledger.updateLeaf(
            bytes.fromhex(leaf["updateCid"]), bytes.fromhex(leaf["trainer"]), leaf["timestamp"]
        ).call()
        assert got.hex() == leaf["hash"]
    for case in v["reputation"]:
        args = (case["value"], case["lastRound"], case["round"], case["delta"])
        assert ledger.nextReputation(*args).call() == case["next"]


@given(st.binary(min_size=65, max_size=65), st.binary(min_size=32, max_size=32))
def test_recover_rejects_garbage_only_as_a_remote_error(sig: bytes, digest: bytes) -> None:
    try:
        address = recover_signer(digest, sig)
    except RemoteProtocolError:
        return
    assert address.startswith("0x") and len(address) == 42


@given(st.binary(max_size=200))
def test_recover_rejects_wrong_lengths(sig: bytes) -> None:
    if len(sig) == 65:
        return
    with pytest.raises(RemoteProtocolError):
        recover_signer(bytes(32), sig)
