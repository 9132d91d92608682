"""A node gets the same port after a restart (peers and caches that know its address still
reach it), and any free port when that one is taken meanwhile; a host that cannot listen
fails loudly instead of running without a listener."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sorap2p.core.config import load_config
from sorap2p.core.crypto import IdentityKey
from sorap2p.net.host import open_host
from sorap2p.node.driver import wall_clock_ms
from sorap2p.node.home import Home
from sorap2p.node.services import open_services

pytestmark = pytest.mark.net


def port_of(addr: str) -> int:
    return int(addr.split("/")[4])


async def test_a_restarted_node_keeps_its_port(tmp_path: Path) -> None:
    home = Home(tmp_path / "boot")
    home.init(load_config("", {}, ["node.role=bootstrap", "node.log_level=warning"]))
    cfg = home.load_config({})
    async with open_services(cfg, home, clock=wall_clock_ms) as svc:
        first = port_of(svc.host.listen_addrs()[0])
    async with open_services(cfg, home, clock=wall_clock_ms) as svc:
        assert port_of(svc.host.listen_addrs()[0]) == first
    # the port is taken by someone else meanwhile: the node still starts, elsewhere
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        assert home.stable_listen(["/ip4/127.0.0.1/tcp/0"]) == ["/ip4/127.0.0.1/tcp/0"]
        async with open_services(cfg, home, clock=wall_clock_ms) as svc:
            assert port_of(svc.host.listen_addrs()[0]) != first


async def test_a_host_that_cannot_listen_raises() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(OSError, match="cannot listen"):
            async with open_host(IdentityKey.generate(), [f"/ip4/127.0.0.1/tcp/{port}"]):
                pass
