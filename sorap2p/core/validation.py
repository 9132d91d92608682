"""Gossip validation outcomes, as in libp2p GossipSub and Ethereum consensus clients.

* ``ACCEPT``: deliver and forward.
* ``REJECT``: the message is invalid; drop it and penalise the peer that forwarded it.
* ``IGNORE``: drop silently without penalty (duplicates, stale rounds, not for us).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Validation(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A validation outcome with a human-readable reason (for logs and metrics)."""

    result: Validation
    reason: str = ""

    @classmethod
    def accept(cls) -> Verdict:
        return cls(Validation.ACCEPT)

    @classmethod
    def reject(cls, reason: str) -> Verdict:
        return cls(Validation.REJECT, reason)

    @classmethod
    def ignore(cls, reason: str) -> Verdict:
        return cls(Validation.IGNORE, reason)
