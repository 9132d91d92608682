"""A host that cannot listen (its port is taken) fails loudly: py-libp2p 0.8.1 only logs the
failed bind and would run a node nobody can dial."""

from __future__ import annotations

import socket

import pytest

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import ConfigError
from sorap2p.net.host import open_host

pytestmark = pytest.mark.net


async def test_a_host_that_cannot_listen_raises() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            async with open_host(IdentityKey.generate(), [f"/ip4/127.0.0.1/tcp/{port}"]):
                pass  # pragma: no cover - must not be reached


async def test_a_free_port_listens() -> None:
    async with open_host(IdentityKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        assert host.listen_addrs()
