"""Events fed into the round machines and actions they return (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from sorap2p.core.cid import Cid
from sorap2p.core.ids import PeerId, RoundId
from sorap2p.core.messages import (
    GlobalModel,
    Rankings,
    Recipient,
    RoundOpen,
    UpdateAnnounce,
    ValidationVote,
)

# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer armed by `SetTimer` expired."""

    name: str
    round: RoundId


@dataclass(frozen=True, slots=True)
class OpenRound:
    """The aggregator's loop decides to open ``round`` from ``global_model``."""

    round: RoundId
    global_model: Cid
    recipients: tuple[Recipient, ...]


@dataclass(frozen=True, slots=True)
class RoundOpened:
    """A verified RoundOpen arrived (gossip)."""

    message: RoundOpen


@dataclass(frozen=True, slots=True)
class AnnounceReceived:
    """A verified UpdateAnnounce arrived; ``received_at`` is our clock on arrival."""

    message: UpdateAnnounce
    received_at: int


@dataclass(frozen=True, slots=True)
class UpdateChecked:
    """The node fetched, decrypted and checked an update (shapes, finiteness, size)."""

    update: Cid
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Aggregated:
    """The node aggregated the round: unsigned GlobalModel and Rankings to publish."""

    model: GlobalModel
    rankings: Rankings


@dataclass(frozen=True, slots=True)
class WorkFailed:
    """Aggregation, training or checking failed locally."""

    reason: str


@dataclass(frozen=True, slots=True)
class TrainingDone:
    """Local training finished and the encrypted update is stored: announce it."""

    announce: UpdateAnnounce


@dataclass(frozen=True, slots=True)
class ModelPublished:
    message: GlobalModel


@dataclass(frozen=True, slots=True)
class RankingsPublished:
    message: Rankings


@dataclass(frozen=True, slots=True)
class CheckDone:
    """A validator's verdict on the round (after recomputation and scoring).

    ``record_digest`` is the EIP-712 digest of the round record the validator would sign;
    ``accused`` names the peer to dispute when ``approve`` is false.
    """

    approve: bool
    record_digest: bytes
    reason: str = ""
    accused: PeerId | None = None


@dataclass(frozen=True, slots=True)
class VoteSeen:
    """A vote whose Ed25519 and EIP-712 signatures were verified (ours included)."""

    vote: ValidationVote


@dataclass(frozen=True, slots=True)
class ProofObserved:
    """The chain recorded the round (with enough confirmations)."""

    round: RoundId
    tx_hash: bytes


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Publish:
    """Sign and publish on the message's topic."""

    message: object


@dataclass(frozen=True, slots=True)
class SetTimer:
    name: str
    round: RoundId
    at: int


@dataclass(frozen=True, slots=True)
class Persist:
    """Save the machine's snapshot (it must survive a restart)."""


@dataclass(frozen=True, slots=True)
class FetchUpdate:
    announce: UpdateAnnounce


@dataclass(frozen=True, slots=True)
class Aggregate:
    round_open: RoundOpen
    updates: tuple[UpdateAnnounce, ...]  # sorted by update CID


@dataclass(frozen=True, slots=True)
class Train:
    round_open: RoundOpen


@dataclass(frozen=True, slots=True)
class CancelWork:
    round: RoundId


@dataclass(frozen=True, slots=True)
class CheckRound:
    round_open: RoundOpen
    model: GlobalModel
    rankings: Rankings
    announces: tuple[AnnounceReceived, ...]  # every announce seen, sorted by update CID


@dataclass(frozen=True, slots=True)
class CastVote:
    """Build, sign (Ed25519 + EIP-712 when approving) and publish a ValidationVote."""

    round: RoundId
    model: Cid
    approve: bool
    record_digest: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class SubmitProof:
    """Post ``submitRound`` with these EIP-712 signatures (k of them; the node sorts them
    by ascending signer address, as the contract requires)."""

    round: RoundId
    record_digest: bytes
    signatures: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RaiseDispute:
    round: RoundId
    accused: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class RoundFinished:
    """A round ended: ``ok`` when proven on chain (or, for trainers, announced)."""

    round: RoundId
    ok: bool
    reason: str = ""
