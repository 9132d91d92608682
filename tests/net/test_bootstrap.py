"""Bootstrap helpers: connect to any of several addresses, the on-disk peer cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.net.bootstrap import PeerCache, connect_any
from sorap2p.net.host import open_host

pytestmark = pytest.mark.net


async def test_connect_any_starts_when_one_answers_and_skips_junk() -> None:
    async with open_host(IdentityKey.generate()) as dead:
        dead_addr = dead.listen_addrs()[0]
    async with (
        open_host(IdentityKey.generate()) as live,
        open_host(IdentityKey.generate()) as me,
    ):
        addrs = [dead_addr, "not-a-multiaddr", live.listen_addrs()[0], me.listen_addrs()[0]]
        assert await connect_any(me, addrs, grace=0.1) == [live.peer_id]
        assert me.is_connected(live.peer_id)


async def test_connect_any_fails_when_nobody_answers() -> None:
    async with open_host(IdentityKey.generate()) as dead:
        dead_addr = dead.listen_addrs()[0]
    async with open_host(IdentityKey.generate()) as me:
        with pytest.raises(ConnectionError, match="no bootstrap answered"):
            await connect_any(me, [dead_addr])
        with pytest.raises(ConnectionError):
            await connect_any(me, [])


async def test_a_bootstrap_that_comes_back_is_dialled_again() -> None:
    ident = IdentityKey.generate()
    async with open_host(ident) as boot:
        addr = boot.listen_addrs()[0]
    async with open_host(IdentityKey.generate()) as me:
        with pytest.raises(ConnectionError):
            await connect_any(me, [addr])
        port = addr.split("/tcp/")[1].split("/")[0]
        async with open_host(ident, [f"/ip4/127.0.0.1/tcp/{port}"]):
            # libp2p's 60 s negative dial cache would refuse this dial
            assert await connect_any(me, [addr], grace=0.0) == [ident.peer_id]


def test_peer_cache_round_trip_order_cap_and_corruption(tmp_path: Path) -> None:
    ids = [IdentityKey(bytes([i + 1]) * 32).peer_id for i in range(5)]
    addrs = [f"/ip4/127.0.0.1/tcp/{4000 + i}/p2p/{p}" for i, p in enumerate(ids)]
    path = tmp_path / "sub" / "peers.json"
    cache = PeerCache(path, max_entries=3)
    assert cache.load() == []
    cache.remember(addrs[:2])
    cache.remember([addrs[2]])
    assert cache.load() == [addrs[2], addrs[0], addrs[1]]
    cache.remember([addrs[3], addrs[0]])
    assert cache.load() == [addrs[3], addrs[0], addrs[2]]
    cache.forget(ids[0])
    assert cache.load() == [addrs[3], addrs[2]]
    with pytest.raises(RemoteProtocolError):
        cache.remember(["/ip4/127.0.0.1/tcp/1"])
    path.write_text("{not json")
    assert cache.load() == []
    path.write_text(json.dumps({"version": 99, "peers": addrs}))
    assert cache.load() == []
    path.write_text(json.dumps({"version": 1, "peers": [addrs[1], 7, "junk", addrs[1]]}))
    assert cache.load() == [addrs[1]]
