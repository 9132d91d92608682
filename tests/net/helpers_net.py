"""Shared helpers for the net tests (imported by name: pytest puts tests/net on sys.path)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from sorap2p.core.crypto import IdentityKey
from sorap2p.net.host import Host, open_host


def seeded_identity(i: int) -> IdentityKey:
    return IdentityKey(bytes([i + 1]) * 32)


@asynccontextmanager
async def create_hosts(n: int, *, connect: bool = False) -> AsyncIterator[list[Host]]:
    """``n`` hosts on 127.0.0.1 with random identities; optionally a full mesh of dials."""
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(open_host(IdentityKey.generate())) for _ in range(n)
        ]
        if connect:
            for i, a in enumerate(hosts):
                for b in hosts[i + 1 :]:
                    await a.connect(b.listen_addrs()[0])
        yield hosts


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``within`` seconds.

    Polling (not sleeping) is the synchronisation: libp2p exposes no event for these states.
    """
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)
