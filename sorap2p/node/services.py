"""The running parts of one node, opened together: host, peers, DHT, gossip, blocks, chain.

`open_services` owns their lifetimes (one nursery, closed in the right order) and hands a
`Services` object to the role loop. Roles never import libp2p: they talk to `Services`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from sorap2p.chain.proof import recover_signer
from sorap2p.core import messages as m
from sorap2p.core.cid import Cid
from sorap2p.core.codec import encode
from sorap2p.core.config import Config
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import ConfigError
from sorap2p.core.gossip_rules import GossipRules, SubnetView
from sorap2p.core.ids import PeerId, Role, SubnetId
from sorap2p.core.topics import Topic, TopicKind, kind_of
from sorap2p.core.validation import Validation, Verdict
from sorap2p.net.bootstrap import PeerCache, connect_any
from sorap2p.net.discovery import Discovery, DiscoveryConfig, open_discovery
from sorap2p.net.exchange import fetch_dag, serve_car
from sorap2p.net.gossip import Gossip, GossipConfig, Subscription, ValidatorRegistry, open_gossip
from sorap2p.net.host import Host, HostConfig, open_host
from sorap2p.node.home import Home
from sorap2p.store.blockstore import Blockstore
from sorap2p.store.params import ParameterStore

_log = logging.getLogger(__name__)

Validate = Callable[[PeerId, bytes], Validation | Verdict]


TRACE_FILE = "gossip.trace"


class GossipTrace:
    """Debug aid (``node.trace_gossip``): every gossip payload this node sends or validates,
    appended to ``gossip.trace`` as records ``u8 direction ('>' sent, '<' received) | u8 kind
    length | kind | u32 payload length | payload`` (big endian). Use `read_trace`."""

    def __init__(self, path: Any) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed with the services

    def record(self, direction: bytes, kind: TopicKind, payload: bytes) -> None:
        name = kind.value.encode()
        head = direction + bytes([len(name)]) + name + struct.pack(">I", len(payload))
        self._file.write(head + payload)
        self._file.flush()

    def wrap(self, kind: TopicKind, validate: Validate) -> Validate:
        def traced(origin: PeerId, data: bytes) -> Validation | Verdict:
            self.record(b"<", kind, data)
            return validate(origin, data)

        return traced

    def close(self) -> None:
        self._file.close()


def read_trace(data: bytes) -> list[tuple[str, TopicKind, bytes]]:
    """The records of a ``gossip.trace`` file: (direction, kind, payload)."""
    out, i = [], 0
    while i < len(data):
        direction = chr(data[i])
        n = data[i + 1]
        kind = TopicKind(data[i + 2 : i + 2 + n].decode())
        (size,) = struct.unpack_from(">I", data, i + 2 + n)
        start = i + 6 + n
        out.append((direction, kind, data[start : start + size]))
        i = start + size
    return out


@dataclass
class ViewBox:
    """The node's current `SubnetView`, replaced as the registry view is refreshed."""

    view: SubnetView

    def get(self) -> SubnetView:
        return self.view


