"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sorap2p.core.errors import ConfigError

HOME_ENV = "SORAP2P_HOME"


def add_home(p: argparse.ArgumentParser) -> None:
    default = os.environ.get(HOME_ENV, str(Path.home() / ".sorap2p"))
    p.add_argument(
        "--home",
        type=Path,
        default=Path(default),
        help=f"node home directory (default: ${HOME_ENV} or ~/.sorap2p)",
    )


def read_password(path: Path | None) -> str:
    if path is not None:
        try:
            return path.read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"cannot read password file {path}: {exc}") from None
    value = os.environ.get("SORAP2P_KEYSTORE_PASSWORD")
    if value is None:
        raise ConfigError("a keystore needs --password-file or $SORAP2P_KEYSTORE_PASSWORD")
    return value
