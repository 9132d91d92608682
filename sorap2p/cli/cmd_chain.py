"""``sorap2p chain``: deploy the contracts, create a subnet, show what is on chain."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_DEPLOYMENT = "deployment.json"
KEY_ENV = "SORAP2P_CHAIN_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "chain", help="deploy the contracts, create subnets, inspect the chain"
    )
    sub = parser.add_subparsers(dest="chain_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, key: bool) -> None:
        p.add_argument("--rpc", default="http://127.0.0.1:8545", help="JSON-RPC URL")
        if key:
            p.add_argument(
                "--key-env",
                default=KEY_ENV,
                help=f"environment variable holding the hex private key (default {KEY_ENV})",
            )
            p.add_argument(
                "--dev-account",
                type=int,
                default=None,
                help="use anvil's mnemonic account N instead (local chains only)",
            )
        p.add_argument("--confirmations", type=int, default=1)

    deploy = sub.add_parser("deploy", help="deploy SubnetRegistry + RoundLedger")
    common(deploy, key=True)
    deploy.add_argument("--out", type=Path, default=Path(DEFAULT_DEPLOYMENT))
    deploy.add_argument("--with-token", action="store_true", help="also deploy a TestToken")
    deploy.set_defaults(func=_deploy)

    create = sub.add_parser("create-subnet", help="create a subnet with a validator set")
    common(create, key=True)
    create.add_argument("--deployment", type=Path, default=Path(DEFAULT_DEPLOYMENT))
    create.add_argument("--subnet", required=True, help="subnet name ([a-z0-9-], 1-32 chars)")
    create.add_argument("--validators", required=True, help="comma-separated addresses")
    create.add_argument("--quorum", type=int, required=True)
    create.add_argument("--token", default="0x" + "00" * 20, help="ERC-20 address; 0x0 = ETH")
    create.add_argument("--challenge-window", type=int, default=3600)
    create.add_argument("--unbonding-delay", type=int, default=86_400)
    create.add_argument("--round-length", type=int, default=60)
    create.set_defaults(func=_create_subnet)

    status = sub.add_parser("status", help="print a subnet's validator set and latest round")
    common(status, key=False)
    status.add_argument("--deployment", type=Path, default=Path(DEFAULT_DEPLOYMENT))
    status.add_argument("--subnet", required=True)
    status.set_defaults(func=_status)

    disputes = sub.add_parser(
        "disputes", help="list a subnet's disputes: round, challenger, verdict, slashed stake"
    )
    common(disputes, key=False)
    disputes.add_argument("--deployment", type=Path, default=Path(DEFAULT_DEPLOYMENT))
    disputes.add_argument("--subnet", required=True)
    disputes.set_defaults(func=_disputes)


def _key(args: argparse.Namespace) -> Any:
    from sorap2p.chain.devchain import mnemonic_keys
    from sorap2p.chain.proof import ChainKey
    from sorap2p.core.errors import ConfigError

    if args.dev_account is not None:
        return mnemonic_keys(args.dev_account + 1)[args.dev_account]
    text = os.environ.get(args.key_env)
    if not text:
        raise ConfigError(f"no key: set ${args.key_env} to a hex private key or use --dev-account")
    return ChainKey.from_hex(text)


def _client(args: argparse.Namespace, deployment: Any = None) -> Any:
    from sorap2p.chain.client import ChainClient, ChainConfig

    return ChainClient.connect(args.rpc, deployment, ChainConfig(confirmations=args.confirmations))


def _deploy(args: argparse.Namespace) -> int:
    from sorap2p.chain.deploy import deploy

    client = _client(args)
    deployment = deploy(client, _key(args), with_token=args.with_token)
    deployment.save(args.out)
    print(deployment.to_json(), end="")
    print(f"wrote {args.out}")
    return 0


def _create_subnet(args: argparse.Namespace) -> int:
    from sorap2p.chain.client import SubnetParams
    from sorap2p.chain.deployment import Deployment
    from sorap2p.core.ids import SubnetId

    client = _client(args, Deployment.load(args.deployment))
    params = SubnetParams(
        token=args.token,
        round_length=args.round_length,
        challenge_window=args.challenge_window,
        unbonding_delay=args.unbonding_delay,
    )
    validators = [v.strip() for v in args.validators.split(",") if v.strip()]
    subnet = SubnetId(args.subnet)
    client.create_subnet(_key(args), subnet.key, params, validators, args.quorum)
    print(f"created subnet {subnet} ({subnet.key.hex()}) with {len(validators)} validators")
    return 0


def _status(args: argparse.Namespace) -> int:
    from sorap2p.chain.deployment import Deployment
    from sorap2p.core.ids import SubnetId

    client = _client(args, Deployment.load(args.deployment))
    subnet = SubnetId(args.subnet)
    version, quorum, validators = client.validator_set(subnet.key)
    latest = client.latest_round(subnet.key)
    print(
        json.dumps(
            {
                "subnet": str(subnet),
                "validatorSetVersion": version,
                "quorum": quorum,
                "validators": validators,
                "latestRound": latest,
                "lineage": client.lineage(subnet.key, latest, 16) if latest else [],
            },
            indent=2,
        )
    )
    return 0


def _disputes(args: argparse.Namespace) -> int:
    from sorap2p.chain.deployment import Deployment
    from sorap2p.core.ids import SubnetId

    client = _client(args, Deployment.load(args.deployment))
    entries = client.disputes(SubnetId(args.subnet).key)
    rows = [
        {
            "dispute": d.dispute_id,
            "round": d.round,
            "challenger": d.challenger,
            "bond": d.bond,
            "reason": d.reason,
            "status": d.status.name.lower(),
            "offender": d.offender,
            "slashed": d.slashed,
        }
        for d in entries
    ]
    print(json.dumps(rows, indent=2))
    return 0
