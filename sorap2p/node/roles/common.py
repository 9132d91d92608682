"""Pieces shared by the role loops."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import trio

from sorap2p.core.codec import decode
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.core.ids import RoundId
from sorap2p.core.rounds.events import ProofObserved
from sorap2p.core.topics import TopicKind
from sorap2p.node.driver import Driver
from sorap2p.node.proofs import ProofBackend
from sorap2p.node.services import Services
from sorap2p.store.errors import CorruptBlock

_log = logging.getLogger(__name__)

T = TypeVar("T")

# refetches of a DAG whose stored blocks turn out corrupt (a read finds one bad block)
CORRUPT_RETRIES: Final = 8


async def refetching(
    fetch: Callable[[], Awaitable[None]],
    use: Callable[[], Awaitable[T]],
    what: str,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = _log,
) -> T:
    """``fetch()`` a DAG then ``use()`` it; when a read finds a corrupt stored block (the
    blockstore moves the bad file aside), fetch again from peers and retry, at most
    `CORRUPT_RETRIES` times."""
    for attempt in range(CORRUPT_RETRIES + 1):
        try:
            await fetch()
            return await use()
        except CorruptBlock as exc:
            if attempt == CORRUPT_RETRIES:
                raise
            log.warning(
                "%s: %s (moved to %s); fetching it again from peers", what, exc, exc.quarantined
            )
    raise AssertionError("unreachable")


async def pump(
    services: Services,
    kind: TopicKind,
    driver: Driver,
    make_event: Callable[[Any, int], Any | None],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe to ``kind`` and feed each (already validated) message to ``driver``."""
    sub = await services.subscribe(kind)
    task_status.started()
    async for item in sub:
        try:
            msg: Any = decode(item.data, kind.message_type)
        except RemoteProtocolError as exc:  # validated already; should not happen
            _log.warning("undecodable %s message after validation: %s", kind.value, exc)
            continue
        event = make_event(msg, services.now())
        if event is not None:
            await driver.feed(event)


class Tasks:
    """Named background tasks of a role that can be cancelled (training, fetching)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._scopes: dict[Any, trio.CancelScope] = {}

    def start(self, key: Any, fn: Callable[[], Any]) -> None:
        scope = trio.CancelScope()
        self._scopes[key] = scope

        async def run() -> None:
            with scope:
                try:
                    await fn()
                finally:
                    if self._scopes.get(key) is scope:
                        del self._scopes[key]

        self._nursery.start_soon(run)

    def cancel(self, key: Any) -> None:
        scope = self._scopes.pop(key, None)
        if scope is not None:
            scope.cancel()


async def wait_for_validator_set(services: Services, limit_s: float) -> None:
    """With a chain: wait until every address of the validator set has joined (bounded)."""
    with trio.move_on_after(limit_s):
        while True:
            view = services.view.get()
            if not view.validator_set_size or len(view.validators) >= view.validator_set_size:
                return
            await trio.sleep(0.5)
    _log.warning("validator set incomplete after %.0f s; continuing", limit_s)


async def watch_for_proof(
    services: Services,
    proofs: ProofBackend,
    round: RoundId,
    driver: Driver,
    poll_s: float = 1.0,
) -> None:
    """Poll the chain until ``round`` is recorded, then feed `ProofObserved` (the proof's
    gossip can be missed, e.g. across a restart)."""
    while True:
        await trio.sleep(poll_s)
        try:
            if await proofs.recorded(services.subnet, round):
                await driver.feed(ProofObserved(round, b""))
                return
        except Exception as exc:  # the RPC may be down for a while: keep polling
            _log.debug("chain poll failed: %s", exc)
