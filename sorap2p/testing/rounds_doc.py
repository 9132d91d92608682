"""Render the generated part of protocols/rounds.md from the round machines' tables.

``python -m sorap2p.testing.rounds_doc --write`` rewrites the section between the markers;
a test fails when the committed document and the tables disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sorap2p.core.rounds.aggregator import AggregatorMachine
from sorap2p.core.rounds.fsm import Table
from sorap2p.core.rounds.trainer import TrainerMachine
from sorap2p.core.rounds.validator import ValidatorMachine

DOC = Path(__file__).resolve().parents[2] / "protocols" / "rounds.md"
BEGIN = "<!-- BEGIN GENERATED: state machines -->"
END = "<!-- END GENERATED -->"


def _dedupe_mermaid(table: Table) -> str:
    seen: set[str] = set()
    out = []
    for line in table.mermaid().splitlines():
        if line not in seen:
            seen.add(line)
            out.append(line)
    return "\n".join(out)


def generated() -> str:
    parts = [BEGIN, ""]
    for title, machine in (
        ("Aggregator", AggregatorMachine),
        ("Trainer", TrainerMachine),
        ("Validator", ValidatorMachine),
    ):
        parts += [
            f"### {title} (`{machine.__module__}`)",
            "",
            "```mermaid",
            _dedupe_mermaid(machine.TABLE),
            "```",
            "",
            machine.TABLE.markdown(),
            "",
        ]
    parts.append(END)
    return "\n".join(parts)


def render(current: str) -> str:
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + generated() + tail


if __name__ == "__main__":  # pragma: no cover
    text = render(DOC.read_text())
    if "--write" in sys.argv:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(text)
