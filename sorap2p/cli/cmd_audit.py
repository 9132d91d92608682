"""`sorap2p audit verify`: re-check a proven round from the chain and the blocks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sorap2p.cli.options import add_home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="re-check proven rounds (signatures, Merkle root, lineage)")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = asub.add_parser(
        "verify",
        help="verify one round",
        description=(
            "Re-check a round recorded on chain: the record and its quorum signatures, the "
            "lineage, the metadata document's Merkle root and ranking, and (with --recompute, "
            "from a home whose key can open the round's updates) the aggregate itself. "
            "Blocks are read from HOME's blockstore. Exit 0 only when every check passes."
        ),
    )
    add_home(v)
    v.add_argument("--subnet", required=True, help="subnet id")
    v.add_argument("--round", type=int, required=True, help="round number")
    v.add_argument("--chain", metavar="URL", help="chain URL (default: chain.url of HOME)")
    v.add_argument("--deployment", type=Path, help="deployment file (default: HOME's)")
    v.add_argument(
        "--recompute",
        action="store_true",
        help="decrypt the updates with HOME's key and recompute the aggregate",
    )
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorap2p.chain.client import ChainClient
    from sorap2p.chain.deployment import Deployment
    from sorap2p.core.errors import ConfigError
    from sorap2p.core.ids import RoundId, SubnetId
    from sorap2p.node.audit import audit_round
    from sorap2p.node.home import Home
    from sorap2p.store.blockstore import Blockstore

    home = Home(args.home)
    cfg = home.load_config(os.environ)
    url = args.chain or cfg.chain.url
    dep_path = args.deployment or (Path(cfg.chain.deployment) if cfg.chain.deployment else None)
    if not url or dep_path is None:
        raise ConfigError("audit needs --chain and --deployment (or a home configured with both)")
    client = ChainClient.connect(url, Deployment.load(dep_path))
    report = audit_round(
        client,
        Blockstore(home.blockstore_path),
        SubnetId(args.subnet),
        RoundId(args.round),
        identity=home.identity_key() if args.recompute else None,
        model_ref=cfg.learn.model,
    )
    print(report.render())
    return 0 if report.ok else 1
