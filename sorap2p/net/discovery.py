"""Subnet discovery on a private Kademlia DHT (``/sorap2p/kad/1.0.0``).

* Members announce a provider record under ``SubnetId.key`` and re-announce it every
  ``refresh_interval``; DHT servers keep provider records for ``record_ttl`` (a network
  parameter: every server must use the same value), so a departed member vanishes from
  lookups at most ``record_ttl`` after its last announcement.
* `Discovery.find_members` always asks the network (py-libp2p's `find_providers` answers
  from the local store whenever it holds any entry and never sees late joiners:
  FIELD-NOTES pitfall 10), merges the answers with the local store, de-duplicates, and
  drops our own id.
* Signed subnet records (`sorap2p.core.messages.SubnetRecord`) are stored under
  ``/subnet/<name>`` (at most 40 bytes: keys over 50 bytes break remote lookups). The
  `SubnetRecordValidator` rejects undecodable, wrongly keyed, badly signed or
  unauthorised records; among valid ones the highest ``version`` wins, so a DHT server
  refuses a rolled-back put, and `Discovery.get_record` never returns a version lower than
  one it has already seen.

py-libp2p fixes applied here (pitfall 10): the Kademlia protocol id is a module constant
that ``protocol_prefix`` does not change: `use_protocol_id` rebinds it in every kad module
(process-wide; a process speaks one DHT); ``strict_validation=True``; the ADD_PROVIDER rate
limit is raised to match our refresh rate; provider records expire after ``record_ttl``
instead of the hard-coded 48 h; lookups are bounded by ``query_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from sorap2p.core.codec import decode, encode
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId, SubnetId
from sorap2p.core.messages import SubnetRecord, verify_signed
from sorap2p.net.host import Host, from_libp2p_id, to_libp2p_id

_log = logging.getLogger(__name__)

DHT_PROTOCOL_ID: Final = "/sorap2p/kad/1.0.0"
RECORD_NAMESPACE: Final = "subnet"
MAX_DHT_KEY: Final = 50
_KAD_MODULES: Final = (
    "libp2p.kad_dht.common",
    "libp2p.kad_dht.kad_dht",
    "libp2p.kad_dht.peer_routing",
    "libp2p.kad_dht.provider_store",
    "libp2p.kad_dht.value_store",
)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    protocol_id: str = DHT_PROTOCOL_ID
    record_ttl: float = 120.0
    refresh_interval: float = 30.0
    query_timeout: float = 10.0
    max_parallel_queries: int = 8
    max_lookup_peers: int = 20
    server: bool = True
    provider_rate_max: int = 100  # ADD_PROVIDER per peer per 10 s accepted by a server

    def validate(self) -> None:
        if not self.protocol_id.startswith("/"):
            raise LocalProtocolError("protocol_id must start with '/'")
        if not 0 < self.refresh_interval < self.record_ttl:
            raise LocalProtocolError("need 0 < refresh_interval < record_ttl")
        if self.query_timeout <= 0 or self.max_parallel_queries < 1:
            raise LocalProtocolError("query_timeout and max_parallel_queries must be positive")
        if self.max_lookup_peers < 1 or self.provider_rate_max < 1:
            raise LocalProtocolError("max_lookup_peers and provider_rate_max must be >= 1")


@dataclass(frozen=True, slots=True)
class Member:
    """A peer that announced itself in a subnet, with the addresses it advertised."""

    peer: PeerId
    addrs: tuple[str, ...]

    @property
    def dial_addrs(self) -> list[str]:
        """Full multiaddrs (``.../p2p/<peer>``) to pass to `Host.connect`."""
        suffix = f"/p2p/{self.peer}"
        return [a if a.endswith(suffix) else a + suffix for a in self.addrs]


IPFS_KAD_PROTOCOL: Final = "/ipfs/kad/1.0.0"


def use_protocol_id(protocol_id: str) -> None:
    """Make py-libp2p's Kademlia speak ``protocol_id`` (process-wide, see module doc).

    The state lives where py-libp2p reads it (its module constants): rebinding to the
    same id is a no-op, to a different one after a first rebinding is refused.
    """
    import importlib

    from libp2p.custom_types import TProtocol

    current = str(importlib.import_module(_KAD_MODULES[0]).PROTOCOL_ID)
    if current not in (IPFS_KAD_PROTOCOL, protocol_id):
        raise LocalProtocolError(
            f"this process already speaks {current}; one DHT protocol per process"
        )
    for name in _KAD_MODULES:
        setattr(importlib.import_module(name), "PROTOCOL_ID", TProtocol(protocol_id))  # noqa: B010


def record_key(subnet: SubnetId) -> str:
    key = f"/{RECORD_NAMESPACE}/{subnet.name}"
    if len(key) > MAX_DHT_KEY:  # pragma: no cover - SubnetId caps names at 32 chars
        raise LocalProtocolError("subnet record key too long for the DHT")
    return key


Authorize = Callable[[SubnetRecord], bool]


def signer_is_aggregator(record: SubnetRecord) -> bool:
    """The default authorisation rule: the record is signed by the aggregator it names."""
    return record.signer == record.aggregator


class SubnetRecordValidator:
    """A py-libp2p record validator for ``/subnet/<name>`` (validate + select)."""

    def __init__(self, authorize: Authorize = signer_is_aggregator) -> None:
        self._authorize = authorize

    def parse(self, key: str, value: bytes) -> SubnetRecord:
        """Decode and check one record; `RemoteProtocolError` when it is not acceptable."""
        record = decode(value, SubnetRecord)
        if key != record_key(record.subnet):
            raise RemoteProtocolError(f"record for {record.subnet} stored under {key!r}")
        verify_signed(record)
        if not self._authorize(record):
            raise RemoteProtocolError(f"{record.signer} may not sign records of {record.subnet}")
        return record

    def validate(self, key: str, value: bytes) -> None:
        self.parse(key, value)

    def select(self, key: str, values: list[bytes]) -> int:
        """Index of the best record: highest (version, updated_at), then smallest bytes."""
        best, best_rank = 0, None
        for i, value in enumerate(values):
            try:
                rec = self.parse(key, value)
            except RemoteProtocolError:
                continue
            rank = (rec.version, rec.updated_at, [-b for b in value])
            if best_rank is None or rank > best_rank:
                best, best_rank = i, rank
        return best


def _libp2p_validator(policy: SubnetRecordValidator) -> Any:
    from libp2p.records.validator import Validator

    class _Adapter(Validator):
        def validate(self, key: str, value: bytes) -> None:
            try:
                policy.validate(key, value)
            except RemoteProtocolError as exc:
                raise ValueError(str(exc)) from exc

        def select(self, key: str, values: list[bytes]) -> int:
            return policy.select(key, values)

    return _Adapter()


def _provider_store_class() -> type[Any]:
    from libp2p.kad_dht.provider_store import ProviderStore

    class TtlProviderStore(ProviderStore):
        """Provider records that expire after ``ttl`` seconds (not the fixed 48 h)."""

        def __init__(self, *args: Any, ttl: float, **kw: Any):
            super().__init__(*args, **kw)
            self.ttl = ttl

        def _expire(self, key: bytes) -> None:
            now = time.time()  # libp2p stamps records with time.time()
            records = self.providers.get(key)
            if records is None:
                return
            for pid in [p for p, r in records.items() if now - r.timestamp >= self.ttl]:
                del records[pid]
            if not records:
                del self.providers[key]

        def get_providers(self, key: bytes) -> list[Any]:
            self._expire(key)
            return list(super().get_providers(key))

        def cleanup_expired(self) -> None:
            for key in list(self.providers):
                self._expire(key)

    return TtlProviderStore


class Discovery:
    """Subnet membership and subnet records over the private DHT. See `open_discovery`."""

    def __init__(
        self, host: Host, dht: Any, config: DiscoveryConfig, policy: SubnetRecordValidator
    ) -> None:
        self.host = host
        self.dht = dht
        self.config = config
        self.policy = policy
        self._joined: dict[SubnetId, trio.CancelScope] = {}
        self._seen_versions: dict[SubnetId, int] = {}
        self._nursery: trio.Nursery | None = None

    # -- routing table -------------------------------------------------------------
    async def add_peer(self, peer: PeerId) -> bool:
        """Add a connected DHT server (a bootstrap, a cached peer) to the routing table."""
        return bool(await self.dht.add_peer(to_libp2p_id(peer), skip_server_mode_check=True))

    def routing_table_size(self) -> int:
        return int(self.dht.get_routing_table_size())

    # -- membership ----------------------------------------------------------------
    async def announce(self, subnet: SubnetId) -> bool:
        """Announce once; True when at least one other DHT server took the record."""
        with trio.move_on_after(self.config.query_timeout * 2):
            return bool(await self.dht.provider_store.provide(subnet.key))
        return False

    async def join(self, subnet: SubnetId) -> None:
        """Announce now and keep re-announcing every ``refresh_interval`` until `leave`."""
        if subnet in self._joined:
            return
        if self._nursery is None:
            raise LocalProtocolError("discovery is not running")
        await self.announce(subnet)
        scope = trio.CancelScope()
        self._joined[subnet] = scope
        self._nursery.start_soon(self._refresh, subnet, scope)

    async def _refresh(self, subnet: SubnetId, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(self.config.refresh_interval)
                try:
                    await self.announce(subnet)
                except Exception as exc:  # keep refreshing through transient failures
                    _log.info("re-announcing %s failed: %r", subnet, exc)

    def leave(self, subnet: SubnetId) -> None:
        """Stop re-announcing (records held by others expire after ``record_ttl``)."""
        scope = self._joined.pop(subnet, None)
        if scope is not None:
            scope.cancel()
        self.dht.provider_store.providing_keys.discard(subnet.key)
        local = self.dht.provider_store.providers.get(subnet.key)
        if local is not None:
            local.pop(str(self.dht.local_peer_id), None)

    async def find_members(self, subnet: SubnetId) -> list[Member]:
        """All peers announcing ``subnet``, from the network and our store (not us)."""
        key = subnet.key
        found: dict[PeerId, set[str]] = {}

        def add(info: Any) -> None:
            try:
                peer = from_libp2p_id(info.peer_id)
            except RemoteProtocolError:
                return
            if peer != self.host.peer_id:
                found.setdefault(peer, set()).update(str(a) for a in info.addrs)

        for info in self.dht.provider_store.get_providers(key):
            add(info)
        await self._query_all(await self._closest(key), key, add)
        return [Member(p, tuple(sorted(a))) for p, a in sorted(found.items())]

    async def _closest(self, key: bytes) -> list[Any]:
        """Closest known peers to ``key`` after an iterative FIND_NODE (bounded)."""
        closest: list[Any] = []
        with trio.move_on_after(self.config.query_timeout):
            closest = list(
                await self.dht.peer_routing.find_closest_peers_network(
                    key, self.config.max_lookup_peers
                )
            )
        return [p for p in closest if p != self.dht.local_peer_id]

    async def _query_all(self, start: list[Any], key: bytes, add: Callable[[Any], None]) -> None:
        me = self.dht.local_peer_id
        queried: set[Any] = set()
        pending = [p for p in start if p != me]
        limiter = trio.CapacityLimiter(self.config.max_parallel_queries)
        store = self.dht.provider_store

        async def ask(peer: Any) -> None:
            async with limiter:
                with trio.move_on_after(self.config.query_timeout):
                    try:
                        found = await store._get_providers_from_peer_with_closers(peer, key)
                    except Exception as exc:  # one failing peer must not fail the lookup
                        _log.debug("provider query to %s failed: %r", peer, exc)
                        return
                    providers, closer = found
                    for info in providers:
                        add(info)
                    for c in closer:
                        if c != me and c not in queried and c not in pending:
                            pending.append(c)

        while pending and len(queried) < self.config.max_lookup_peers * 2:
            batch = [p for p in pending if p not in queried]
            pending.clear()
            queried.update(batch)
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(ask, peer)

    # -- subnet records ------------------------------------------------------------
    async def publish_record(self, record: SubnetRecord) -> None:
        """Store a signed record in the DHT (refuses one older than a version we saw)."""
        if record.version < self._seen_versions.get(record.subnet, 0):
            raise LocalProtocolError(
                f"record version {record.version} of {record.subnet} is older than one seen"
            )
        value = encode(record)
        self.policy.parse(record_key(record.subnet), value)  # fail locally, not remotely
        await self.dht.put_value(record_key(record.subnet), value)
        self._seen_versions[record.subnet] = record.version

    async def get_record(self, subnet: SubnetId) -> SubnetRecord | None:
        """The best valid record of ``subnet`` from the network and our store.

        Never returns a version lower than one this node has already seen (rollback).
        """
        key = record_key(subnet)
        key_bytes = key.encode()
        values: list[bytes] = []
        local = self.dht.value_store.get(key_bytes)
        if local is not None:
            values.append(local.value)
        peers = await self._closest(key_bytes)
        limiter = trio.CapacityLimiter(self.config.max_parallel_queries)

        async def ask(peer: Any) -> None:
            async with limiter:
                with trio.move_on_after(self.config.query_timeout):
                    try:
                        rec = await self.dht.value_store._get_from_peer(peer, key_bytes, True)
                    except Exception as exc:  # one failing peer must not fail the lookup
                        _log.debug("record query to %s failed: %r", peer, exc)
                        return
                    if rec is not None and getattr(rec, "value", None):
                        values.append(bytes(rec.value))

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        best: SubnetRecord | None = None
        for value in values:
            try:
                rec = self.policy.parse(key, value)
            except RemoteProtocolError as exc:
                _log.info("discarding invalid record for %s: %s", subnet, exc)
                continue
            if best is None or (rec.version, rec.updated_at) > (best.version, best.updated_at):
                best = rec
        floor = self._seen_versions.get(subnet, 0)
        if best is None or best.version < floor:
            return None
        self._seen_versions[subnet] = best.version
        return best


@asynccontextmanager
async def open_discovery(
    host: Host,
    config: DiscoveryConfig | None = None,
    *,
    authorize: Authorize = signer_is_aggregator,
) -> AsyncIterator[Discovery]:
    """Run the DHT on ``host`` (server mode unless ``config.server`` is False)."""
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.records.validator import NamespacedValidator
    from libp2p.tools.anyio_service import background_trio_service

    cfg = config or DiscoveryConfig()
    cfg.validate()
    use_protocol_id(cfg.protocol_id)
    policy = SubnetRecordValidator(authorize)
    validator = NamespacedValidator(
        {RECORD_NAMESPACE: _libp2p_validator(policy)}, strict_validation=True
    )
    dht = KadDHT(
        host.raw,
        DHTMode.SERVER if cfg.server else DHTMode.CLIENT,
        validator=validator,
        validator_changed=True,
        strict_validation=True,
    )
    dht.provider_store = _provider_store_class()(
        host=host.raw, peer_routing=dht.peer_routing, ttl=cfg.record_ttl
    )
    dht._provider_rate_max = cfg.provider_rate_max
    disc = Discovery(host, dht, cfg, policy)
    async with background_trio_service(dht), trio.open_nursery() as nursery:
        disc._nursery = nursery
        try:
            yield disc
        finally:
            nursery.cancel_scope.cancel()
