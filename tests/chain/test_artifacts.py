"""The committed artifacts are what a fresh build of contracts/src produces, byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sorap2p.chain.artifacts import CONTRACTS, decode_revert, load_artifact

ROOT = Path(__file__).resolve().parents[2]


def test_artifacts_load() -> None:
    for name in CONTRACTS:
        artifact = load_artifact(name)
        assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 1000 and artifact.abi


def test_custom_errors_decode() -> None:
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak

    data = keccak(b"TooFewSignatures(uint256,uint256)")[:4] + encode(["uint256", "uint256"], [3, 5])
    assert decode_revert(data) == ("TooFewSignatures", (3, 5))
    assert decode_revert(b"\x01\x02\x03\x04")[0] == "Unknown(0x01020304)"


@pytest.mark.slow
def test_rebuild_is_byte_identical() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "contracts" / "node_modules" / "solc").is_dir():
        pytest.skip("solc not installed: run `npm ci --ignore-scripts --prefix contracts`")
    done = subprocess.run(
        [node, str(ROOT / "contracts" / "build.js"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
