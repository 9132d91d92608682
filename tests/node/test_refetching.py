"""Roles read fetched DAGs through `refetching`: a corrupt stored block (moved aside by the
blockstore on read) is fetched again from peers, a bounded number of times. Real blockstore,
real corruption on disk; the "fetch" copies the good bytes back as a peer would send them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorap2p.node.roles.common import CORRUPT_RETRIES, refetching
from sorap2p.store.blockstore import Blockstore
from sorap2p.store.errors import CorruptBlock


async def test_a_corrupt_block_is_refetched_then_read(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "blocks")
    good = b"a model chunk" * 100
    cid = store.put(good)
    path = store.path_of(cid)
    path.write_bytes(b"X" + good[1:])  # bit rot on disk
    fetches = 0

    async def fetch() -> None:  # a peer's copy arrives when the block is missing
        nonlocal fetches
        fetches += 1
        if not store.has(cid):
            store.put_block(cid, good)

    async def use() -> bytes:
        return store.get(cid)

    assert await refetching(fetch, use, "test") == good
    assert fetches == 2  # once before the corrupt read, once after it
    assert store.get(cid) == good  # the refetched copy is stored intact


async def test_refetching_gives_up_after_the_retries(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "blocks")
    cid = store.put(b"x" * 1000)
    fetches = 0

    async def fetch() -> None:  # every peer serves the same rotten bytes
        nonlocal fetches
        fetches += 1
        store.path_of(cid).parent.mkdir(parents=True, exist_ok=True)
        store.path_of(cid).write_bytes(b"y" * 1000)

    async def use() -> bytes:
        return store.get(cid)

    with pytest.raises(CorruptBlock):
        await refetching(fetch, use, "test")
    assert fetches == CORRUPT_RETRIES + 1
