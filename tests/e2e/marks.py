"""Markers shared by the multi-process tests: real node processes and a real anvil chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from sorap2p.chain.devchain import find_anvil

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
