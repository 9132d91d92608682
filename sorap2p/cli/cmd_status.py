"""`sorap2p status`: print a running node's status (role, peers, subnet, round machine,
rounds, blockstore, chain, last errors), from its localhost status API when it serves one,
else from ``HOME/status.json``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sorap2p.cli.options import add_home

STALE_S: Final = 10.0  # a status file older than this means the node is not running
FETCH_TIMEOUT_S: Final = 3.0
NOT_RUNNING: Final = 3
NO_STATUS: Final = 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="print a running node's status")
    add_home(p)
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.add_argument("--errors", type=int, default=5, help="how many recent warnings to show")
    p.set_defaults(func=run)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: rely on the file's age
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fetch_status(url: str, timeout: float = FETCH_TIMEOUT_S) -> dict[str, Any]:
    """GET ``url``/status from a node's status API (loopback addresses only)."""
    import urllib.request

    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost"}:
        raise ValueError(f"not a localhost status URL: {url!r}")
    with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def load(home: Path) -> tuple[dict[str, Any] | None, str, bool, str]:
    """(status document, where it came from, whether the node runs, a note for the reader:
    why there is no document, why the node is not running, or why the API was not used)."""
    from sorap2p.node.status import STATUS_FILE

    path = home / STATUS_FILE
    try:
        age = time.time() - path.stat().st_mtime
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "", False, f"no {STATUS_FILE} in {home}: the node has not run here"
    except (OSError, ValueError) as exc:
        return None, "", False, f"cannot read {path}: {exc}"
    if not isinstance(doc, dict):
        return None, "", False, f"{path} holds no status document"
    if age > STALE_S or not _alive(doc.get("pid")):
        return doc, str(path), False, f"node not running (last status written {age:.0f} s ago)"
    url = doc.get("status_url")
    if isinstance(url, str) and url:
        try:
            return fetch_status(url), url, True, ""
        except (OSError, ValueError) as exc:
            return doc, str(path), True, f"the status API at {url} did not answer: {exc}"
    return doc, str(path), True, ""


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def summary(
    doc: dict[str, Any], source: str, running: bool, errors: int = 5, note: str = ""
) -> list[str]:
    """The human-readable lines for a status document."""
    lines = [
        f"node:        {'running' if running else 'NOT RUNNING'} (pid {_n(doc.get('pid'))}; "
        f"from {source})",
        *([f"note:        {note}"] if note else []),
        f"peer id:     {_n(doc.get('peer_id'))}",
        f"role:        {_n(doc.get('role'))}",
        f"subnet:      {_n(doc.get('subnet'))}",
    ]
    for addr in doc.get("listen") or []:
        lines.append(f"listen:      {addr}")
    lines.append(f"peers:       {_n(doc.get('peers'))}")
    ms = doc.get("membership") or {}
    agg = ms.get("aggregator")
    lines.append(
        f"membership:  {_n(ms.get('members'))} members (0: open), "
        f"aggregator {agg[:16] + '…' if isinstance(agg, str) else '-'}, "
        f"{len(ms.get('validators') or [])} validators, quorum {_n(ms.get('quorum'))}"
    )
    machine = doc.get("machine")
    state = machine.get("state") if isinstance(machine, dict) else None
    rounds = doc.get("rounds") or {}
    lines.append(
        f"round:       machine {state or '(not started)'}, last round {_n(rounds.get('last'))}, "
        f"finished ok {_n(rounds.get('ok'))} / failed {_n(rounds.get('failed'))}"
    )
    g = doc.get("gossip") or {}
    lines.append(
        f"gossip:      accepted {_n(g.get('accepted'))}, rejected {_n(g.get('rejected'))}, "
        f"ignored {_n(g.get('ignored'))}, published {_n(g.get('published'))}"
    )
    store = doc.get("blockstore")
    if isinstance(store, dict):
        lines.append(
            f"blockstore:  {_n(store.get('blocks'))} blocks, "
            f"{_fmt_bytes(int(store.get('bytes') or 0))}, {_n(store.get('pins'))} pins"
        )
    chain = doc.get("chain") or {}
    if chain.get("attached"):
        lines.append(
            f"chain:       attached, validator set v{_n(chain.get('validator_set_version'))} "
            f"({_n(chain.get('validator_set_size'))} addresses)"
        )
    else:
        lines.append("chain:       none (gossip-only proofs)")
    recent = (doc.get("errors") or [])[-errors:] if errors > 0 else []
    totals = doc.get("errors_total") or {}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "none"
    lines.append(f"problems:    {counts}")
    for e in recent:
        ts = time.strftime("%H:%M:%S", time.localtime(float(e.get("ts") or 0)))
        lines.append(f"  {ts} {e.get('level', '?'):<7} {e.get('logger', '?')}: {e.get('msg', '')}")
    return lines


def run(args: argparse.Namespace) -> int:
    doc, source, running, note = load(args.home)
    if doc is None:
        print(f"sorap2p status: {note}", file=sys.stderr)
        return NO_STATUS
    if args.json:
        print(json.dumps({**doc, "running": running}, indent=1, default=str))
    else:
        print("\n".join(summary(doc, source, running, args.errors, note)))
    if not running:
        print(f"sorap2p status: {note}", file=sys.stderr)
        return NOT_RUNNING
    return 0
