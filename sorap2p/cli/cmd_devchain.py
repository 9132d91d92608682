"""``sorap2p devchain``: start a local anvil, print its URL and funded accounts, run until ^C."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "devchain",
        help="run a local anvil chain (127.0.0.1) with funded accounts",
        description=(
            "Starts anvil from contracts/node_modules (install it with "
            "`npm ci --ignore-scripts --prefix contracts`), prints its URL and funded "
            "accounts, optionally deploys the contracts, and runs until interrupted."
        ),
    )
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--block-time", type=float, default=None, help="seconds; default automine")
    parser.add_argument("--state", type=Path, default=None, help="load/save chain state here")
    parser.add_argument(
        "--deploy", type=Path, default=None, help="deploy the contracts, write this file"
    )
    parser.add_argument("--with-token", action="store_true", help="also deploy a TestToken")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import threading

    from sorap2p.chain.deploy import deploy
    from sorap2p.chain.devchain import Devchain

    devchain = Devchain(
        port=args.port, accounts=args.accounts, block_time=args.block_time, state=args.state
    )
    devchain.start()
    try:
        print(f"devchain: {devchain.url} (chain id 31337, pid {devchain.pid})")
        print("funded accounts (address private-key), 10000 ETH each:")
        for i, key in enumerate(devchain.keys):
            print(f"  [{i}] {key.address} 0x{key.private_key.hex()}")
        if args.deploy is not None:
            deployment = deploy(devchain.client(), devchain.keys[0], with_token=args.with_token)
            deployment.save(args.deploy)
            print(f"deployed: registry {deployment.registry} ledger {deployment.ledger}")
            print(f"wrote {args.deploy}")
        print("press Ctrl-C to stop", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        devchain.stop()
    return 0
