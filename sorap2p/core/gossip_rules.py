"""One gossip validator per message kind (as Prysm/Lighthouse do), pure and synchronous.

Each validator takes the GossipSub *origin* (the libp2p author of the message) and the
payload, and returns a `Verdict`: REJECT for anything a correct peer never sends (the
forwarder is penalised), IGNORE for what is merely stale, duplicate or not for us.

What a node knows about its subnet (who is staked in which role, the aggregator, the
validators' chain addresses, the currently open round) is a `SubnetView` the node refreshes
from the chain registry and from accepted RoundOpen messages. EIP-712 signature recovery is
injected (`recover`), so this module stays free of chain code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sorap2p.core import messages as m
from sorap2p.core.codec import decode
from sorap2p.core.crypto import x25519_public_from_peer
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.core.ids import PeerId, Role, RoundId, SubnetId
from sorap2p.core.topics import TopicKind
from sorap2p.core.validation import Verdict

SEEN_CAPACITY: Final = 65_536
CLOCK_SKEW_MS: Final = 30_000
REANNOUNCE_WINDOW_MS: Final = 4_000
# An announce this long after its round's deadline is a replay: no honest path delivers one
# so late (a partition's TCP retransmissions give up after ~15 min: Linux tcp_retries2).
# Later than the deadline but sooner is IGNOREd: an honest peer may forward it late.
STALE_REPLAY_MS: Final = 20 * 60_000
ROUND_HISTORY: Final = 1024  # rounds whose deadlines are kept for the replay check

# (digest, 65-byte signature) -> recovered 20-byte address, or None when invalid
Recover = Callable[[bytes, bytes], bytes | None]


@dataclass(frozen=True, slots=True)
class SubnetView:
    """A node's view of its subnet's membership. ``members`` empty means open membership
    (no chain configured: any peer may take any role, useful for local experiments)."""

    subnet: SubnetId
    aggregator: PeerId | None = None
    members: Mapping[PeerId, Role] = field(default_factory=dict)
    validator_addresses: Mapping[bytes, PeerId] = field(default_factory=dict)
    validators: tuple[PeerId, ...] = ()  # the current validator set (joined members)
    validator_set_size: int = 0  # how many addresses the chain's validator set lists
    validator_set_version: int = 0
    quorum: int = 1

    def has_role(self, peer: PeerId, role: Role) -> bool:
        if not self.members:
            return True
        return self.members.get(peer) is role


class _Seen:
    """A bounded map of recently seen keys to when they were seen (oldest evicted first)."""

    def __init__(self, capacity: int = SEEN_CAPACITY) -> None:
        self._keys: OrderedDict[Any, int] = OrderedDict()
        self._capacity = capacity

    def add(self, key: Any, now: int = 0, window: int | None = None) -> bool:
        """Record ``key``; False if it was seen before (within ``window`` ms, if given)."""
        seen = self._keys.get(key)
        if seen is not None and (window is None or now - seen < window):
            return False
        self._keys[key] = now
        self._keys.move_to_end(key)
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return True


class GossipRules:
    """The validators of one subnet. ``view`` and ``now`` (unix ms) are injected."""

    def __init__(
        self,
        view: Callable[[], SubnetView],
        now: Callable[[], int],
        recover: Recover | None = None,
    ) -> None:
        self._view = view
        self._now = now
        self._recover = recover
        self._seen = _Seen()
        self.open_rounds: dict[RoundId, m.RoundOpen] = {}
        self.deadlines: OrderedDict[RoundId, int] = OrderedDict()  # the last ROUND_HISTORY
        self.announced: dict[tuple[RoundId, PeerId], Any] = {}
        self.latest_round: RoundId | None = None

    def for_kind(self, kind: TopicKind) -> Callable[[PeerId, bytes], Verdict]:
        table: dict[TopicKind, Callable[[PeerId, bytes], Verdict]] = {
            TopicKind.ROUNDS: self.round_open,
            TopicKind.UPDATES: self.update_announce,
            TopicKind.MODELS: self.global_model,
            TopicKind.RANKINGS: self.rankings,
            TopicKind.VOTES: self.validation_vote,
            TopicKind.PROOFS: self.quorum_proof,
            TopicKind.DISPUTES: self.dispute,
            TopicKind.VERDICTS: self.verdict_vote,
        }
        return table[kind]

    def remember_round(self, msg: m.RoundOpen) -> None:
        """Register a round opened before a restart (its RoundOpen will not be gossiped again)."""
        self.open_rounds[msg.round] = msg
        self._record_deadline(msg)
        if self.latest_round is None or msg.round > self.latest_round:
            self.latest_round = msg.round

    def _record_deadline(self, msg: m.RoundOpen) -> None:
        self.deadlines[msg.round] = msg.deadline
        self.deadlines.move_to_end(msg.round)
        while len(self.deadlines) > ROUND_HISTORY:
            self.deadlines.popitem(last=False)

    # -- common checks ---------------------------------------------------------------------
    def _common(self, origin: PeerId, data: bytes, cls: type[Any]) -> tuple[Any, Verdict | None]:
        try:
            msg = decode(data, cls)
            m.verify_signed(msg)
        except RemoteProtocolError as exc:
            return None, Verdict.reject(str(exc))
        view = self._view()
        if msg.subnet != view.subnet:
            return None, Verdict.reject(f"message for subnet {msg.subnet}, topic is {view.subnet}")
        if msg.signer != origin:
            return None, Verdict.reject("signer is not the gossip author")
        return msg, None

    def _older_than_history(self, round: RoundId) -> bool:
        """``round`` precedes all of a full history of deadlines (a round we joined after
        is not judged: we never knew its deadline)."""
        return len(self.deadlines) >= ROUND_HISTORY and round < next(iter(self.deadlines))

    def _once(self, key: Any) -> Verdict | None:
        return None if self._seen.add(key) else Verdict.ignore("duplicate")

    # -- one validator per kind ------------------------------------------------------------
    def round_open(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.RoundOpen)
        if bad:
            return bad
        view = self._view()
        if not view.has_role(msg.signer, Role.AGGREGATOR) or (
            view.aggregator is not None and msg.signer != view.aggregator
        ):
            return Verdict.reject("RoundOpen not signed by the subnet's aggregator")
        for r in msg.recipients:
            try:
                matches = r.x25519 == x25519_public_from_peer(r.peer)
            except RemoteProtocolError:  # not a point on the curve: no valid peer's key
                matches = False
            if not matches:
                return Verdict.reject("recipient X25519 key does not match its peer id")
        if msg.deadline < self._now() - CLOCK_SKEW_MS:
            return Verdict.ignore("round already closed")
        if self.latest_round is not None and msg.round < self.latest_round:
            return Verdict.ignore("older round")
        if dup := self._once(("round_open", msg.round, msg.opened_at)):
            return dup
        self.open_rounds[msg.round] = msg
        self._record_deadline(msg)
        self.latest_round = msg.round
        for old in [r for r in self.open_rounds if r.number < msg.round.number - 2]:
            del self.open_rounds[old]
        for key in [k for k in self.announced if k[0].number < msg.round.number - 2]:
            del self.announced[key]
        return Verdict.accept()

    def update_announce(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.UpdateAnnounce)
        if bad:
            return bad
        if not self._view().has_role(msg.signer, Role.TRAINER):
            return Verdict.reject("announce signer is not a staked trainer")
        # trainers announce (and re-announce) only until the deadline; a late copy may be
        # an honest forward delayed by a partition (IGNORE), a very late one is a replay
        deadline = self.deadlines.get(msg.round)
        if deadline is not None and self._now() > deadline + STALE_REPLAY_MS:
            return Verdict.reject("announce long after its round's deadline (stale replay)")
        if deadline is None and self._older_than_history(msg.round):
            return Verdict.reject("announce for a round older than any on record (stale replay)")
        ro = self.open_rounds.get(msg.round)
        if ro is None:
            return Verdict.ignore("round not open")
        if self._now() > ro.deadline + CLOCK_SKEW_MS:
            return Verdict.ignore("announce after the round's deadline")
        if msg.base_model != ro.global_model:
            return Verdict.reject("update is not based on the round's global model")
        if not ro.opened_at <= msg.timestamp <= ro.deadline + CLOCK_SKEW_MS:
            return Verdict.reject("timestamp outside the round window")
        if msg.train_ms > msg.timestamp - ro.opened_at + CLOCK_SKEW_MS:
            return Verdict.reject("training time longer than the round so far")
        if msg.timestamp > self._now() + CLOCK_SKEW_MS:
            return Verdict.reject("timestamp in the future")
        # one update per trainer and round; the same one may be re-announced (a restarted
        # aggregator missed it), at most once per REANNOUNCE_WINDOW_MS
        first = self.announced.setdefault((msg.round, msg.signer), msg.update)
        if first != msg.update:
            return Verdict.ignore("second update of a trainer in one round")
        key = ("update", msg.round, msg.signer)
        if not self._seen.add(key, self._now(), REANNOUNCE_WINDOW_MS):
            return Verdict.ignore("duplicate")
        return Verdict.accept()

    def global_model(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.GlobalModel)
        if bad:
            return bad
        if bad := self._from_aggregator(msg):
            return bad
        return self._once(("model", msg.round, msg.model)) or Verdict.accept()

    def rankings(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.Rankings)
        if bad:
            return bad
        if bad := self._from_aggregator(msg):
            return bad
        return self._once(("rankings", msg.round, msg.model)) or Verdict.accept()

    def _from_aggregator(self, msg: Any) -> Verdict | None:
        view = self._view()
        if not view.has_role(msg.signer, Role.AGGREGATOR) or (
            view.aggregator is not None and msg.signer != view.aggregator
        ):
            return Verdict.reject(f"{type(msg).__name__} not signed by the subnet's aggregator")
        ro = self.open_rounds.get(msg.round)
        if ro is None:
            return Verdict.ignore("unknown round")
        if msg.signer != ro.signer:
            return Verdict.reject("not signed by the aggregator that opened the round")
        return None

    def _validator_signature(self, msg: Any, what: str, digest: bytes | None) -> Verdict | None:
        """A staked validator, its registered chain address, and (when ``digest`` is given)
        an EIP-712 signature by that address over ``digest``."""
        view = self._view()
        if not view.has_role(msg.signer, Role.VALIDATOR):
            return Verdict.reject(f"{what} signer is not a staked validator")
        if view.validator_addresses and view.validator_addresses.get(msg.eth_address) != msg.signer:
            return Verdict.reject(f"{what} address is not this validator's registered address")
        if digest is None or self._recover is None:
            return None
        if self._recover(digest, msg.eth_signature) != msg.eth_address:
            return Verdict.reject(f"EIP-712 signature does not recover the {what}'s address")
        return None

    def validation_vote(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.ValidationVote)
        if bad:
            return bad
        digest = msg.record_digest if msg.approve else None  # a refusal carries no signature
        if bad := self._validator_signature(msg, "vote", digest):
            return bad
        if self.latest_round is not None and msg.round.number < self.latest_round.number - 2:
            return Verdict.ignore("stale vote")
        return self._once(("vote", msg.round, msg.signer)) or Verdict.accept()

    def quorum_proof(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.QuorumProof)
        if bad:
            return bad
        if not self._view().has_role(msg.signer, Role.VALIDATOR):
            return Verdict.reject("proof signer is not a staked validator")
        return self._once(("proof", msg.round, msg.record_digest)) or Verdict.accept()

    def dispute(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.Dispute)
        if bad:
            return bad
        view = self._view()
        if view.members and msg.signer not in view.members:
            return Verdict.reject("dispute signer is not staked in the subnet")
        return self._once(("dispute", msg.round, msg.signer, msg.accused)) or Verdict.accept()

    def verdict_vote(self, origin: PeerId, data: bytes) -> Verdict:
        msg, bad = self._common(origin, data, m.VerdictVote)
        if bad:
            return bad
        if bad := self._validator_signature(msg, "verdict", msg.verdict_digest):
            return bad
        # one verdict per validator and dispute (a validator does not change its mind)
        return self._once(("verdict", msg.dispute_id, msg.signer)) or Verdict.accept()
