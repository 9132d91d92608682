"""The trio face of `ChainClient`: every call runs the blocking client in a worker thread."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from sorap2p.chain.client import (
    ChainClient,
    DisputeStatus,
    Member,
    Receipt,
    RoundInfo,
    SubnetParams,
)
from sorap2p.chain.events import EventFollower, EventUpdate
from sorap2p.chain.proof import ChainKey, RoundProof, Verdict
from sorap2p.core.ids import PeerId, Role

T = TypeVar("T")


class AsyncChain:
    """Wraps one `ChainClient`; many tasks may call it at once (nonces are per account)."""

    def __init__(self, client: ChainClient, *, max_threads: int = 8) -> None:
        self.client = client
        self._limiter = trio.CapacityLimiter(max_threads)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def submit_round(
        self, key: ChainKey, proof: RoundProof, confirmations: int | None = None
    ) -> Receipt | None:
        return await self._run(self.client.submit_round, key, proof, confirmations)

    async def join(
        self, key: ChainKey, subnet: bytes, peer_id: PeerId, role: Role, stake: int
    ) -> Receipt | None:
        return await self._run(self.client.join, key, subnet, peer_id, role, stake)

    async def add_stake(self, key: ChainKey, subnet: bytes, stake: int) -> Receipt | None:
        return await self._run(self.client.add_stake, key, subnet, stake)

    async def leave(self, key: ChainKey, subnet: bytes) -> Receipt | None:
        return await self._run(self.client.leave, key, subnet)

    async def withdraw_stake(self, key: ChainKey, subnet: bytes) -> Receipt | None:
        return await self._run(self.client.withdraw_stake, key, subnet)

    async def fund_rewards(self, key: ChainKey, subnet: bytes, amount: int) -> Receipt | None:
        return await self._run(self.client.fund_rewards, key, subnet, amount)

    async def credit_round(
        self, key: ChainKey, subnet: bytes, round: int, credits: Sequence[tuple[str, int]]
    ) -> Receipt | None:
        return await self._run(self.client.credit_round, key, subnet, round, credits)

    async def claim(self, key: ChainKey, subnet: bytes) -> Receipt | None:
        return await self._run(self.client.claim, key, subnet)

    async def open_dispute(
        self, key: ChainKey, subnet: bytes, round: int, reason: bytes, bond: int
    ) -> int:
        return await self._run(self.client.open_dispute, key, subnet, round, reason, bond)

    async def resolve_dispute(
        self, key: ChainKey, verdict: Verdict, signatures: Sequence[bytes]
    ) -> Receipt | None:
        return await self._run(self.client.resolve_dispute, key, verdict, signatures)

    async def open_dispute_of(self, subnet: bytes, round: int) -> int:
        return await self._run(self.client.open_dispute_of, subnet, round)

    async def dispute_status(self, dispute_id: int) -> DisputeStatus:
        return await self._run(self.client.dispute_status, dispute_id)

    async def round_recorded(self, subnet: bytes, round: int) -> bool:
        return await self._run(self.client.round_recorded, subnet, round)

    async def latest_round(self, subnet: bytes) -> int:
        return await self._run(self.client.latest_round, subnet)

    async def round_info(self, subnet: bytes, round: int) -> RoundInfo:
        return await self._run(self.client.round_info, subnet, round)

    async def reputation(self, subnet: bytes, trainer: bytes) -> tuple[int, int]:
        return await self._run(self.client.reputation, subnet, trainer)

    async def validator_set(self, subnet: bytes) -> tuple[int, int, list[str]]:
        return await self._run(self.client.validator_set, subnet)

    async def subnet_params(self, subnet: bytes) -> SubnetParams:
        return await self._run(self.client.subnet_params, subnet)

    async def member(self, subnet: bytes, address: str) -> Member:
        return await self._run(self.client.member, subnet, address)

    async def follow_events(
        self,
        send: trio.MemorySendChannel[EventUpdate],
        *,
        confirmations: int,
        from_block: int = 0,
        poll_interval: float = 1.0,
    ) -> None:
        """Feed event updates (tentative / confirmed / retracted) into a bounded channel until
        cancelled; start it in the node's nursery. Closes ``send`` when it returns."""
        follower = EventFollower(self.client, confirmations=confirmations, from_block=from_block)
        async with send:
            while True:
                for update in await self._run(follower.poll):
                    await send.send(update)
                await trio.sleep(poll_interval)
