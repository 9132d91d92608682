"""GossipSub topic names: ``/sorap2p/1/<subnet>/<kind>``.

The grammar is fixed (as in Ethereum consensus clients): a known protocol version, a valid
subnet id and one of the known kinds. Anything else is an error, never an "unknown" topic.
Each kind carries exactly one message type.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import SubnetId
from sorap2p.core.messages import (
    Dispute,
    GlobalModel,
    QuorumProof,
    Rankings,
    RoundOpen,
    UpdateAnnounce,
    ValidationVote,
    VerdictVote,
)

TOPIC_PREFIX: Final = "/sorap2p"
TOPIC_VERSION: Final = "1"
MAX_TOPIC_LEN: Final = 128


class TopicKind(enum.StrEnum):
    ROUNDS = "rounds"
    UPDATES = "updates"
    MODELS = "models"
    RANKINGS = "rankings"
    VOTES = "votes"
    PROOFS = "proofs"
    DISPUTES = "disputes"
    VERDICTS = "verdicts"

    @property
    def message_type(self) -> type:
        return _MESSAGE_OF_KIND[self]


_MESSAGE_OF_KIND: Final[dict[TopicKind, type]] = {
    TopicKind.ROUNDS: RoundOpen,
    TopicKind.UPDATES: UpdateAnnounce,
    TopicKind.MODELS: GlobalModel,
    TopicKind.RANKINGS: Rankings,
    TopicKind.VOTES: ValidationVote,
    TopicKind.PROOFS: QuorumProof,
    TopicKind.DISPUTES: Dispute,
    TopicKind.VERDICTS: VerdictVote,
}


@dataclass(frozen=True, slots=True, order=True)
class Topic:
    subnet: SubnetId
    kind: TopicKind

    def __str__(self) -> str:
        return f"{TOPIC_PREFIX}/{TOPIC_VERSION}/{self.subnet.name}/{self.kind.value}"

    @classmethod
    def parse(cls, text: str) -> Topic:
        if not isinstance(text, str) or len(text) > MAX_TOPIC_LEN:
            raise RemoteProtocolError("topic must be a string of at most 128 characters")
        parts = text.split("/")
        if len(parts) != 5 or parts[0] != "" or f"/{parts[1]}" != TOPIC_PREFIX:
            raise RemoteProtocolError(f"not a sorap2p topic: {text!r}")
        if parts[2] != TOPIC_VERSION:
            raise RemoteProtocolError(f"unsupported topic version {parts[2]!r} in {text!r}")
        subnet = SubnetId(parts[3])
        try:
            kind = TopicKind(parts[4])
        except ValueError:
            raise RemoteProtocolError(f"unknown topic kind {parts[4]!r} in {text!r}") from None
        return cls(subnet, kind)


_KIND_OF_MESSAGE: Final[dict[type, TopicKind]] = {t: k for k, t in _MESSAGE_OF_KIND.items()}


def kind_of(msg: object) -> TopicKind:
    """The topic kind that carries ``msg`` (LocalProtocolError for other types)."""
    try:
        return _KIND_OF_MESSAGE[type(msg)]
    except KeyError:
        raise LocalProtocolError(f"{type(msg).__name__} is not carried by any topic") from None


def topics_for(subnet: SubnetId) -> tuple[Topic, ...]:
    return tuple(Topic(subnet, kind) for kind in TopicKind)
