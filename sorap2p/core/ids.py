"""Identifiers: libp2p peer ids (computed without libp2p), subnet ids, round ids, roles.

A libp2p Ed25519 peer id is the *identity* multihash of the protobuf-encoded public key
(``08 01 12 20 || key``), printed in base58btc (``12D3KooW...``). Computing it here keeps
the core free of libp2p; `sorap2p.net` checks that libp2p agrees (a test pins it).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError

_ED25519_PB_PREFIX: Final = b"\x08\x01\x12\x20"
_IDENTITY_MH_PREFIX: Final = b"\x00\x24"
PEER_ID_BYTES: Final = 38
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        i = _B58_INDEX.get(c)
        if i is None:
            raise RemoteProtocolError(f"invalid base58 character {c!r}")
        n = n * 58 + i
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * pad + body


@dataclass(frozen=True, slots=True, order=True)
class PeerId:
    """A libp2p peer id for an Ed25519 key (the only key type sorap2p accepts)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PEER_ID_BYTES or not self.raw.startswith(
            _IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX
        ):
            raise RemoteProtocolError("peer id must be an identity-multihash Ed25519 key")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> PeerId:
        if len(public_key) != 32:
            raise LocalProtocolError("Ed25519 public key must be 32 bytes")
        return cls(_IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX + public_key)

    @classmethod
    def parse(cls, text: str) -> PeerId:
        if not isinstance(text, str) or not 40 <= len(text) <= 60:
            raise RemoteProtocolError("peer id text has the wrong length")
        return cls(b58decode(text))

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key embedded in the id."""
        return self.raw[6:]

    @property
    def hashed(self) -> bytes:
        """sha256 of the binary id: the 'identity hash' put on chain."""
        return hashlib.sha256(self.raw).digest()

    def __str__(self) -> str:
        return b58encode(self.raw)

    def __repr__(self) -> str:
        return f"PeerId({self})"


_SUBNET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclass(frozen=True, slots=True, order=True)
class SubnetId:
    """A subnet name: 1-32 chars of ``[a-z0-9-]``, starting with a letter or digit."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SUBNET_RE.match(self.name):
            raise RemoteProtocolError(
                f"invalid subnet id {self.name!r}: expected 1-32 chars of [a-z0-9-]"
            )

    @property
    def key(self) -> bytes:
        """The 32-byte key under which the subnet is announced and registered."""
        return hashlib.sha256(b"sorap2p/subnet/" + self.name.encode()).digest()

    def __str__(self) -> str:
        return self.name


MAX_ROUND: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True, order=True)
class RoundId:
    """A round number within a subnet (0 is the genesis model)."""

    number: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.number, int)
            or isinstance(self.number, bool)
            or not 0 <= self.number <= MAX_ROUND
        ):
            raise RemoteProtocolError(f"invalid round id {self.number!r}")

    def next(self) -> RoundId:
        return RoundId(self.number + 1)

    def __str__(self) -> str:
        return str(self.number)


class Role(enum.StrEnum):
    TRAINER = "trainer"
    AGGREGATOR = "aggregator"
    VALIDATOR = "validator"
    BOOTSTRAP = "bootstrap"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text)
        except ValueError:
            raise RemoteProtocolError(
                f"unknown role {text!r}: expected one of {', '.join(r.value for r in cls)}"
            ) from None

    @property
    def code(self) -> int:
        """The small integer the contracts use for the role."""
        return {"trainer": 1, "aggregator": 2, "validator": 3, "bootstrap": 4}[self.value]
