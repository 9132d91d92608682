"""A bootstrap node gets the same port after a restart (every other node has its address in
its config), and any free port when that one is taken meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sorap2p.core.config import load_config
from sorap2p.node.driver import wall_clock_ms
from sorap2p.node.home import Home
from sorap2p.node.services import open_services

pytestmark = pytest.mark.net


def port_of(addr: str) -> int:
    return int(addr.split("/")[4])


async def test_a_restarted_bootstrap_keeps_its_port(tmp_path: Path) -> None:
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
            second = port_of(svc.host.listen_addrs()[0])
            assert second != first
    async with open_services(cfg, home, clock=wall_clock_ms) as svc:
        assert port_of(svc.host.listen_addrs()[0]) == second


async def test_other_roles_take_any_free_port(tmp_path: Path) -> None:
    home = Home(tmp_path / "t")
    home.init(load_config("", {}, ["node.role=trainer", "node.log_level=warning"]))
    cfg = home.load_config({})
    async with open_services(cfg, home, clock=wall_clock_ms) as svc:
        assert svc.host.listen_addrs()
    assert not home.listen_path.exists()
