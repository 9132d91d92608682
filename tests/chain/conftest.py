"""Chain fixtures: one anvil per test session (127.0.0.1, free port), contracts deployed once,
``evm_snapshot``/``evm_revert`` around every test. Tests that need anvil skip with the install
command when the npm package is absent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sorap2p.chain.client import ChainClient, ChainConfig, RetryPolicy, SubnetParams
from sorap2p.chain.deploy import deploy
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.devchain import Devchain, find_anvil
from sorap2p.chain.proof import ChainKey, Domain, RoundProof, RoundRecord, sign_round
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import PeerId, SubnetId

ANVIL_MISSING = "anvil not installed: run `npm ci --ignore-scripts --prefix contracts`"
FAST = ChainConfig(
    confirmations=1, poll_interval=0.01, confirm_timeout=30.0, retry=RetryPolicy(attempts=3)
)
SUBNET = SubnetId("chain-tests").key
N_VALIDATORS = 7
QUORUM = 5


def peer(i: int) -> PeerId:
    return IdentityKey(hashlib.sha256(b"peer%d" % i).digest()).peer_id


@dataclass
class Env:
    """A deployed chain with one subnet (7 validators, quorum 5) at a snapshot."""

    devchain: Devchain
    deployment: Deployment
    client: ChainClient
    keys: tuple[ChainKey, ...]

    @property
    def owner(self) -> ChainKey:
        return self.keys[0]

    @property
    def validators(self) -> list[ChainKey]:
        return sorted(self.keys[1 : 1 + N_VALIDATORS], key=lambda k: int(k.address, 16))

    @property
    def domain(self) -> Domain:
        return self.client.domain

    def rpc(self, method: str, *params: object) -> object:
        return self.client.rpc_request(method, params)

    def record(self, round: int, parent: bytes = b"\x01genesis", **changes: object) -> RoundRecord:
        fields: dict[str, object] = {
            "subnet": SUBNET,
            "round": round,
            "validator_set_version": 1,
            "parent_cid": parent,
            "model_cid": b"\x01model-%d" % round,
            "updates_root": hashlib.sha256(b"root%d" % round).digest(),
            "metadata_hash": hashlib.sha256(b"meta%d" % round).digest(),
            "aggregator": peer(99).hashed,
            "trainers": tuple(peer(i).hashed for i in range(10)),
            "deltas": tuple((i - 3) * 1000 for i in range(10)),
        }
        fields.update(changes)
        return RoundRecord(**fields)  # type: ignore[arg-type]

    def proof(
        self,
        record: RoundRecord,
        signers: list[ChainKey] | None = None,
        domain: Domain | None = None,
    ) -> RoundProof:
        signers = self.validators[:QUORUM] if signers is None else signers
        sigs = [sign_round(k, domain or self.domain, record) for k in signers]
        return RoundProof.assemble(domain or self.domain, record, sigs)


@pytest.fixture(scope="session")
def _session_chain() -> Iterator[tuple[Devchain, Deployment]]:
    if find_anvil() is None:
        pytest.skip(ANVIL_MISSING)
    with Devchain(accounts=20) as dc:
        client = ChainClient.connect(dc.url, None, FAST)
        deployment = deploy(client, dc.keys[0], with_token=True)
        validators = [k.address for k in dc.keys[1 : 1 + N_VALIDATORS]]
        params = SubnetParams(challenge_window=600, unbonding_delay=3600, dispute_bond=10**16)
        client.create_subnet(dc.keys[0], SUBNET, params, validators, QUORUM)
        yield dc, deployment


@pytest.fixture
def env(_session_chain: tuple[Devchain, Deployment]) -> Iterator[Env]:
    dc, deployment = _session_chain
    client = ChainClient.connect(dc.url, deployment, FAST)
    snapshot = client.rpc_request("evm_snapshot")
    try:
        yield Env(dc, deployment, client, dc.keys)
    finally:
        assert client.rpc_request("evm_revert", [snapshot]) is True
