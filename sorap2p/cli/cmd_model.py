"""``sorap2p model``: the parameter store's global models (HOME/params over HOME/blockstore)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sorap2p.cli.cmd_blocks import default_home, home_parent


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("model", help="global model history, export and rollback")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    home = home_parent()

    p = sub.add_parser("history", parents=[home], help="list the global models by round")
    p.set_defaults(func=_history)

    p = sub.add_parser(
        "export", parents=[home], help="write a round's model: OUT.car (CAR v1) or OUT (torch.save)"
    )
    p.add_argument("--round", type=int, required=True, dest="round_number")
    p.add_argument("out", type=Path)
    p.set_defaults(func=_export)

    p = sub.add_parser("rollback", parents=[home], help="make a round's model current again")
    p.add_argument("--round", type=int, required=True, dest="round_number")
    p.set_defaults(func=_rollback)


def _params(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sorap2p.store.params import ParameterStore

    return ParameterStore(args.home if args.home is not None else default_home())


def _history(args: argparse.Namespace) -> int:
    from sorap2p.core.ids import RoundId

    params = _params(args)
    head = params.head()
    records = params.history()
    if not records:
        print("no global models recorded")
        return 0
    print(f"{'':2}{'round':>7}  {'updates':>7}  {'created (UTC)':19}  root")
    for r in records:
        mark = "*" if head is not None and head.round == r.round else " "
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        n = len(params.updates(RoundId(r.round)))
        print(f"{mark:2}{r.round:>7}  {n:>7}  {created:19}  {r.root}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from sorap2p.core.cid import Cid
    from sorap2p.core.ids import RoundId

    params = _params(args)
    record = params.get_global(RoundId(args.round_number))
    if args.out.suffix == ".car":
        from sorap2p.store.car import export_car

        writer = export_car(params.blocks, [Cid.parse(record.root)], args.out)
        print(f"wrote round {record.round} ({writer.blocks} blocks) to {args.out}")
    else:
        import torch

        sd = {k: v.clone() for k, v in params.load_global(RoundId(args.round_number)).items()}
        torch.save(sd, args.out)
        print(f"wrote round {record.round} ({len(sd)} tensors) to {args.out}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from sorap2p.core.ids import RoundId

    record = _params(args).rollback(RoundId(args.round_number))
    print(f"head is now round {record.round} ({record.root})")
    return 0
