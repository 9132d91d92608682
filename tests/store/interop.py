"""Running the JavaScript reference implementations in interop/ (Helia's UnixFS importer,
@ipld/car). Tests that need them skip when interop/node_modules is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

INTEROP = Path(__file__).resolve().parents[2] / "interop"
INSTALL = "cd interop && npm ci --ignore-scripts --legacy-peer-deps (or scripts/setup.sh)"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Helia / @ipld/car parity tests need Node >= 20")
    if not (INTEROP / "node_modules" / "ipfs-unixfs-importer").is_dir():
        pytest.skip(f"interop/node_modules is absent: run `{INSTALL}` to enable parity tests")
    return node


def run_node(script: str, *args: str) -> str:
    node = require_node()
    proc = subprocess.run(
        [node, str(INTEROP / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def helia_cids(profile: str, files: list[Path]) -> list[str]:
    return run_node("unixfs-add.mjs", profile, *map(str, files)).split()


def js_read_car(path: Path) -> Any:
    return json.loads(run_node("car-tool.mjs", "read", str(path)))
