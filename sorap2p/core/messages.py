"""Every message of the sorap2p round protocol, as frozen dataclasses.

The data flow (see protocols/messages.md): an aggregator opens a round (`RoundOpen`);
trainers train and announce encrypted updates (`UpdateAnnounce`); the aggregator publishes
the new model (`GlobalModel`) and its ranking of trainers (`Rankings`); validators check and
vote (`ValidationVote`); once k votes exist one of them posts a `QuorumProof` on chain;
anyone may raise a `Dispute`; validators sign a `VerdictVote` on an on-chain dispute and k
equal ones resolve it (slashing the offender when upheld). `SubnetRecord` is the signed,
versioned description of a subnet stored in the DHT.

Signed messages end with ``signer`` (the libp2p peer id, which embeds the Ed25519 key) and
``signature``. The signature covers the canonical encoding of the message with an empty
``signature`` field, under the context ``"sorap2p/<type name>"`` (see core/crypto.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from sorap2p.core.cid import Cid
from sorap2p.core.codec import encode, message, spec, struct, type_name
from sorap2p.core.crypto import SIGNATURE_BYTES, IdentityKey, verify
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId, Role, RoundId, SubnetId

MAX_RECIPIENTS: Final = 128
MAX_UPDATES_PER_ROUND: Final = 1024
_NO_SIG: Final = b""

_SIG = spec(max_len=SIGNATURE_BYTES)
_HASH32 = spec(size=32)
_MS = spec(max_value=(1 << 53))  # unix milliseconds; fits a float64 exactly


@struct
@dataclass(frozen=True, slots=True)
class Recipient:
    """A peer that may open the round's encrypted updates."""

    peer: PeerId
    role: Role
    x25519: bytes = field(metadata=spec(size=32))


@struct
@dataclass(frozen=True, slots=True)
class TrainingParams:
    """Local training parameters the aggregator asks trainers to use."""

    epochs: int = field(metadata=spec(min_value=1, max_value=1000))
    batch_size: int = field(metadata=spec(min_value=1, max_value=1 << 20))
    lr: float = field(metadata=spec(min_value=0.0, max_value=100.0))
    prox_mu: float = field(default=0.0, metadata=spec(min_value=0.0, max_value=100.0))
    momentum: float = field(default=0.0, metadata=spec(min_value=0.0, max_value=0.999))


@message("round_open", max_size=32 * 1024)
@dataclass(frozen=True, slots=True)
class RoundOpen:
    subnet: SubnetId
    round: RoundId
    global_model: Cid
    model: str = field(metadata=spec(max_len=128))
    opened_at: int = field(metadata=_MS)
    deadline: int = field(metadata=_MS)
    min_participants: int = field(metadata=spec(min_value=1, max_value=MAX_UPDATES_PER_ROUND))
    recipients: tuple[Recipient, ...] = field(metadata=spec(max_items=MAX_RECIPIENTS))
    strategy: str = field(metadata=spec(max_len=64))
    strategy_params: dict[str, float] = field(metadata=spec(max_items=32))
    training: TrainingParams
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)
    # the root dataset (a tensor DAG) of strategies that need the server's reference delta
    # (FLTrust, robust_fltrust); None for the others
    root_data: Cid | None = None

    def __post_init__(self) -> None:
        if self.deadline <= self.opened_at:
            raise RemoteProtocolError("round deadline must be after its opening time")
        peers = [r.peer for r in self.recipients]
        if len(set(peers)) != len(peers):
            raise RemoteProtocolError("duplicate round recipient")


@message("update_announce", max_size=2048)
@dataclass(frozen=True, slots=True)
class UpdateAnnounce:
    """A trainer's encrypted model update is stored and ready to fetch."""

    subnet: SubnetId
    round: RoundId
    update: Cid  # root of the encrypted update envelope (DAG-CBOR)
    base_model: Cid  # the global model it was trained from
    device_hash: bytes = field(metadata=_HASH32)  # sha256 of a salted device id
    num_samples: int = field(metadata=spec(min_value=1, max_value=1 << 40))
    update_size: int = field(metadata=spec(max_value=1 << 40))  # bytes of ciphertext
    timestamp: int = field(metadata=_MS)  # when training finished (unix ms)
    train_ms: int = field(metadata=spec(max_value=1 << 40))  # local training wall time
    encrypted_metrics: bytes = field(metadata=spec(max_len=256))  # loss/accuracy, AEAD
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)


@message("global_model", max_size=64 * 1024)
@dataclass(frozen=True, slots=True)
class GlobalModel:
    """The aggregate of a round: the new global model and what it was built from."""

    subnet: SubnetId
    round: RoundId
    model: Cid
    parent: Cid  # the global model the round started from
    strategy: str = field(metadata=spec(max_len=64))
    updates: tuple[Cid, ...] = field(metadata=spec(max_items=MAX_UPDATES_PER_ROUND))
    num_samples: int = field(metadata=spec(max_value=1 << 50))
    metadata: Cid  # DAG-CBOR round metadata document (rankings, per-update details)
    created_at: int = field(metadata=_MS)
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)

    def __post_init__(self) -> None:
        if list(self.updates) != sorted(set(self.updates)):
            raise RemoteProtocolError("global model updates must be sorted and unique")


@struct
@dataclass(frozen=True, slots=True)
class RankEntry:
    trainer: PeerId
    update: Cid
    score: int = field(metadata=spec(min_value=-(10**12), max_value=10**12))  # fixed point 1e6
    rank: int = field(metadata=spec(min_value=1, max_value=MAX_UPDATES_PER_ROUND))


