"""A node process for the multi-process net tests (run as a script, speaks JSON lines).

    python tests/net/node_child.py --seed HEX [--bootstrap ADDR]... [--subnet NAME]
        [--ttl S] [--refresh S] [--dag-bytes N] --store DIR

Prints ``{"addr", "peer", "root"}`` once ready, then one ``{"gossip": text}`` line per
message received on the subnet's updates topic, until its stdin is closed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import trio

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import SubnetId
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.core.validation import Validation
from sorap2p.net.discovery import DiscoveryConfig
from sorap2p.net.gossip import ValidatorRegistry
from sorap2p.net.network import NetworkConfig, open_network
from sorap2p.store import Blockstore
from sorap2p.store.unixfs import import_bytes


def emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


async def main(args: argparse.Namespace) -> None:
    store = Blockstore(Path(args.store))
    root = import_bytes(store, os.urandom(args.dag_bytes)).root if args.dag_bytes else None
    cfg = NetworkConfig(
        bootstrap=tuple(args.bootstrap),
        bootstrap_grace=0.2,
        discovery=DiscoveryConfig(record_ttl=args.ttl, refresh_interval=args.refresh),
    )
    registry = ValidatorRegistry({TopicKind.UPDATES: lambda p, d: Validation.ACCEPT})
    async with open_network(IdentityKey(bytes.fromhex(args.seed)), cfg, store, registry) as net:
        sub = None
        if args.subnet:
            subnet = SubnetId(args.subnet)
            sub = await net.gossip.subscribe(Topic(subnet, TopicKind.UPDATES))
            await net.join_subnet(subnet)
        emit({"addr": net.host.listen_addrs()[0], "peer": str(net.peer_id), "root": str(root)})
        async with trio.open_nursery() as nursery:

            async def relay() -> None:
                if sub is not None:
                    async for msg in sub:
                        emit({"gossip": msg.data.decode()})

            nursery.start_soon(relay)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True)
    ap.add_argument("--bootstrap", action="append", default=[])
    ap.add_argument("--subnet", default="")
    ap.add_argument("--ttl", type=float, default=2.0)
    ap.add_argument("--refresh", type=float, default=0.5)
    ap.add_argument("--dag-bytes", type=int, default=0)
    ap.add_argument("--store", required=True)
    trio.run(main, ap.parse_args())
