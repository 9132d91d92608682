"""Markers and set-ups shared by the multi-process tests: real node processes, a real anvil
chain."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sorap2p.chain.devchain import find_anvil
from testnet.cluster import ClusterSpec

F = TypeVar("F", bound=Callable[..., Any])

needs_anvil = pytest.mark.skipif(
    find_anvil() is None, reason="anvil missing: scripts/setup.sh installs it"
)
# node processes on 127.0.0.1 and an anvil chain: slow, needs the network and the chain
NODES_AND_CHAIN = [pytest.mark.net, pytest.mark.chain, pytest.mark.slow, needs_anvil]


def nodes_and_chain(fn: F) -> F:
    """`NODES_AND_CHAIN` as one decorator."""
    for mark in reversed(NODES_AND_CHAIN):
        fn = mark(fn)
    return fn


def four_rounds(tmp_path: Path, **overrides: Any) -> ClusterSpec:
    """The usual multi-process subnet: 3 validators (quorum 2), 3 trainers, 4 rounds of
    40 s, under ``tmp_path/net``; ``overrides`` are other `ClusterSpec` fields."""
    return ClusterSpec(
        root=tmp_path / "net",
        validators=3,
        trainers=3,
        quorum=2,
        rounds=4,
        round_s=40.0,
        **overrides,
    )