@message("rankings", max_size=128 * 1024)
@dataclass(frozen=True, slots=True)
class Rankings:
    subnet: SubnetId
    round: RoundId
    model: Cid
    entries: tuple[RankEntry, ...] = field(metadata=spec(max_items=MAX_UPDATES_PER_ROUND))
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)

    def __post_init__(self) -> None:
        ranks = [e.rank for e in self.entries]
        if ranks != list(range(1, len(ranks) + 1)):
            raise RemoteProtocolError("rankings must list ranks 1..n in order")


@message("validation_vote", max_size=4096)
@dataclass(frozen=True, slots=True)
class ValidationVote:
    """A validator's verdict on a round, with its EIP-712 signature of the round record."""

    subnet: SubnetId
    round: RoundId
    model: Cid
    approve: bool
    record_digest: bytes = field(metadata=_HASH32)  # EIP-712 digest of the round record
    eth_address: bytes = field(metadata=spec(size=20))
    eth_signature: bytes = field(metadata=spec(max_len=65))  # 65 bytes when approving
    reason: str = field(metadata=spec(max_len=256))
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)

    def __post_init__(self) -> None:
        if self.approve and len(self.eth_signature) != 65:
            raise RemoteProtocolError("an approving vote carries a 65-byte EIP-712 signature")


@message("quorum_proof", max_size=16 * 1024)
@dataclass(frozen=True, slots=True)
class QuorumProof:
    """k validator signatures over one round record, as submitted on chain."""

    subnet: SubnetId
    round: RoundId
    record_digest: bytes = field(metadata=_HASH32)
    signatures: tuple[bytes, ...] = field(metadata=spec(max_items=MAX_RECIPIENTS))
    tx_hash: bytes = field(metadata=spec(max_len=32))  # empty until submitted
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)

    def __post_init__(self) -> None:
        if any(len(s) != 65 for s in self.signatures):
            raise RemoteProtocolError("quorum signatures must be 65 bytes each")


@message("dispute", max_size=4096)
@dataclass(frozen=True, slots=True)
class Dispute:
    """A challenge of a round's result (wrong aggregate, fake rankings, bad update...)."""

    subnet: SubnetId
    round: RoundId
    accused: PeerId
    reason: str = field(metadata=spec(max_len=64))
    evidence: Cid
    tx_hash: bytes = field(metadata=spec(max_len=32))
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)


MAX_DISPUTE_ID: Final = (1 << 63) - 1


@message("verdict_vote", max_size=4096)
@dataclass(frozen=True, slots=True)
class VerdictVote:
    """A validator's position on an open on-chain dispute: the RoundLedger `Verdict` it
    judges right, with its EIP-712 signature. Once k validators signed the same verdict, one
    of them submits `resolveDispute`; an upheld verdict slashes ``offender``."""

    subnet: SubnetId
    dispute_id: int = field(metadata=spec(min_value=1, max_value=MAX_DISPUTE_ID))
    round: RoundId
    validator_set_version: int = field(metadata=spec(min_value=1, max_value=(1 << 32) - 1))
    upheld: bool
    offender: bytes = field(metadata=spec(size=20))  # the accused member's chain address
    slash_amount: bytes = field(metadata=_HASH32)  # uint256, big-endian
    verdict_digest: bytes = field(metadata=_HASH32)  # EIP-712 digest of the verdict
    eth_address: bytes = field(metadata=spec(size=20))
    eth_signature: bytes = field(metadata=spec(size=65))
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)

    @property
    def amount(self) -> int:
        return int.from_bytes(self.slash_amount, "big")

    def __post_init__(self) -> None:
        if not self.upheld and any(self.slash_amount):
            raise RemoteProtocolError("a rejected verdict slashes nothing")


@message("subnet_record", max_size=8192)
@dataclass(frozen=True, slots=True)
class SubnetRecord:
    """The signed, versioned description of a subnet published in the DHT."""

    subnet: SubnetId
    version: int = field(metadata=spec(min_value=1))
    aggregator: PeerId
    validator_set_version: int
    validators: tuple[PeerId, ...] = field(metadata=spec(max_items=MAX_RECIPIENTS))
    round_length_ms: int = field(metadata=spec(min_value=1, max_value=1 << 40))
    model: str = field(metadata=spec(max_len=128))
    updated_at: int = field(metadata=_MS)
    signer: PeerId
    signature: bytes = field(default=_NO_SIG, metadata=_SIG)


class Signed(Protocol):
    @property
    def signer(self) -> PeerId: ...

    @property
    def signature(self) -> bytes: ...


S = TypeVar("S", bound=Any)


def signature_context(msg: object) -> str:
    return f"sorap2p/{type_name(msg)}"


def signing_bytes(msg: object) -> bytes:
    """The canonical encoding of ``msg`` with its signature field emptied."""
    return encode(dataclasses.replace(msg, signature=_NO_SIG))  # type: ignore[type-var]


def sign(identity: IdentityKey, msg: S) -> S:
    """Return ``msg`` with ``signer`` set to our peer id and a fresh signature."""
    if not hasattr(msg, "signature"):
        raise LocalProtocolError(f"{type(msg).__name__} is not a signed message")
    unsigned = dataclasses.replace(msg, signer=identity.peer_id, signature=_NO_SIG)
    sig = identity.sign(signature_context(unsigned), encode(unsigned))
    signed: S = dataclasses.replace(unsigned, signature=sig)
    return signed


def verify_signed(msg: Signed) -> None:
    """Raise `RemoteProtocolError` unless ``msg`` carries a valid signature of its signer."""
    if len(msg.signature) != SIGNATURE_BYTES:
        raise RemoteProtocolError(f"{type(msg).__name__} is not signed")
    verify(msg.signer.public_key, signature_context(msg), signing_bytes(msg), msg.signature)
