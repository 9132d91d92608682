"""Deploy SubnetRegistry + RoundLedger (and optionally a TestToken) and describe the result."""

from __future__ import annotations

from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from sorap2p.chain.artifacts import load_artifact
from sorap2p.chain.client import DEPLOY_GAS, GAS, ChainClient
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.proof import ChainKey
from sorap2p.core.errors import ChainError


def _create(client: ChainClient, key: ChainKey, name: str, ctor: bytes = b"") -> tuple[str, int]:
    code = bytes.fromhex(load_artifact(name).bytecode.removeprefix("0x")) + ctor
    sent = client.send(key, None, code, gas=DEPLOY_GAS, what=f"deploy {name}", preflight=False)
    rc = client.wait(sent)
    if rc is None or rc.contract_address is None:
        raise ChainError(f"deploy {name}: no contract address in the receipt")
    return str(rc.contract_address), rc.block_number


def deploy(client: ChainClient, key: ChainKey, *, with_token: bool = False) -> Deployment:
    """Deploy the contracts from ``key``, wire the ledger into the registry, and point
    ``client`` at the new deployment."""
    registry, block = _create(client, key, "SubnetRegistry")
    ledger, _ = _create(client, key, "RoundLedger", abi_encode(["address"], [registry]))
    token = _create(client, key, "TestToken")[0] if with_token else None
    reg = client.w3.eth.contract(
        address=to_checksum_address(registry),
        abi=load_artifact("SubnetRegistry").abi,
    )
    client.transact(key, reg, "setLedger", [ledger], gas=GAS["setLedger"])
    deployment = Deployment(
        chain_id=client.chain_id, registry=registry, ledger=ledger, block=block, token=token
    )
    client.use(deployment)
    return deployment
