"""Joining the network: dial several bootstraps and cached peers, keep a peer cache.

A node starts as soon as *one* of its bootstrap addresses or cached peers answers; the
others are given a short grace period (so that the DHT starts with more than one peer)
and then abandoned. Peers that answered are remembered in a small JSON file so that a
node can rejoin when every configured bootstrap is down.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import trio

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId
from sorap2p.net.host import Host, split_p2p_addr

_log = logging.getLogger(__name__)

CACHE_VERSION: Final = 1
MAX_CACHED_PEERS: Final = 64


class PeerCache:
    """Multiaddrs (``.../p2p/<id>``) of peers that answered before, newest first."""

    __slots__ = ("max_entries", "path")

    def __init__(self, path: Path, max_entries: int = MAX_CACHED_PEERS) -> None:
        if max_entries < 1:
            raise LocalProtocolError("max_entries must be >= 1")
        self.path = path
        self.max_entries = max_entries

    def load(self) -> list[str]:
        """Cached addresses; an unreadable or malformed file counts as empty (logged)."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            _log.warning("ignoring unreadable peer cache %s: %s", self.path, exc)
            return []
        if not isinstance(raw, dict) or raw.get("version") != CACHE_VERSION:
            _log.warning("ignoring peer cache %s with an unknown format", self.path)
            return []
        out: list[str] = []
        for addr in raw.get("peers", []):
            if not isinstance(addr, str):
                continue
            try:
                split_p2p_addr(addr)
            except RemoteProtocolError:
                continue
            if addr not in out:
                out.append(addr)
        return out[: self.max_entries]

    def remember(self, addrs: Iterable[str]) -> None:
        """Put ``addrs`` first, keep the rest, cap the size; written atomically."""
        merged: list[str] = []
        for addr in [*addrs, *self.load()]:
            split_p2p_addr(addr)
            if addr not in merged:
                merged.append(addr)
        self._write(merged[: self.max_entries])

    def forget(self, peer: PeerId) -> None:
        self._write([a for a in self.load() if split_p2p_addr(a)[0] != peer])

    def _write(self, addrs: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "peers": addrs}, indent=1))
        os.replace(tmp, self.path)


async def connect_any(host: Host, addrs: Sequence[str], *, grace: float = 1.0) -> list[PeerId]:
    """Dial every address in parallel; return once one answered plus ``grace`` seconds.

    Returns the peers connected by then (at least one). Raises `ConnectionError` when
    none answers within the host's dial timeout. Our own address and duplicates are
    skipped; malformed addresses are logged and skipped.
    """
    targets: list[str] = []
    seen: set[PeerId] = set()
    for addr in addrs:
        try:
            peer, _ = split_p2p_addr(addr)
        except RemoteProtocolError as exc:
            _log.warning("skipping bootstrap address %r: %s", addr, exc)
            continue
        if peer == host.peer_id or peer in seen:
            continue
        seen.add(peer)
        targets.append(addr)
    if not targets:
        raise ConnectionError("no usable bootstrap or cached peer address")
    connected: list[PeerId] = []
    errors: list[str] = []
    first, done = trio.Event(), trio.Event()
    remaining = [len(targets)]

    async def dial(addr: str) -> None:
        try:
            connected.append(await host.connect(addr))
            first.set()
        except (ConnectionError, RemoteProtocolError) as exc:
            errors.append(f"{addr}: {exc}")
        finally:
            remaining[0] -= 1
            if not remaining[0]:
                done.set()

    async with trio.open_nursery() as nursery:

        async def stop_after_grace() -> None:
            await first.wait()
            await trio.sleep(grace)
            nursery.cancel_scope.cancel()

        async def stop_when_done() -> None:
            await done.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_after_grace)
        nursery.start_soon(stop_when_done)
        for addr in targets:
            nursery.start_soon(dial, addr)
    if not connected:
        raise ConnectionError("no bootstrap answered: " + "; ".join(errors))
    for e in errors:
        _log.info("bootstrap unreachable: %s", e)
    return connected
