"""Where quorum proofs go: the chain (RoundLedger through `AsyncChain`), or, with no chain
configured, only the gossip network (a local experiment: the proof is the QuorumProof
message that carries k EIP-712 signatures)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from sorap2p.chain.aio import AsyncChain
from sorap2p.chain.client import DisputeStatus, TransactionRevertedError
from sorap2p.chain.proof import (
    ChainKey,
    Domain,
    RoundProof,
    RoundRecord,
    Verdict,
    order_signatures,
    round_digest,
    sign_round,
    sign_verdict,
    verdict_digest,
)
from sorap2p.core.ids import RoundId, SubnetId

_log = logging.getLogger(__name__)

OFFLINE_DOMAIN = Domain(chain_id=0, verifying_contract="0x" + "00" * 20)


class ProofBackend(Protocol):
    key: ChainKey

    @property
    def domain(self) -> Domain: ...

    async def submit(self, record: RoundRecord, signatures: tuple[bytes, ...]) -> bytes: ...

    async def recorded(self, subnet: SubnetId, round: RoundId) -> bool: ...

    async def dispute(self, subnet: SubnetId, round: RoundId, reason: str) -> int | None: ...


def digest_of(backend: ProofBackend, record: RoundRecord) -> bytes:
    return round_digest(backend.domain, record)


def sign(backend: ProofBackend, record: RoundRecord) -> bytes:
    return sign_round(backend.key, backend.domain, record)


@dataclass
class GossipOnlyProofs:
    """No chain: nothing is written; the gossiped QuorumProof is the proof."""

    key: ChainKey

    @property
    def domain(self) -> Domain:
        return OFFLINE_DOMAIN

    async def submit(self, record: RoundRecord, signatures: tuple[bytes, ...]) -> bytes:
        return b""

    async def recorded(self, subnet: SubnetId, round: RoundId) -> bool:
        return False

    async def dispute(self, subnet: SubnetId, round: RoundId, reason: str) -> int | None:
        return None


@dataclass
class ChainProofs:
    """RoundLedger on an EVM chain. ``slash_amount``: what an upheld verdict takes from the
    offending aggregator (the subnet's minimum aggregator stake: all of what it had to lock)."""

    key: ChainKey
    chain: AsyncChain
    dispute_bond: int = 0
    slash_amount: int = 0

    @property
    def domain(self) -> Domain:
        return self.chain.client.domain

    async def submit(self, record: RoundRecord, signatures: tuple[bytes, ...]) -> bytes:
        digest = round_digest(self.domain, record)
        proof = RoundProof(record, order_signatures(digest, signatures))
        if await self.recorded_raw(record.subnet, record.round):
            return b""
        receipt = await self.chain.submit_round(self.key, proof)
        return receipt.tx_hash if receipt is not None else b""

    async def recorded_raw(self, subnet: bytes, round: int) -> bool:
        return await self.chain._run(self.chain.client.round_recorded, subnet, round)

    async def recorded(self, subnet: SubnetId, round: RoundId) -> bool:
        return await self.recorded_raw(subnet.key, round.number)

    async def dispute(self, subnet: SubnetId, round: RoundId, reason: str) -> int | None:
        """Open the on-chain dispute of a round, proven or not, locking the subnet's bond.
        None when the round already has an open dispute (ours or another validator's)."""
        if await self.chain.open_dispute_of(subnet.key, round.number):
            return None
        tag = reason.encode()[:32].ljust(32, b"\x00")
        try:
            return await self.chain.open_dispute(
                self.key, subnet.key, round.number, tag, self.dispute_bond
            )
        except TransactionRevertedError as exc:
            if exc.error == "DisputeExists":
                return None  # another validator was quicker
            raise

    def verdict_digest(self, verdict: Verdict) -> bytes:
        return verdict_digest(self.domain, verdict)

    def sign_verdict(self, verdict: Verdict) -> bytes:
        return sign_verdict(self.key, self.domain, verdict)

    async def resolve(self, verdict: Verdict, signatures: tuple[bytes, ...]) -> bytes:
        """Post a quorum-signed verdict; b"" when the dispute is no longer open."""
        if await self.chain.dispute_status(verdict.dispute_id) is not DisputeStatus.OPEN:
            return b""
        ordered = order_signatures(self.verdict_digest(verdict), signatures)
        try:
            receipt = await self.chain.resolve_dispute(self.key, verdict, ordered)
        except TransactionRevertedError as exc:
            if exc.error == "DisputeNotOpen":
                return b""  # another validator's resolution landed first
            raise
        return receipt.tx_hash if receipt is not None else b""
