"""The F3 acceptance scenario with real node processes on 127.0.0.1.

One bootstrap process and two alpha members run as separate processes (each ~85 MiB);
the joiner and a beta member run in the test process. Kept to one test: it is the
expensive one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from sorap2p.core.cid import Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import PeerId, SubnetId
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.core.validation import Validation
from sorap2p.net.discovery import DiscoveryConfig
from sorap2p.net.gossip import ValidatorRegistry
from sorap2p.net.host import open_host
from sorap2p.net.network import NetworkConfig, open_network
from sorap2p.store import Blockstore
from sorap2p.store.unixfs import cat

pytestmark = [pytest.mark.net, pytest.mark.slow]

CHILD = Path(__file__).with_name("node_child.py")
ALPHA, BETA = SubnetId("alpha"), SubnetId("beta")
TTL = 2.0


class Child:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.info: dict[str, Any] = {}

    async def line(self, within: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.fail_after(within):
            text = await trio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        assert text, f"child exited with {self.proc.poll()}"
        result: dict[str, Any] = json.loads(text)
        return result

    @property
    def peer(self) -> PeerId:
        return PeerId.parse(self.info["peer"])


@asynccontextmanager
async def child(tmp: Path, name: str, *args: str) -> AsyncIterator[Child]:
    seed = os.urandom(32).hex()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a pipe-driven child, read in a thread
        [sys.executable, str(CHILD), "--seed", seed, "--store", str(tmp / name), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    c = Child(proc)
    try:
        c.info = await c.line()
        yield c
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await trio.to_thread.run_sync(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def dead_addr() -> str:
    async with open_host(IdentityKey.generate()) as h:
        return h.listen_addrs()[0]


async def test_join_discover_gossip_fetch_and_expire_across_processes(tmp_path: Path) -> None:
    cfg_disc = DiscoveryConfig(record_ttl=TTL, refresh_interval=0.5)
    registry = ValidatorRegistry({TopicKind.UPDATES: lambda p, d: Validation.ACCEPT})
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(child(tmp_path, "boot"))
        boots = [await dead_addr(), boot.info["addr"], await dead_addr()]
        flags = [a for b in boots for a in ("--bootstrap", b)]
        m1 = await stack.enter_async_context(
            child(tmp_path, "m1", *flags, "--subnet", "alpha", "--dag-bytes", "2500000")
        )
        m2 = await stack.enter_async_context(child(tmp_path, "m2", *flags, "--subnet", "alpha"))
        beta = await stack.enter_async_context(
            open_network(
                IdentityKey.generate(),
                NetworkConfig(bootstrap=tuple(boots), bootstrap_grace=0.2, discovery=cfg_disc),
                Blockstore(tmp_path / "beta"),
                registry,
            )
        )
        await beta.join_subnet(BETA)
        store = Blockstore(tmp_path / "joiner")
        net = await stack.enter_async_context(
            open_network(
                IdentityKey.generate(),
                NetworkConfig(
                    bootstrap=tuple(boots),
                    bootstrap_grace=0.2,
                    discovery=cfg_disc,
                    peer_cache=tmp_path / "peers.json",
                ),
                store,
                registry,
            )
        )
        # discovery through one of three bootstraps: all of alpha, nothing of beta
        found = {m.peer for m in await net.discovery.find_members(ALPHA)}
        assert found == {m1.peer, m2.peer}
        assert {m.peer for m in await net.discovery.find_members(BETA)} == {beta.peer_id}
        assert (tmp_path / "peers.json").is_file()

        # gossip reaches both alpha processes
        topic = Topic(ALPHA, TopicKind.UPDATES)
        await net.gossip.subscribe(topic)
        assert set(await net.join_subnet(ALPHA)) == {m1.peer, m2.peer}
        with trio.fail_after(20):
            await net.gossip.wait_for_topic_peers(topic, 2)
        await net.gossip.publish(topic, b"hello alpha")
        assert (await m1.line())["gossip"] == "hello alpha"
        assert (await m2.line())["gossip"] == "hello alpha"

        # a DAG served by a member process is fetched and verified
        report = await net.fetch(Cid.parse(m1.info["root"]), [m1.peer])
        assert report.blocks >= 2
        assert len(cat(store, Cid.parse(m1.info["root"]))) == 2500000

        # a killed member disappears from lookups after its record TTL
        m2.proc.kill()
        m2.proc.wait()
        start = trio.current_time()
        while m2.peer in {m.peer for m in await net.discovery.find_members(ALPHA)}:
            assert trio.current_time() - start < TTL + 15, "killed member never expired"
            await trio.sleep(0.25)
        assert {m.peer for m in await net.discovery.find_members(ALPHA)} == {m1.peer}
