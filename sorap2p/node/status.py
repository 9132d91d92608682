"""A node's status for humans and tools: role, peers, subnet, round state, blockstore,
chain. Written to ``HOME/status.json`` every second (atomically) while the node runs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from sorap2p.node.services import Services

STATUS_FILE = "status.json"


def snapshot(services: Services) -> dict[str, Any]:
    view = services.view.get()
    driver = services.extras.get("driver")
    out: dict[str, Any] = {
        "peer_id": str(services.identity.peer_id),
        "role": services.role.value,
        "subnet": services.subnet.name,
        "time_ms": services.now(),
        "listen": services.host.listen_addrs(),
        "peers": len(services.host.connected_peers()),
        "machine": driver.machine.statistics() if driver is not None else None,
        "membership": {
            "aggregator": str(view.aggregator) if view.aggregator else None,
            "members": len(view.members),
            "validators": [str(p) for p in view.validators],
            "quorum": view.quorum,
        },
        "gossip": {
            k: v for k, v in asdict(services.gossip.statistics()).items() if isinstance(v, int)
        },
        "role_status": services.extras.get("status", {}),
    }
    return out


def write_status(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


async def write_status_forever(services: Services, interval: float = 1.0) -> None:
    path = services.home.path / STATUS_FILE
    while True:
        await trio.to_thread.run_sync(write_status, path, snapshot(services))
        await trio.sleep(interval)


def read_status(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / STATUS_FILE).read_text())
    return data
