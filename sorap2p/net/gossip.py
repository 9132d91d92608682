"""GossipSub for sorap2p: strict signing, one sync validator per kind, real penalties.

Mechanism (the rules themselves live in the core; see protocols/gossip.md):

* Topics are `sorap2p.core.topics.Topic` values (``/sorap2p/1/<subnet>/<kind>``).
* A `ValidatorRegistry` maps each `TopicKind` to one **synchronous** validator
  ``(origin: PeerId, data: bytes) -> Validation | Verdict``. ``origin`` is the signed
  author of the message (strict signing has already checked it), not the forwarder.
* py-libp2p validators return only a bool (FIELD-NOTES pitfall 5). We subclass its
  `Pubsub`: ``ACCEPT`` -> ``True``; ``REJECT`` -> ``False`` (libp2p counts an invalid
  message against the *forwarder*: P4 of the peer score); ``IGNORE`` raises a private
  exception that skips delivery, forwarding and scoring, and marks the message as seen.
* Before libp2p looks at a message we drop, and penalise the forwarder for, messages
  with a bad or missing signature (libp2p drops those without penalty), more than one
  topic, or a payload over ``GossipConfig.max_payload``.
* Publisher sequence numbers start at ``time_ns()`` (pitfall 6) so a restarted
  publisher is heard; heartbeat 1 s, publish rate limit and score thresholds set
  explicitly (pitfalls 4 and 8); payload cap far under the 1 MiB outbound limit, per-peer
  outbound queues of 1024 RPCs instead of 32, and our own bounded delivery queues with
  drop counters (pitfall 7).
* Scoring: a forwarder whose score is under ``publish_threshold`` has its messages
  dropped unread (counted in ``GossipStats.score_gated``); a mesh peer with a negative
  score is pruned at the next heartbeat, with a backoff (``pruned_for_score``; py-libp2p
  itself prunes by score only when a mesh is over ``degree_high``).
* Local publishes are validated once by `Gossip.publish` (so a duplicate check in a
  validator does not see our own message twice) and are trusted by the libp2p hook.
* Close ordering (pitfall 3): `open_gossip` closes the host before it leaves the pubsub
  service context. Leaving `open_gossip` therefore closes the host too.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.core.validation import Validation, Verdict
from sorap2p.net.host import Host, from_libp2p_id, to_libp2p_id

_log = logging.getLogger(__name__)

Validator = Callable[[PeerId, bytes], Validation | Verdict]
MESHSUB_V11: Final = "/meshsub/1.1.0"
MAX_OUTBOUND_RPC: Final = 1 << 20  # py-libp2p drops larger outbound frames silently


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """GossipSub parameters (see protocols/gossip.md for the reasoning)."""

    heartbeat_interval: float = 1.0
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    max_payload: int = 64 * 1024
    seen_ttl: int = 120
    delivery_buffer: int = 256
    outbound_queue: int = 1024  # RPCs queued per peer before drops (py-libp2p: 32)
    max_publish_rate: float = 50.0  # per topic and forwarder, per second
    protocols: tuple[str, ...] = (MESHSUB_V11,)
    invalid_message_weight: float = 10.0
    invalid_message_cap: float = 1000.0
    invalid_message_decay: float = 0.99
    gossip_threshold: float = -10.0
    publish_threshold: float = -50.0
    graylist_threshold: float = -80.0
    accept_px_threshold: float = 0.0

    def validate(self) -> None:
        if not 0 < self.heartbeat_interval <= 60:
            raise LocalProtocolError("heartbeat_interval must be in (0, 60] seconds")
        if not 0 < self.degree_low <= self.degree <= self.degree_high:
            raise LocalProtocolError("need 0 < degree_low <= degree <= degree_high")
        if not 0 < self.max_payload <= MAX_OUTBOUND_RPC // 2:
            raise LocalProtocolError("max_payload must be in (0, 512 KiB]")
        if self.delivery_buffer < 1 or self.max_publish_rate <= 0 or self.outbound_queue < 1:
            raise LocalProtocolError("delivery_buffer and max_publish_rate must be positive")
        if self.invalid_message_weight <= 0 or self.invalid_message_cap <= 0:
            raise LocalProtocolError("the invalid-message penalty needs weight > 0 and cap > 0")
        if not (self.graylist_threshold < self.publish_threshold < self.gossip_threshold <= 0):
            raise LocalProtocolError("need graylist < publish < gossip <= 0 thresholds")
        if not self.protocols:
            raise LocalProtocolError("at least one meshsub protocol id is needed")


class ValidatorRegistry:
    """One synchronous validator per topic kind (a second registration is a bug)."""

    __slots__ = ("_by_kind",)

    def __init__(self, validators: dict[TopicKind, Validator] | None = None) -> None:
        self._by_kind: dict[TopicKind, Validator] = {}
        for kind, v in (validators or {}).items():
            self.register(kind, v)

    def register(self, kind: TopicKind, validator: Validator) -> None:
        if kind in self._by_kind:
            raise LocalProtocolError(f"a validator for {kind.value!r} is already registered")
        self._by_kind[kind] = validator

    def get(self, kind: TopicKind) -> Validator:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise LocalProtocolError(f"no validator registered for kind {kind.value!r}") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A validated message delivered to a subscriber."""

    topic: Topic
    origin: PeerId
    data: bytes
    seqno: int
    received_at: float


