"""`sorap2p id`: print a node's peer id and Ethereum address."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sorap2p.cli.options import add_home, read_password


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("id", help="print the node's peer id and Ethereum address")
    add_home(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--password-file", type=Path, help="keystore password file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorap2p.node.home import Home

    password = read_password(args.password_file) if args.password_file else None
    ident = Home(args.home).identity(password)
    if args.json:
        print(json.dumps(ident.as_json()))
    else:
        print(f"peer id:     {ident.peer_id}")
        print(f"eth address: {ident.eth_address}")
    return 0
