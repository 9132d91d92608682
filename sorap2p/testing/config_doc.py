"""Generate docs/configuration.md from the config dataclasses (a test keeps it current).

``python -m sorap2p.testing.config_doc --write``"""

from __future__ import annotations

import sys
from pathlib import Path

from sorap2p.core.config import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `sorap2p/core/config.py` by `python -m sorap2p.testing.config_doc "
        "--write`.",
        "",
        "Every key can be set in `HOME/config.toml` (`[section]` then `key = value`), as an "
        "environment variable `SORAP2P_<SECTION>_<KEY>` (e.g. `SORAP2P_LEARN_LR=0.05`), or on the "
        "command line with `--set section.key=value`; later sources win, in that order. Lists "
        "are comma-separated in variables and flags.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, typ, default, meaning in reference():
        lines.append(f"| `{key}` | {typ} | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        DOC.write_text(render())
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(render())