@dataclass
class Services:
    config: Config
    home: Home
    identity: IdentityKey
    subnet: SubnetId
    role: Role
    host: Host
    gossip: Gossip
    discovery: Discovery
    params: ParameterStore
    rules: GossipRules
    view: ViewBox
    clock: Callable[[], int]
    extras: dict[str, Any] = field(default_factory=dict)
    nursery: trio.Nursery | None = None
    trace: GossipTrace | None = None

    def background(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` until the services close."""
        assert self.nursery is not None
        self.nursery.start_soon(fn)

    @property
    def blocks(self) -> Blockstore:
        return self.params.blocks

    def now(self) -> int:
        return self.clock()

    async def publish(self, msg: Any, *, repeat: bool = False) -> None:
        """Sign ``msg`` with our identity and publish it on its topic (``repeat``: again,
        for peers that missed it; see `Gossip.publish`)."""
        signed = m.sign(self.identity, msg)
        kind, payload = kind_of(signed), encode(signed)
        if self.trace is not None:
            self.trace.record(b">", kind, payload)
        await self.gossip.publish(Topic(self.subnet, kind), payload, repeat=repeat)

    async def fetch_dag(self, root: Cid, providers: list[PeerId]) -> None:
        """Make every block of the DAG under ``root`` local, fetching from ``providers``
        (and from any other connected peer as a fallback)."""
        others = [p for p in self.host.connected_peers() if p not in providers]
        peers = [p for p in providers if p != self.identity.peer_id] + others
        await fetch_dag(self.host, self.blocks, root, peers)

    async def subscribe(self, kind: TopicKind) -> Subscription:
        return await self.gossip.subscribe(Topic(self.subnet, kind))


async def _connect_bootstrap(host: Host, config: Config, cache: PeerCache) -> list[Any]:
    addrs = [*config.network.bootstrap, *cache.load()]
    if not addrs:
        return []
    peers = await connect_any(host, addrs)
    cache.remember(a for a in config.network.bootstrap if a)
    return peers


async def keep_connected_to_members(services: Services, interval: float = 5.0) -> None:
    """Find subnet members in the DHT and dial those we are not connected to."""
    while True:
        try:
            members = await services.discovery.find_members(services.subnet)
        except Exception as exc:  # the DHT raises assorted errors on churn
            _log.debug("member lookup failed: %s", exc)
            members = []
        for member in members:
            if services.host.is_connected(member.peer):
                continue
            for addr in member.dial_addrs:
                try:
                    with trio.move_on_after(5):
                        await services.host.connect(addr)
                        break
                except Exception as exc:
                    _log.debug("dial %s failed: %s", addr, exc)
        await trio.sleep(interval)


def recover_address(digest: bytes, signature: bytes) -> bytes | None:
    """The 20-byte address an EIP-712 signature recovers to (None when malformed)."""
    try:
        return bytes.fromhex(recover_signer(digest, signature).removeprefix("0x"))
    except Exception:
        return None


@asynccontextmanager
async def open_services(
    config: Config,
    home: Home,
    *,
    clock: Callable[[], int],
    view: SubnetView | None = None,
) -> AsyncIterator[Services]:
    """Open every service of a node; the bootstrap role joins no subnet but serves the DHT."""
    identity = home.identity_key()
    role = config.role
    subnet = config.subnet
    box = ViewBox(view or SubnetView(subnet))
    rules = GossipRules(box.get, clock, recover=recover_address)
    trace = GossipTrace(home.path / TRACE_FILE) if config.node.trace_gossip else None
    validators: dict[TopicKind, Validate] = {k: rules.for_kind(k) for k in TopicKind}
    if trace is not None:
        validators = {k: trace.wrap(k, v) for k, v in validators.items()}
    registry = ValidatorRegistry(validators)
    params = ParameterStore(home.path, fsync=config.store.fsync)
    host_cfg = HostConfig(max_connections=config.network.max_connections)
    disc_cfg = DiscoveryConfig(
        record_ttl=config.network.provider_ttl_s,
        refresh_interval=config.network.provider_refresh_s,
    )
    async with AsyncExitStack() as stack:
        if trace is not None:
            stack.callback(trace.close)
        listen = list(config.network.listen)
        stable = config.role is Role.BOOTSTRAP  # others have its address in their configs
        try:  # a bootstrap node takes the port it had last time, so that it is found again
            wanted = home.stable_listen(listen) if stable else listen
            host = await stack.enter_async_context(open_host(identity, wanted, config=host_cfg))
        except ConfigError:
            if not stable or wanted == listen:
                raise
            _log.warning("the port of the last run is taken: listening on a new one")
            host = await stack.enter_async_context(open_host(identity, listen, config=host_cfg))
        if stable:
            home.remember_listen(listen, host.listen_addrs())
        cache = PeerCache(home.peers_path)
        peers = await _connect_bootstrap(host, config, cache)
        gossip = await stack.enter_async_context(
            open_gossip(host, registry, GossipConfig(heartbeat_interval=config.network.heartbeat_s))
        )
        discovery = await stack.enter_async_context(open_discovery(host, disc_cfg))
        await stack.enter_async_context(serve_car(host, params.blocks))
        for peer in peers:
            await discovery.add_peer(peer)
        services = Services(
            config, home, identity, subnet, role, host, gossip, discovery, params, rules, box, clock
        )
        services.trace = trace
        async with trio.open_nursery() as nursery:
            services.nursery = nursery
            if role is not Role.BOOTSTRAP:
                await discovery.join(subnet)
                nursery.start_soon(keep_connected_to_members, services)
            try:
                yield services
            finally:
                nursery.cancel_scope.cancel()
