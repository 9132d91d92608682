"""Subnet discovery and subnet records over the private DHT (real hosts on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from sorap2p.core.codec import encode
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId, SubnetId
from sorap2p.core.messages import SubnetRecord, sign
from sorap2p.net.bootstrap import connect_any
from sorap2p.net.discovery import (
    DHT_PROTOCOL_ID,
    Discovery,
    DiscoveryConfig,
    SubnetRecordValidator,
    open_discovery,
    record_key,
    use_protocol_id,
)
from sorap2p.net.host import Host, open_host, to_libp2p_id

pytestmark = pytest.mark.net

ALPHA, BETA = SubnetId("alpha"), SubnetId("beta")
CFG = DiscoveryConfig(record_ttl=2.0, refresh_interval=0.4, query_timeout=5.0)
STEADY = DiscoveryConfig(record_ttl=60.0, refresh_interval=20.0, query_timeout=5.0)


@asynccontextmanager
async def dht_node(
    identity: IdentityKey | None = None, cfg: DiscoveryConfig = STEADY
) -> AsyncIterator[tuple[Host, Discovery]]:
    async with (
        open_host(identity or IdentityKey.generate()) as host,
        open_discovery(host, cfg) as disc,
    ):
        yield host, disc


async def join_via(disc: Discovery, host: Host, addrs: list[str]) -> None:
    for peer in await connect_any(host, addrs, grace=0.2):
        await disc.add_peer(peer)


async def dead_addr() -> str:
    async with open_host(IdentityKey.generate()) as h:
        addr = h.listen_addrs()[0]
    return addr


def peers(members: list[object]) -> set[PeerId]:
    return {m.peer for m in members}  # type: ignore[attr-defined]


async def test_join_through_one_of_three_bootstraps_and_find_only_own_subnet() -> None:
    dead = [await dead_addr(), await dead_addr()]
    async with AsyncExitStack() as stack:
        boot_host, _ = await stack.enter_async_context(dht_node())
        boots = [dead[0], boot_host.listen_addrs()[0], dead[1]]
        members = [await stack.enter_async_context(dht_node()) for _ in range(5)]
        for i, (h, d) in enumerate(members):
            await join_via(d, h, boots)
            await d.join(ALPHA if i < 3 else BETA)
        joiner_host, joiner = await stack.enter_async_context(dht_node())
        await join_via(joiner, joiner_host, boots)
        alpha = {h.peer_id for h, _ in members[:3]}
        beta = {h.peer_id for h, _ in members[3:]}
        found = await joiner.find_members(ALPHA)
        assert peers(found) == alpha
        assert len(found) == len(alpha)  # de-duplicated
        assert all(m.dial_addrs and m.dial_addrs[0].endswith(f"/p2p/{m.peer}") for m in found)
        assert peers(await joiner.find_members(BETA)) == beta
        # a member does not list itself
        assert peers(await members[0][1].find_members(ALPHA)) == alpha - {members[0][0].peer_id}

        # a late joiner is seen by a node that already looked the subnet up
        late_host, late = await stack.enter_async_context(dht_node())
        await join_via(late, late_host, boots)
        await late.join(ALPHA)
        assert peers(await joiner.find_members(ALPHA)) == alpha | {late_host.peer_id}


async def test_killed_member_disappears_after_its_record_ttl() -> None:
    async with AsyncExitStack() as stack:
        boot_host, _ = await stack.enter_async_context(dht_node(cfg=CFG))
        boots = boot_host.listen_addrs()
        stay_host, stay = await stack.enter_async_context(dht_node(cfg=CFG))
        await join_via(stay, stay_host, boots)
        await stay.join(ALPHA)
        async with dht_node(cfg=CFG) as (gone_host, gone):
            await join_via(gone, gone_host, boots)
            await gone.join(ALPHA)
            gone_id = gone_host.peer_id
            assert peers(await stay.find_members(ALPHA)) == {gone_id}
        # killed (no goodbye): its record outlives it for at most record_ttl;
        # the surviving member keeps refreshing and stays visible
        start = trio.current_time()
        while gone_id in peers(await stay.find_members(ALPHA)):
            assert trio.current_time() - start < CFG.record_ttl + 8, "record never expired"
            await trio.sleep(0.2)
        lookup_host, lookup = await stack.enter_async_context(dht_node(cfg=CFG))
        await join_via(lookup, lookup_host, boots)
        await trio.sleep(CFG.refresh_interval * 3)  # several refresh periods of `stay`
        assert peers(await lookup.find_members(ALPHA)) == {stay_host.peer_id}


def make_record(
    aggregator: IdentityKey, version: int, *, signer: IdentityKey | None = None
) -> SubnetRecord:
    rec = SubnetRecord(
        subnet=ALPHA,
        version=version,
        aggregator=aggregator.peer_id,
        validator_set_version=version,
        validators=(aggregator.peer_id,),
        round_length_ms=60_000,
        model="cnn-digits",
        updated_at=1_700_000_000_000 + version,
        signer=aggregator.peer_id,
    )
    return sign(signer or aggregator, rec)


async def test_signed_records_forged_and_rolled_back_are_refused() -> None:
    agg = IdentityKey.generate()
    mallory = IdentityKey.generate()
    async with AsyncExitStack() as stack:
        boot_host, boot = await stack.enter_async_context(dht_node())
        boots = boot_host.listen_addrs()
        agg_host, agg_disc = await stack.enter_async_context(dht_node(agg))
        await join_via(agg_disc, agg_host, boots)
        reader_host, reader = await stack.enter_async_context(dht_node())
        await join_via(reader, reader_host, boots)

        v2 = make_record(agg, 2)
        await agg_disc.publish_record(v2)
        assert await reader.get_record(ALPHA) == v2

        key = record_key(ALPHA).encode()
        store = agg_disc.dht.value_store
        boot_id = to_libp2p_id(boot_host.peer_id)
        # forged: claims the aggregator but is signed by mallory
        forged = dataclasses.replace(make_record(agg, 9, signer=mallory), signer=agg.peer_id)
        await store._store_at_peer(boot_id, key, encode(forged))
        # unauthorised: validly signed by mallory, naming agg as aggregator
        unauth = make_record(agg, 8, signer=mallory)
        await store._store_at_peer(boot_id, key, encode(unauth))
        # rolled back: a genuine but older version
        await store._store_at_peer(boot_id, key, encode(make_record(agg, 1)))
        held = boot.dht.value_store.get(key)
        assert held is not None and held.value == encode(v2)
        assert await reader.get_record(ALPHA) == v2

        # a newer genuine version replaces it everywhere
        v3 = make_record(agg, 3)
        await agg_disc.publish_record(v3)
        assert await reader.get_record(ALPHA) == v3
        with pytest.raises(LocalProtocolError):
            await agg_disc.publish_record(make_record(agg, 2))


def test_record_validator_rules() -> None:
    agg, mallory = IdentityKey.generate(), IdentityKey.generate()
    policy = SubnetRecordValidator()
    key = record_key(ALPHA)
    good = encode(make_record(agg, 2))
    assert policy.parse(key, good).version == 2
    with pytest.raises(RemoteProtocolError):
        policy.parse(record_key(BETA), good)
    with pytest.raises(RemoteProtocolError):
        policy.parse(key, encode(make_record(agg, 2, signer=mallory)))
    with pytest.raises(RemoteProtocolError):
        policy.parse(key, b"\x00garbage")
    older, newer = encode(make_record(agg, 1)), encode(make_record(agg, 5))
    assert policy.select(key, [older, good, newer]) == 2
    assert policy.select(key, [b"junk", older]) == 1
    with pytest.raises(LocalProtocolError):
        DiscoveryConfig(record_ttl=1.0, refresh_interval=1.0).validate()


async def test_dht_speaks_only_the_private_protocol_id() -> None:
    async with dht_node() as (host, _):
        handlers = set(host.raw.get_mux().handlers)
        assert DHT_PROTOCOL_ID in handlers
        assert "/ipfs/kad/1.0.0" not in handlers
    use_protocol_id(DHT_PROTOCOL_ID)  # idempotent
    with pytest.raises(LocalProtocolError):
        use_protocol_id("/other/kad/1.0.0")  # one DHT protocol per process
