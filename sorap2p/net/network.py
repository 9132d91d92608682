"""One node's whole network stack, opened in the right order (the node layer's entry point).

`open_network` starts, in order: the host (TCP + Noise + Yamux), the private DHT, GossipSub
and the CAR block server; then it dials the bootstrap addresses and cached peers (starting
when one answers), adds them to the DHT routing table and remembers them in the peer
cache. Leaving the context closes everything (the host before the pubsub service: pitfall 3).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sorap2p.core.cid import Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import LocalProtocolError
from sorap2p.core.ids import PeerId, SubnetId
from sorap2p.net.bootstrap import PeerCache, connect_any
from sorap2p.net.discovery import (
    Authorize,
    Discovery,
    DiscoveryConfig,
    Member,
    open_discovery,
    signer_is_aggregator,
)
from sorap2p.net.exchange import (
    BlockSink,
    CarServer,
    ExchangeConfig,
    FetchReport,
    fetch_dag,
    serve_car,
)
from sorap2p.net.gossip import Gossip, GossipConfig, ValidatorRegistry, open_gossip
from sorap2p.net.host import DEFAULT_LISTEN, Host, HostConfig, open_host

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    bootstrap: tuple[str, ...] = ()
    peer_cache: Path | None = None
    bootstrap_grace: float = 1.0
    host: HostConfig = field(default_factory=HostConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)

    def validate(self) -> None:
        if not self.listen:
            raise LocalProtocolError("at least one listen address is needed")
        self.host.validate()
        self.gossip.validate()
        self.discovery.validate()
        self.exchange.validate()


class Network:
    """The running stack: `host`, `discovery`, `gossip`, `car` and the fetch helpers."""

    def __init__(
        self,
        host: Host,
        discovery: Discovery,
        gossip: Gossip,
        car: CarServer,
        store: BlockSink,
        config: NetworkConfig,
    ) -> None:
        self.host = host
        self.discovery = discovery
        self.gossip = gossip
        self.car = car
        self.store = store
        self.config = config
        self._cache = PeerCache(config.peer_cache) if config.peer_cache else None

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    async def bootstrap(self) -> list[PeerId]:
        """Dial bootstraps and cached peers; return those that answered.

        `ConnectionError` when none answers (a node with no bootstrap configured, such as
        the first bootstrap node, gets an empty list instead).
        """
        addrs = list(self.config.bootstrap)
        if self._cache is not None:
            addrs += [a for a in self._cache.load() if a not in addrs]
        if not addrs:
            return []
        peers = await connect_any(self.host, addrs, grace=self.config.bootstrap_grace)
        for peer in peers:
            await self.discovery.add_peer(peer)
        if self._cache is not None:
            self._cache.remember(a for a in addrs if _peer_of(a) in set(peers))
        return peers

    async def join_subnet(self, subnet: SubnetId) -> list[PeerId]:
        """Announce membership (kept fresh) and connect to the members found."""
        await self.discovery.join(subnet)
        return await self.connect_members(subnet)

    async def connect_members(self, subnet: SubnetId) -> list[PeerId]:
        """Dial every member of ``subnet`` we are not connected to; return the connected ones."""
        out: list[PeerId] = []
        reached: list[str] = []
        for member in await self.discovery.find_members(subnet):
            if await self._dial(member):
                out.append(member.peer)
                reached.extend(member.dial_addrs[:1])
        if self._cache is not None and reached:
            self._cache.remember(reached)
        return out

    async def _dial(self, member: Member) -> bool:
        if self.host.is_connected(member.peer):
            return True
        for addr in member.dial_addrs:
            try:
                await self.host.connect(addr)
                return True
            except ConnectionError as exc:
                _log.info("member %s unreachable at %s: %s", member.peer, addr, exc)
            except Exception as exc:  # a malformed advertised address
                _log.info("member %s advertised a bad address %s: %s", member.peer, addr, exc)
        return False

    async def fetch(
        self, root: Cid, providers: Sequence[PeerId] = (), *, subnet: SubnetId | None = None
    ) -> FetchReport:
        """Fetch a DAG into our store from ``providers`` (default: the subnet's members)."""
        peers = list(providers)
        if not peers and subnet is not None:
            peers = await self.connect_members(subnet)
        return await fetch_dag(self.host, self.store, root, peers, self.config.exchange)


def _peer_of(addr: str) -> PeerId | None:
    from sorap2p.net.host import split_p2p_addr

    try:
        return split_p2p_addr(addr)[0]
    except Exception:
        return None


@asynccontextmanager
async def open_network(
    identity: IdentityKey,
    config: NetworkConfig,
    store: BlockSink,
    validators: ValidatorRegistry,
    *,
    authorize: Authorize = signer_is_aggregator,
) -> AsyncIterator[Network]:
    """Open the stack and bootstrap (see module docstring)."""
    config.validate()
    async with (
        open_host(identity, config.listen, config=config.host) as host,
        open_discovery(host, config.discovery, authorize=authorize) as discovery,
        open_gossip(host, validators, config.gossip) as gossip,
        serve_car(host, store, config.exchange) as car,
    ):
        net = Network(host, discovery, gossip, car, store, config)
        await net.bootstrap()
        yield net
