"""`sorap2p init`: create a node home (config, Ed25519 node key, secp256k1 chain key)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sorap2p.cli.options import add_home, read_password
from sorap2p.core.config import load_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init",
        help="create a node home: config.toml, node key and chain key",
        description=(
            "Create HOME with config.toml, the Ed25519 node key (the libp2p identity) and a "
            "secp256k1 chain key (files 0600), then print the peer id and Ethereum address."
        ),
    )
    add_home(p)
    p.add_argument(
        "--role",
        default="trainer",
        choices=["trainer", "aggregator", "validator", "bootstrap"],
        help="role written to config.toml (default: trainer)",
    )
    p.add_argument("--subnet", default="digits", help="subnet id written to config.toml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any config key in the new config.toml (repeatable)",
    )
    p.add_argument(
        "--keystore",
        action="store_true",
        help="store the chain key in an encrypted Ethereum keystore; the password "
        "comes from --password-file or $SORAP2P_KEYSTORE_PASSWORD",
    )
    p.add_argument("--password-file", type=Path, help="file holding the keystore password")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.add_argument("--json", action="store_true", help="print the identity as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorap2p.node.home import Home

    overrides = [f"node.role={args.role}", f"node.subnet={args.subnet}", *args.set]
    config = load_config("", os.environ, overrides)
    password = read_password(args.password_file) if args.keystore else None
    home = Home(args.home)
    ident = home.init(config, keystore_password=password, force=args.force)
    if args.json:
        print(json.dumps({**ident.as_json(), "home": str(home.path)}))
    else:
        print(f"initialised {home.path}")
        print(f"peer id:     {ident.peer_id}")
        print(f"eth address: {ident.eth_address}")
    return 0