@dataclass(slots=True)
class GossipStats:
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    bad_signature: int = 0
    oversized: int = 0
    malformed: int = 0
    delivered: int = 0
    dropped_full: int = 0
    duplicates: int = 0
    published: int = 0
    score_gated: int = 0  # dropped unread: the forwarder's score is under publish_threshold
    pruned_for_score: int = 0  # mesh links dropped because the peer's score went negative
    by_reason: dict[str, int] = field(default_factory=dict)

    def count_reason(self, reason: str) -> None:
        if reason:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1


class _IgnoredError(Exception):
    """Raised by our libp2p validator hook to drop a message without penalty."""


def _verdict(result: Validation | Verdict) -> Verdict:
    if isinstance(result, Verdict):
        return result
    if isinstance(result, Validation):
        return Verdict(result)
    raise LocalProtocolError(f"validator returned {result!r}, expected Validation or Verdict")


@functools.cache
def _pubsub_class() -> type[Any]:
    """Our `Pubsub` subclass (built on first use so importing this module stays cheap)."""
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.pubsub.validators import signature_validator

    class SoraPubsub(Pubsub):
        sora: Gossip

        def _sora_penalise(self, forwarder: Any, msg: Any, why: str) -> None:
            stats = self.sora.stats
            stats.rejected += 1
            stats.count_reason(why)
            scorer = getattr(self.router, "scorer", None)
            if scorer is not None:
                for topic in msg.topicIDs or ["?"]:
                    scorer.on_invalid_message(forwarder, topic)
            _log.info("rejected gossip from %s: %s", forwarder, why)

        async def push_msg(self, msg_forwarder: Any, msg: Any) -> None:
            local = msg_forwarder == self.my_id
            if not local:
                if len(msg.topicIDs) != 1:
                    self.sora.stats.malformed += 1
                    self._sora_penalise(msg_forwarder, msg, "topic count")
                    return
                if len(msg.data) > self.sora.config.max_payload:
                    self.sora.stats.oversized += 1
                    self._sora_penalise(msg_forwarder, msg, "oversized")
                    return
                scorer = getattr(self.router, "scorer", None)
                if scorer is not None and not scorer.allow_publish(
                    msg_forwarder, list(msg.topicIDs)
                ):
                    # graylisted or under the publish threshold: not validated, not
                    # delivered, not forwarded (libp2p drops it too; we count it)
                    self.sora.stats.score_gated += 1
                    return
                if self._is_msg_seen(msg):
                    self.sora.stats.duplicates += 1
                else:
                    try:
                        ok = bool(signature_validator(msg))
                    except Exception:
                        ok = False
                    if not ok:
                        self.sora.stats.bad_signature += 1
                        self._sora_penalise(msg_forwarder, msg, "bad signature")
                        return
            try:
                await super().push_msg(msg_forwarder, msg)
            except _IgnoredError:
                self._mark_msg_seen(msg)

        async def _handle_new_peer(self, peer_id: Any) -> None:
            await super()._handle_new_peer(peer_id)
            queue = self.peer_queues.get(peer_id)
            inner = getattr(queue, "_queue", None)
            if inner is not None:  # py-libp2p drops RPCs silently beyond 32 queued
                inner.max_size = self.sora.config.outbound_queue

        def notify_subscriptions(self, publish_message: Any) -> None:
            self.sora._deliver(publish_message)

        def _sora_seqno_from(self, start: int) -> None:
            self.counter = start

    return SoraPubsub


