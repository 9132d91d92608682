"""Drive a round machine under trio: serialise events, perform actions, run timers.

The driver is the only place where a machine meets I/O. Events come from any task through
`feed` (a bounded channel); one task applies them in order. Timer actions become trio tasks
that feed `TimerFired` back; every other action goes to the role's ``perform`` coroutine,
which must return quickly (start long work in the role's nursery and feed the result back).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from sorap2p.core.ids import RoundId
from sorap2p.core.rounds.events import SetTimer, TimerFired
from sorap2p.core.rounds.fsm import Machine

_log = logging.getLogger(__name__)

EVENT_QUEUE: Final = 1024

Clock = Callable[[], int]
Perform = Callable[[Any], Awaitable[None]]


def wall_clock_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def trio_clock_ms() -> int:
    """Milliseconds of trio's clock: deterministic under `autojump_clock` in tests."""
    return int(trio.current_time() * 1000)


class Driver:
    def __init__(self, machine: Machine[Any], perform: Perform, clock: Clock = wall_clock_ms):
        self.machine = machine
        self._perform = perform
        self._clock = clock
        self._send, self._recv = trio.open_memory_channel[Any](EVENT_QUEUE)
        self._timers: dict[tuple[str, RoundId], trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.transitions: list[tuple[str, str, str]] = []  # (from, event, to) for tests/status
        self.idle = trio.Event()

    def now(self) -> int:
        return self._clock()

    async def feed(self, event: Any) -> None:
        await self._send.send(event)

    def feed_nowait(self, event: Any) -> None:
        self._send.send_nowait(event)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for event in self._recv:
                await self.apply(event)

    async def apply(self, event: Any) -> None:
        before = self.machine.state.name
        actions = self.machine.handle(event, self.now())
        self.transitions.append((before, type(event).__name__, self.machine.state.name))
        for action in actions:
            if isinstance(action, SetTimer):
                self.arm(action)
            else:
                await self._perform(action)

    def arm(self, timer: SetTimer) -> None:
        """Arm (or re-arm) ``timer``: its TimerFired is fed at ``timer.at``."""
        assert self._nursery is not None, "Driver.run must be running"
        key = (timer.name, timer.round)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        scope = trio.CancelScope()
        self._timers[key] = scope

        async def fire() -> None:
            with scope:
                delay = max(0, timer.at - self.now()) / 1000
                await trio.sleep(delay)
                self._timers.pop(key, None)
                await self.feed(TimerFired(timer.name, timer.round))

        self._nursery.start_soon(fire)

    def cancel_timers(self) -> None:
        for scope in self._timers.values():
            scope.cancel()
        self._timers.clear()

    async def aclose(self) -> None:
        self.cancel_timers()
        await self._send.aclose()
