"""One nonce sequence per account, shared by every thread that sends from it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NonceStatistics:
    accounts: int
    reserved: int
    resyncs: int


class NonceManager:
    """Hands out consecutive nonces per address; ``fetch(address)`` reads the chain's pending
    count and is called for an address's first nonce and after `resync`.

    Thread-safe: concurrent senders never get the same nonce. A transaction that could not be
    sent at all leaves a gap; call `resync` so the next nonce is re-read from the chain.
    """

    def __init__(self, fetch: Callable[[str], int]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}
        self._reserved = 0
        self._resyncs = 0

    def reserve(self, address: str) -> int:
        with self._lock:
            nonce = self._next.get(address)
            if nonce is None:
                nonce = self._fetch(address)
            self._next[address] = nonce + 1
            self._reserved += 1
            return nonce

    def resync(self, address: str) -> None:
        with self._lock:
            self._next.pop(address, None)
            self._resyncs += 1

    def statistics(self) -> NonceStatistics:
        with self._lock:
            return NonceStatistics(len(self._next), self._reserved, self._resyncs)
