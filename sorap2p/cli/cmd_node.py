"""`sorap2p node`: run a node in one of the four roles."""

from __future__ import annotations

import argparse
import os

from sorap2p.cli.options import add_home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "node",
        help="run a node (trainer, aggregator, validator or bootstrap)",
        description=(
            "Run a sorap2p node. It starts a libp2p host (TCP + Noise + Yamux) on the "
            "configured addresses, prints its full multiaddrs (with /p2p/<peer id>) and runs "
            "until Ctrl-C or SIGTERM. Flags override config.toml and SORAP2P_* variables."
        ),
    )
    add_home(p)
    p.add_argument(
        "--role",
        choices=["trainer", "aggregator", "validator", "bootstrap"],
        help="the node's role (default: node.role from config.toml)",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="listen multiaddr, e.g. /ip4/127.0.0.1/tcp/4001 (repeatable)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="bootstrap peer multiaddr with /p2p/<id> (repeatable)",
    )
    p.add_argument("--subnet", help="subnet id to join")
    p.add_argument(
        "--data",
        metavar="PKG.MODULE:LOADER",
        help="private data loader for a trainer (returns torch datasets)",
    )
    p.add_argument("--chain", metavar="URL", help="chain JSON-RPC URL")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key (repeatable)",
    )
    p.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    if args.role:
        out.append(f"node.role={args.role}")
    if args.listen:
        out.append("network.listen=" + ",".join(args.listen))
    if args.bootstrap:
        out.append("network.bootstrap=" + ",".join(args.bootstrap))
    if args.subnet:
        out.append(f"node.subnet={args.subnet}")
    if args.data:
        out.append(f"node.data={args.data}")
    if args.chain:
        out.append(f"chain.url={args.chain}")
    return [*out, *args.set]


def run(args: argparse.Namespace) -> int:
    import trio

    from sorap2p.node.home import Home
    from sorap2p.node.runner import run_node

    home = Home(args.home)
    config = home.load_config(os.environ, tuple(overrides_from(args)))
    return trio.run(run_node, config, home)
