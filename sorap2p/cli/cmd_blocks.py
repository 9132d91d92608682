"""``sorap2p blocks``: the node's IPFS-compatible block store (HOME/blockstore, kubo layout)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("SORAP2P_HOME", str(Path.home() / ".sorap2p")))


def home_parent() -> argparse.ArgumentParser:
    """A parent parser adding ``--home`` (shared by the store commands)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--home",
        type=Path,
        default=None,
        help="the node's home directory (default: $SORAP2P_HOME or ~/.sorap2p)",
    )
    return parent


def _home(args: argparse.Namespace) -> Path:
    home: Path = args.home if args.home is not None else default_home()
    return home


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "blocks", help="add, read, export, import, verify and collect content-addressed blocks"
    )
    sub = parser.add_subparsers(dest="blocks_command", metavar="ACTION", required=True)
    home = home_parent()

    p = sub.add_parser("add", parents=[home], help="import a file as UnixFS; print its root CID")
    p.add_argument("file", type=Path)
    p.add_argument(
        "--profile",
        default="unixfs-v1-2025",
        help="unixfs-v1-2025 (default: CIDv1, raw leaves, 1 MiB, 1024 links) or unixfs-v0-2015",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the root")
    p.set_defaults(func=_add)

    p = sub.add_parser("cat", parents=[home], help="write a UnixFS file's bytes to stdout")
    p.add_argument("cid")
    p.set_defaults(func=_cat)

    p = sub.add_parser("export-car", parents=[home], help="write the DAG under ROOT as a CAR v1")
    p.add_argument("root")
    p.add_argument("out", type=Path)
    p.set_defaults(func=_export_car)

    p = sub.add_parser("import-car", parents=[home], help="store (and pin the roots of) a CAR")
    p.add_argument("file", type=Path)
    p.add_argument("--no-pin", action="store_true", help="do not pin the CAR's roots")
    p.set_defaults(func=_import_car)

    p = sub.add_parser(
        "verify", parents=[home], help="re-hash every block and walk every pin; exit 1 on damage"
    )
    p.set_defaults(func=_verify)

    p = sub.add_parser("gc", parents=[home], help="delete blocks no pin reaches")
    p.set_defaults(func=_gc)


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sorap2p.store import Blockstore

    return Blockstore(_home(args) / "blockstore")


def _add(args: argparse.Namespace) -> int:
    from sorap2p.store.unixfs import get_profile, import_file

    store = _store(args)
    result = import_file(store, args.file, get_profile(args.profile))
    if not args.no_pin:
        store.pin(result.root, f"add/{args.file.name}")
    print(result.root)
    return 0


def _cat(args: argparse.Namespace) -> int:
    from sorap2p.core.cid import Cid
    from sorap2p.store.unixfs import iter_file

    out = sys.stdout.buffer
    for piece in iter_file(_store(args), Cid.parse(args.cid)):
        out.write(piece)
    out.flush()
    return 0


def _export_car(args: argparse.Namespace) -> int:
    from sorap2p.core.cid import Cid
    from sorap2p.store.car import export_car

    writer = export_car(_store(args), [Cid.parse(args.root)], args.out)
    print(f"wrote {writer.blocks} blocks, {writer.bytes_written} bytes to {args.out}")
    return 0


def _import_car(args: argparse.Namespace) -> int:
    from sorap2p.store.car import import_car

    store = _store(args)
    result = import_car(store, args.file)
    for root in result.roots:
        if not args.no_pin:
            store.pin(root, f"car/{args.file.name}")
        print(root)
    print(f"imported {result.blocks} blocks", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from sorap2p.store.dag import verify_store

    report = verify_store(_store(args))
    for line in report.corrupt:
        print(f"corrupt: {line}")
    for line in report.missing:
        print(f"missing: {line}")
    print(
        f"checked {report.checked} blocks: {len(report.corrupt)} corrupt, "
        f"{len(report.missing)} missing, {report.temp_files} leftover temporary files"
    )
    return 0 if report.ok else 1


def _gc(args: argparse.Namespace) -> int:
    from sorap2p.store.dag import collect_garbage

    result = collect_garbage(_store(args))
    print(
        f"removed {result.removed} blocks ({result.freed_bytes} bytes), kept {result.kept}, "
        f"removed {result.temp_removed} stale temporary files"
    )
    return 0
