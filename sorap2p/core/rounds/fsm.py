"""A small table-driven state machine kit (states, rules, dispatch, diagrams)."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sorap2p.core.errors import LocalProtocolError
from sorap2p.core.ids import PeerId

S = TypeVar("S", bound=enum.Enum)


@dataclass(frozen=True, slots=True)
class Rule:
    """In state ``source``, event type ``event`` runs ``handler``, which moves to one of
    ``targets``. ``note`` labels the arrow in diagrams."""

    source: enum.Enum
    event: type[Any]
    targets: tuple[enum.Enum, ...]
    handler: str
    note: str = ""


class Table:
    def __init__(self, name: str, rules: Iterable[Rule]) -> None:
        self.name = name
        self.rules = tuple(rules)
        self._index: dict[tuple[enum.Enum, type[Any]], Rule] = {}
        for rule in self.rules:
            key = (rule.source, rule.event)
            if key in self._index:
                raise LocalProtocolError(f"{name}: two rules for {key}")
            self._index[key] = rule

    def lookup(self, state: enum.Enum, event: type[Any]) -> Rule | None:
        return self._index.get((state, event))

    def mermaid(self) -> str:
        """A Mermaid state diagram of the table."""
        lines = ["stateDiagram-v2"]
        for rule in self.rules:
            for target in rule.targets:
                label = rule.event.__name__ + (f" / {rule.note}" if rule.note else "")
                lines.append(f"    {rule.source.name} --> {target.name}: {label}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table as a Markdown table."""
        rows = ["| state | event | next state(s) | what happens |", "|---|---|---|---|"]
        for rule in self.rules:
            targets = ", ".join(t.name for t in rule.targets)
            rows.append(f"| {rule.source.name} | {rule.event.__name__} | {targets} | {rule.note} |")
        return "\n".join(rows)


class Machine(Generic[S]):
    """Dispatch events through ``TABLE``; unknown (state, event) pairs are ignored and
    counted: they are normal in a distributed protocol (late or duplicate messages)."""

    TABLE: ClassVar[Table]

    def __init__(self, state: S) -> None:
        self.state: S = state
        self._ignored: Counter[str] = Counter()
        self._handled: Counter[str] = Counter()

    def handle(self, event: Any, now: int) -> list[Any]:
        rule = self.TABLE.lookup(self.state, type(event))
        if rule is None:
            self._ignored[f"{self.state.name}:{type(event).__name__}"] += 1
            return []
        target, actions = getattr(self, rule.handler)(event, now)
        if target not in rule.targets:
            raise LocalProtocolError(
                f"{self.TABLE.name}: {rule.handler} moved {self.state.name} to {target.name}, "
                f"not one of {[t.name for t in rule.targets]}"
            )
        self._handled[type(event).__name__] += 1
        self.state = target
        out: list[Any] = actions
        return out

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state.name,
            "handled": dict(self._handled),
            "ignored": dict(self._ignored),
        }


def rotation_position(order: tuple[PeerId, ...], me: PeerId, turn: int) -> int:
    """Our distance from the primary of rotation ``turn`` among ``order`` (sorted peer ids):
    the peer at index ``turn mod n`` acts first, the one at distance p after p delays. A peer
    outside the set is at distance n (after everyone)."""
    if me not in order:
        return len(order)
    return (order.index(me) - turn) % len(order)