@functools.cache
def _router_class() -> type[Any]:
    """Our `GossipSub` subclass: peers with a negative score leave the mesh.

    py-libp2p 0.8.1 prunes by score only when a mesh is over ``degree_high``; the
    GossipSub v1.1 rule (and go-libp2p's) is to prune every mesh peer whose score is
    negative at each heartbeat, with a backoff so it is not grafted back at once.
    """
    from libp2p.pubsub.gossipsub import GossipSub

    class SoraGossipSub(GossipSub):
        sora: Gossip

        def mesh_heartbeat(self) -> tuple[Any, Any]:
            to_graft, to_prune = super().mesh_heartbeat()
            scorer = self.scorer
            if scorer is None:
                return to_graft, to_prune
            for topic, peers in self.mesh.items():
                for peer in [p for p in peers if scorer.score(p, [topic]) < 0]:
                    peers.discard(peer)
                    scorer.on_leave_mesh(peer, topic)
                    self._add_back_off(peer, topic, False)
                    if topic in to_graft.get(peer, ()):
                        to_graft[peer].remove(topic)
                    if topic not in to_prune[peer]:
                        to_prune[peer].append(topic)
                    self.sora.stats.pruned_for_score += 1
                    _log.info("pruned %s from the %s mesh: negative score", peer, topic)
            return to_graft, to_prune

    return SoraGossipSub


class Subscription:
    """Validated messages of one topic, in arrival order; bounded (drops are counted)."""

    __slots__ = ("_gossip", "_recv", "topic")

    def __init__(
        self, gossip: Gossip, topic: Topic, recv: trio.MemoryReceiveChannel[GossipMessage]
    ) -> None:
        self._gossip = gossip
        self.topic = topic
        self._recv = recv

    async def receive(self) -> GossipMessage:
        return await self._recv.receive()

    def __aiter__(self) -> AsyncIterator[GossipMessage]:
        return self._recv.__aiter__()

    async def aclose(self) -> None:
        await self._gossip.unsubscribe(self.topic)


