"""The `sorap2p` command line. Each sub-command lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func`` (a callable taking
the parsed namespace and returning an exit code)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sorap2p import __version__
from sorap2p.core.errors import SoraError


def build_parser() -> argparse.ArgumentParser:
    from sorap2p.cli import commands

    parser = argparse.ArgumentParser(
        prog="sorap2p",
        description=(
            "sorap2p: a libp2p overlay for decentralized, privacy-preserving federated "
            "learning (trainer, aggregator, validator and bootstrap nodes)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"sorap2p {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands.registrations():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SoraError as exc:
        print(f"sorap2p: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
