"""A node's link to the chain: load the deployment, join the subnet with a stake when not yet
a member, follow the registry's events into the node's `SubnetView`, and hand the roles a
`ChainProofs` backend."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from sorap2p.chain.aio import AsyncChain
from sorap2p.chain.client import ChainClient, ChainConfig
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.events import EventFollower, EventStatus
from sorap2p.chain.proof import ChainKey
from sorap2p.core.errors import ConfigError, RemoteProtocolError
from sorap2p.core.gossip_rules import SubnetView
from sorap2p.core.ids import PeerId, Role, RoundId
from sorap2p.node.proofs import ChainProofs
from sorap2p.node.services import Services

_log = logging.getLogger(__name__)

ROLE_OF_CODE = {r.code: r for r in Role}


def connect(services: Services) -> tuple[ChainClient, Deployment]:
    cfg = services.config.chain
    if not cfg.deployment:
        raise ConfigError("chain.deployment: a deployment file is needed with chain.url")
    deployment = Deployment.load(Path(cfg.deployment))
    client = ChainClient.connect(cfg.url, deployment, ChainConfig(confirmations=cfg.confirmations))
    return client, deployment


class RegistryView:
    """Folds registry events of one subnet into a `SubnetView`. A member slashed down to no
    stake is no longer active (as ``isActiveMember`` on chain): its gossip is refused."""

    def __init__(self, base: SubnetView) -> None:
        self.base = base
        self.members: dict[str, tuple[PeerId, Role]] = {}  # address -> (peer, role)
        self.validator_addresses: list[str] = []
        self.version = 0
        self.quorum = 1
        self.disputes: dict[int, RoundId] = {}  # dispute id -> round, of this subnet
        self.resolutions: dict[int, bool] = {}  # dispute id -> upheld
        self.stakes: dict[str, int] = {}  # address -> stake
        self.slashed_out: set[str] = set()  # members whose stake a slash took to zero

    def address_of(self, peer: PeerId) -> bytes | None:
        """The chain address a member joined with (None for a non-member)."""
        for addr, (p, _) in self.members.items():
            if p == peer:
                return bytes.fromhex(addr.removeprefix("0x"))
        return None

    def apply(self, name: str, args: dict[str, Any]) -> None:
        if name == "DisputeResolved":  # the event names no subnet: keep only ours
            dispute_id = int(args["disputeId"])
            if dispute_id in self.disputes:
                self.resolutions[dispute_id] = bool(args["upheld"])
            return
        if bytes(args.get("subnet", b"")) != self.base.subnet.key:
            return
        if name == "DisputeOpened":
            self.disputes[int(args["disputeId"])] = RoundId(int(args["round"]))
            return
        if name == "Joined":
            try:
                peer = PeerId(bytes(args["peerId"]))
            except RemoteProtocolError:
                return
            role = ROLE_OF_CODE.get(int(args["role"]))
            if role is not None:
                address = str(args["member"]).lower()
                self.members[address] = (peer, role)
                self.stakes[address] = int(args["stake"])
        elif name == "Left":
            self.members.pop(str(args["member"]).lower(), None)
        elif name == "StakeAdded":
            address = str(args["member"]).lower()
            self.stakes[address] = int(args["stake"])
            if self.stakes[address] > 0:
                self.slashed_out.discard(address)
        elif name == "Slashed":
            address = str(args["member"]).lower()
            self.stakes[address] = max(0, self.stakes.get(address, 0) - int(args["amount"]))
            if self.stakes[address] == 0:
                self.slashed_out.add(address)
        elif name == "ValidatorSetUpdated":
            self.version = int(args["version"])
            self.quorum = int(args["quorum"])
            self.validator_addresses = [str(a).lower() for a in args["validators"]]

    def view(self) -> SubnetView:
        members = {
            peer: role
            for address, (peer, role) in self.members.items()
            if address not in self.slashed_out
        }
        aggregators = sorted(p for p, r in members.items() if r is Role.AGGREGATOR)
        addr_to_peer = {}
        for addr in self.validator_addresses:
            entry = self.members.get(addr)
            if entry is not None and entry[1] is Role.VALIDATOR and addr not in self.slashed_out:
                addr_to_peer[bytes.fromhex(addr.removeprefix("0x"))] = entry[0]
        return replace(
            self.base,
            aggregator=aggregators[0] if len(aggregators) == 1 else None,
            members=members,
            validator_addresses=addr_to_peer,
            validators=tuple(sorted(addr_to_peer.values())),
            validator_set_size=len(self.validator_addresses),
            validator_set_version=self.version,
            quorum=self.quorum,
        )


async def attach_chain(services: Services, *, poll_s: float = 1.0) -> ChainProofs:
    """Connect, join if needed, load the registry view, and keep it fresh in the background."""
    client, deployment = await trio.to_thread.run_sync(connect, services)
    chain = AsyncChain(client)
    key = ChainKey(services.home.chain_key())
    subnet = services.subnet.key
    member = await trio.to_thread.run_sync(client.member, subnet, key.address)
    params = await trio.to_thread.run_sync(client.subnet_params, subnet)
    if member.role == 0:
        stake = params.min_stake[services.role.code - 1]
        _log.info("joining subnet %s as %s with stake %d", services.subnet, services.role, stake)
        await chain.join(key, subnet, services.identity.peer_id, services.role, stake)
    follower = EventFollower(
        client,
        confirmations=max(1, services.config.chain.confirmations),
        from_block=deployment.block,
    )
    registry = RegistryView(services.view.get())

    def refresh() -> None:
        for update in follower.poll():
            if update.status is EventStatus.CONFIRMED:
                registry.apply(update.event.name, update.event.args)
        services.view.view = registry.view()

    await trio.to_thread.run_sync(refresh)

    async def follow() -> None:
        while True:
            await trio.sleep(poll_s)
            try:
                await trio.to_thread.run_sync(refresh)
            except Exception as exc:
                _log.warning("registry refresh failed: %s", exc)

    services.extras["chain"] = chain
    services.extras["registry"] = registry
    services.background(follow)
    return ChainProofs(
        key,
        chain,
        dispute_bond=params.dispute_bond,
        slash_amount=params.min_stake[Role.AGGREGATOR.code - 1],
    )
