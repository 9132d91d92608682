"""Discovery of sub-command modules.

Every module ``sorap2p/cli/cmd_<name>.py`` with a ``register(subparsers)`` function is a
sub-command; it adds its parser and sets ``func`` (namespace -> exit code). Modules import
heavy dependencies (torch, libp2p, web3) inside their handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable, Iterator

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"
Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]


def registrations() -> Iterator[Register]:
    import sorap2p.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"sorap2p.cli.{info.name}")
            register = getattr(module, "register", None)
            if register is not None:
                yield register
