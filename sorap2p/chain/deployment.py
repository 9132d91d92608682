"""The deployment file nodes read: chain id, contract addresses, deployment block."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils.address import is_address, to_checksum_address

from sorap2p.core.errors import ConfigError

FORMAT = "sorap2p-deployment/1"


@dataclass(frozen=True, slots=True)
class Deployment:
    chain_id: int
    registry: str
    ledger: str
    block: int
    token: str | None = None  # a TestToken deployed alongside (local chains only)

    def __post_init__(self) -> None:
        for name in ("registry", "ledger", "token"):
            value = getattr(self, name)
            if value is not None and not is_address(value):
                raise ConfigError(f"deployment {name} is not an address: {value!r}")

    def to_json(self) -> str:
        body = {"format": FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"deployment file is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"deployment file format must be {FORMAT!r}")
        try:
            token = data.get("token")
            return cls(
                chain_id=int(data["chain_id"]),
                registry=to_checksum_address(data["registry"]),
                ledger=to_checksum_address(data["ledger"]),
                block=int(data["block"]),
                token=to_checksum_address(token) if token else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"deployment file: bad or missing field: {exc}") from None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no deployment file at {path}: run `sorap2p chain deploy`") from None
