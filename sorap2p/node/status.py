"""A node's status for humans and tools: role, peers, subnet, round state, blockstore,
chain, recent warnings. Written to ``HOME/status.json`` every second (atomically) while the
node runs; `sorap2p.node.http` serves the same document (plus blockstore statistics) on
localhost, and `sorap2p status` prints it."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import trio

from sorap2p.node.home import write_atomic
from sorap2p.node.services import Services

STATUS_FILE = "status.json"
ERROR_LOG_SIZE: Final = 50
ERROR_MSG_CHARS: Final = 500


class ErrorLog(logging.Handler):
    """The last ``capacity`` warnings and errors of the ``sorap2p`` loggers (bounded), and
    how many of each level were seen in total."""

    def __init__(self, capacity: int = ERROR_LOG_SIZE) -> None:
        super().__init__(level=logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.totals: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string in someone's log call
            msg = str(record.msg)
        level = record.levelname.lower()
        self.totals[level] += 1
        self.records.append(
            {
                "ts": round(record.created, 3),
                "level": level,
                "logger": record.name,
                "msg": msg[:ERROR_MSG_CHARS],
            }
        )

    def recent(self) -> list[dict[str, Any]]:
        with self.lock or contextlib.nullcontext():  # records are appended from any thread
            return list(self.records)

    def counts(self) -> dict[str, int]:
        with self.lock or contextlib.nullcontext():
            return dict(self.totals)


@contextmanager
def capture_errors(services: Services, logger: str = "sorap2p") -> Iterator[ErrorLog]:
    """Attach the node's `ErrorLog` (kept in ``services.extras["error_log"]``) to ``logger``
    for the duration; nested uses share it, and the outermost detaches it."""
    existing = services.extras.get("error_log")
    target = logging.getLogger(logger)
    if isinstance(existing, ErrorLog) and existing in target.handlers:
        yield existing
        return
    log = existing if isinstance(existing, ErrorLog) else ErrorLog()
    services.extras["error_log"] = log
    target.addHandler(log)
    try:
        yield log
    finally:
        target.removeHandler(log)


def round_summary(role_status: dict[str, Any]) -> dict[str, Any]:
    """Rounds finished (ok / failed) and the last round, from the role's status dict; None
    where the role does not record it (a trainer counts only the updates it sent)."""
    ok: int | None = None
    failed: int | None = None
    last: int | None = None
    if isinstance(role_status.get("rounds_ok"), int):  # a role that counts both directly
        ok, failed = role_status["rounds_ok"], role_status.get("rounds_failed")
    elif isinstance(role_status.get("rounds"), list):  # aggregator: one entry per round
        entries = [e for e in role_status["rounds"] if isinstance(e, dict)]
        ok = sum(1 for e in entries if e.get("ok"))
        failed = len(entries) - ok
        if entries:
            last = entries[-1].get("round")
    elif isinstance(role_status.get("checks"), list):  # validator: one check per round
        checks = [e for e in role_status["checks"] if isinstance(e, dict)]
        ok = sum(1 for e in checks if e.get("ok"))
        failed = len(checks) - ok
    elif isinstance(role_status.get("rounds_trained"), int):  # trainer
        ok = role_status["rounds_trained"]
    lr = role_status.get("last_round")
    if isinstance(lr, dict):
        lr = lr.get("round")
    if isinstance(lr, int):
        last = lr
    return {"ok": ok, "failed": failed, "last": last}


def snapshot(services: Services) -> dict[str, Any]:
    view = services.view.get()
    driver = services.extras.get("driver")
    machine: dict[str, Any] | None = None
    if driver is not None:
        machine = dict(driver.machine.statistics())
        machine["transitions"] = len(getattr(driver, "transitions", ()))
    # a copy: the document is serialised in a worker thread while the role keeps updating
    role_status = copy.deepcopy(services.extras.get("status", {}))
    errors = services.extras.get("error_log")
    out: dict[str, Any] = {
        "peer_id": str(services.identity.peer_id),
        "role": services.role.value,
        "subnet": services.subnet.name,
        "pid": os.getpid(),
        "time_ms": services.now(),
        "status_url": services.extras.get("status_url"),
        "listen": services.host.listen_addrs(),
        "peers": len(services.host.connected_peers()),
        "machine": machine,
        "rounds": round_summary(role_status),
        "membership": {
            "aggregator": str(view.aggregator) if view.aggregator else None,
            "members": len(view.members),
            "validators": [str(p) for p in view.validators],
            "quorum": view.quorum,
        },
        "chain": {
            "attached": services.extras.get("chain") is not None,
            "validator_set_version": view.validator_set_version,
            "validator_set_size": view.validator_set_size,
        },
        "gossip": gossip_status(services.gossip.statistics()),
        "role_status": role_status,
        "errors": errors.recent() if isinstance(errors, ErrorLog) else [],
        "errors_total": errors.counts() if isinstance(errors, ErrorLog) else {},
    }
    return out


def write_status(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str))


async def write_status_forever(services: Services, interval: float = 1.0) -> None:
    path = services.home.path / STATUS_FILE
    with capture_errors(services):
        while True:
            await trio.to_thread.run_sync(write_status, path, snapshot(services))
            await trio.sleep(interval)


def read_status(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / STATUS_FILE).read_text())
    return data


def gossip_status(stats: Any) -> dict[str, Any]:
    """The gossip counters, and the 20 most frequent REJECT/IGNORE reasons."""
    out: dict[str, Any] = {k: v for k, v in asdict(stats).items() if isinstance(v, int)}
    reasons = sorted(stats.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    out["reasons"] = dict(reasons)
    return out