class Gossip:
    """A running GossipSub instance on one host. Create it with `open_gossip`."""

    def __init__(
        self,
        host: Host,
        validators: ValidatorRegistry,
        config: GossipConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.validators = validators
        self.config = config
        self.stats = GossipStats()
        self._clock = clock
        self._channels: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self._topics: dict[str, Topic] = {}
        self._local_validators: dict[str, Validator] = {}
        self.pubsub: Any = None
        self.router: Any = None

    # -- libp2p hooks --------------------------------------------------------------
    def _hook(self, topic: Topic, validator: Validator) -> Callable[[Any, Any], bool]:
        my_id = to_libp2p_id(self.host.peer_id)

        def validate(forwarder: Any, msg: Any) -> bool:
            if forwarder == my_id:
                return True  # validated once in `publish`
            try:
                origin = PeerId(bytes(msg.from_id))
            except RemoteProtocolError:
                self.stats.malformed += 1
                self.stats.rejected += 1
                return False
            try:
                verdict = _verdict(validator(origin, bytes(msg.data)))
            except RemoteProtocolError as exc:
                verdict = Verdict.reject(str(exc))
            except Exception:
                _log.exception("gossip validator for %s raised; ignoring the message", topic)
                verdict = Verdict.ignore("validator error")
            self.stats.count_reason(verdict.reason)
            if verdict.result is Validation.ACCEPT:
                self.stats.accepted += 1
                return True
            if verdict.result is Validation.REJECT:
                self.stats.rejected += 1
                _log.info("REJECT on %s from %s: %s", topic, origin, verdict.reason)
                return False
            self.stats.ignored += 1
            raise _IgnoredError(verdict.reason)

        return validate

    def _deliver(self, msg: Any) -> None:
        for name in msg.topicIDs:
            chan = self._channels.get(name)
            if chan is None:
                continue
            try:
                origin = PeerId(bytes(msg.from_id))
            except RemoteProtocolError:
                continue
            item = GossipMessage(
                topic=self._topics[name],
                origin=origin,
                data=bytes(msg.data),
                seqno=int.from_bytes(msg.seqno, "big") if msg.seqno else 0,
                received_at=self._clock(),
            )
            try:
                chan.send_nowait(item)
                self.stats.delivered += 1
            except trio.WouldBlock:
                self.stats.dropped_full += 1
                _log.warning("delivery queue of %s full; dropped a message", name)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue

    # -- public API ----------------------------------------------------------------
    async def subscribe(self, topic: Topic, validator: Validator | None = None) -> Subscription:
        """Join ``topic``; messages pass ``validator`` (default: the registry's, by kind)."""
        name = str(topic)
        if name in self._channels:
            raise LocalProtocolError(f"already subscribed to {name}")
        v = validator if validator is not None else self.validators.get(topic.kind)
        send, recv = trio.open_memory_channel[GossipMessage](self.config.delivery_buffer)
        self._channels[name] = send
        self._topics[name] = topic
        self.pubsub.set_topic_validator(name, self._hook(topic, v), False)
        self._local_validators[name] = v
        await self.pubsub.subscribe(name)
        return Subscription(self, topic, recv)

    async def unsubscribe(self, topic: Topic) -> None:
        name = str(topic)
        chan = self._channels.pop(name, None)
        if chan is None:
            return
        self._local_validators.pop(name, None)
        await chan.aclose()
        self.pubsub.remove_topic_validator(name)
        await self.pubsub.unsubscribe(name)

    async def publish(self, topic: Topic, data: bytes, *, repeat: bool = False) -> Verdict:
        """Validate ``data`` locally, then sign and publish it.

        Returns the local verdict; a REJECT raises `LocalProtocolError` (we were about to
        send something invalid) and an IGNORE publishes nothing. ``repeat=True`` sends again
        a message published before (our validator now calls it a duplicate) for peers that
        missed it; peers that have it IGNORE it.
        """
        if len(data) > self.config.max_payload:
            raise LocalProtocolError(
                f"gossip payload of {len(data)} bytes exceeds {self.config.max_payload}"
            )
        name = str(topic)
        v = self._local_validators.get(name) or (
            self.validators.get(topic.kind) if topic.kind in self.validators else None
        )
        verdict = Verdict.accept() if v is None or repeat else _verdict(v(self.host.peer_id, data))
        if verdict.result is Validation.REJECT:
            raise LocalProtocolError(f"refusing to publish an invalid message: {verdict.reason}")
        if verdict.result is Validation.IGNORE:
            return verdict
        await self.pubsub.publish(name, data)
        self.stats.published += 1
        return verdict

    def peer_score(self, peer: PeerId) -> float:
        """The GossipSub score of ``peer`` over the topics we are subscribed to."""
        topics = list(self._channels) or ["?"]
        return float(self.router.scorer.score(to_libp2p_id(peer), topics))

    def topic_peers(self, topic: Topic) -> list[PeerId]:
        """Peers known to be subscribed to ``topic``."""
        peers = self.pubsub.peer_topics.get(str(topic), ())
        out = []
        for p in peers:
            try:
                out.append(from_libp2p_id(p))
            except RemoteProtocolError:
                continue
        return sorted(out)

    def mesh_peers(self, topic: Topic) -> list[PeerId]:
        return sorted(from_libp2p_id(p) for p in self.router.mesh.get(str(topic), ()))

    async def wait_for_topic_peers(self, topic: Topic, n: int) -> None:
        """Return once at least ``n`` peers are known to be subscribed to ``topic``."""
        while len(self.topic_peers(topic)) < n:  # noqa: ASYNC110 - libp2p has no event
            await trio.sleep(0.02)

    def statistics(self) -> GossipStats:
        return self.stats


def _score_params(cfg: GossipConfig) -> Any:
    from libp2p.pubsub.score import ScoreParams, TopicScoreParams

    return ScoreParams(
        p4_invalid_messages=TopicScoreParams(
            weight=cfg.invalid_message_weight,
            cap=cfg.invalid_message_cap,
            decay=cfg.invalid_message_decay,
        ),
        gossip_threshold=cfg.gossip_threshold,
        publish_threshold=cfg.publish_threshold,
        graylist_threshold=cfg.graylist_threshold,
        accept_px_threshold=cfg.accept_px_threshold,
    )


@asynccontextmanager
async def open_gossip(
    host: Host,
    validators: ValidatorRegistry,
    config: GossipConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    clock_ns: Callable[[], int] = time.time_ns,
) -> AsyncIterator[Gossip]:
    """Run GossipSub on ``host``. Leaving the context closes ``host`` (pitfall 3)."""
    from libp2p.custom_types import TProtocol
    from libp2p.tools.anyio_service import background_trio_service

    cfg = config or GossipConfig()
    cfg.validate()
    router = _router_class()(
        protocols=[TProtocol(p) for p in cfg.protocols],
        degree=cfg.degree,
        degree_low=cfg.degree_low,
        degree_high=cfg.degree_high,
        heartbeat_interval=cfg.heartbeat_interval,
        heartbeat_initial_delay=min(0.1, cfg.heartbeat_interval),
        score_params=_score_params(cfg),
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=cfg.max_publish_rate,
    )
    gossip = Gossip(host, validators, cfg, clock)
    router.sora = gossip
    pubsub = _pubsub_class()(
        host.raw,
        router,
        strict_signing=True,
        seen_ttl=cfg.seen_ttl,
        max_inbound_rpc_size=min(MAX_OUTBOUND_RPC, 4 * cfg.max_payload + 64 * 1024),
    )
    pubsub.sora = gossip
    pubsub._sora_seqno_from(clock_ns())
    gossip.pubsub = pubsub
    gossip.router = router
    async with background_trio_service(pubsub), background_trio_service(router):
        try:
            yield gossip
        finally:
            await host.aclose()
            for chan in gossip._channels.values():
                chan.close()
