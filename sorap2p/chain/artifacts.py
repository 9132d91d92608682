"""The compiled contracts shipped inside the package (written by ``contracts/build.js``)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from sorap2p.core.errors import ConfigError

CONTRACTS: Final = ("SubnetRegistry", "RoundLedger", "TestToken")


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@functools.cache
def load_artifact(name: str) -> Artifact:
    if name not in CONTRACTS:
        raise ConfigError(f"unknown contract {name!r}: expected one of {', '.join(CONTRACTS)}")
    path = resources.files("sorap2p.chain").joinpath("artifacts", f"{name}.json")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"missing artifact {name}.json: run `node contracts/build.js`") from None
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"])


def _type_of(param: dict[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_type_of(c) for c in param["components"]) + ")" + t[5:]
    return t


@functools.cache
def _error_table() -> dict[bytes, tuple[str, tuple[str, ...]]]:
    table: dict[bytes, tuple[str, tuple[str, ...]]] = {}
    for name in CONTRACTS:
        for item in load_artifact(name).abi:
            if item.get("type") == "error":
                types = tuple(_type_of(p) for p in item["inputs"])
                selector = keccak(f"{item['name']}({','.join(types)})".encode())[:4]
                table[selector] = (item["name"], types)
    return table


def decode_revert(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """Name and arguments of a revert payload (custom error, ``Error(string)`` or ``Panic``)."""
    if len(data) < 4:
        return ("Reverted", ())
    selector, body = data[:4], data[4:]
    if selector == keccak(b"Error(string)")[:4]:
        return ("Error", tuple(abi_decode(["string"], body)))
    if selector == keccak(b"Panic(uint256)")[:4]:
        return ("Panic", tuple(abi_decode(["uint256"], body)))
    known = _error_table().get(selector)
    if known is None:
        return (f"Unknown(0x{selector.hex()})", ())
    name, types = known
    try:
        return (name, tuple(abi_decode(list(types), body)))
    except Exception:
        return (name, ())
