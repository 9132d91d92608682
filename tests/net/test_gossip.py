"""GossipSub adapter: delivery, validation outcomes, penalties, restarts (real hosts)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import LocalProtocolError
from sorap2p.core.ids import PeerId, SubnetId
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.core.validation import Validation, Verdict
from sorap2p.net.gossip import (
    Gossip,
    GossipConfig,
    GossipMessage,
    ValidatorRegistry,
    open_gossip,
)
from sorap2p.net.host import Host, libp2p_key_pair, open_host, to_libp2p_id
from tests.net.helpers_net import eventually

pytestmark = pytest.mark.net

ALPHA = SubnetId("alpha")
TOPIC = Topic(ALPHA, TopicKind.UPDATES)
CFG = GossipConfig(max_payload=1024)


def subnet_validator(subnet: SubnetId) -> Any:
    """Toy rules: payload ``<subnet>|<body>``; ``dup`` bodies are ignored."""

    def validate(origin: PeerId, data: bytes) -> Verdict:
        name, sep, body = data.partition(b"|")
        if not sep:
            return Verdict.reject("undecodable")
        if name.decode(errors="replace") != subnet.name:
            return Verdict.reject("wrong subnet")
        if body.startswith(b"dup"):
            return Verdict.ignore("duplicate")
        return Verdict.accept()

    return validate


def registry() -> ValidatorRegistry:
    return ValidatorRegistry({TopicKind.UPDATES: subnet_validator(ALPHA)})


@asynccontextmanager
async def gossip_nodes(
    n: int,
    *,
    edges: list[tuple[int, int]] | None = None,
    identities: list[IdentityKey] | None = None,
) -> AsyncIterator[list[Gossip]]:
    ids = identities or [IdentityKey.generate() for _ in range(n)]
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(open_host(i)) for i in ids]
        gossips = [await stack.enter_async_context(open_gossip(h, registry(), CFG)) for h in hosts]
        for a, b in edges if edges is not None else [(i, i + 1) for i in range(n - 1)]:
            await hosts[a].connect(hosts[b].listen_addrs()[0])
        yield gossips


async def subscribe_all(gossips: list[Gossip]) -> list[Any]:
    subs = [await g.subscribe(TOPIC) for g in gossips]
    for g in gossips:
        want = sum(1 for h in g.host.connected_peers())
        await eventually(lambda g=g, want=want: len(g.topic_peers(TOPIC)) >= want)
    return subs


async def receive(sub: Any) -> GossipMessage:
    with trio.fail_after(10):
        msg: GossipMessage = await sub.receive()
        return msg


def signed_raw(identity: IdentityKey, topic: str, data: bytes, seqno: int) -> Any:
    """A pubsub message signed the way libp2p signs, by ``identity``."""
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

    msg = rpc_pb2.Message(
        data=data,
        topicIDs=[topic],
        from_id=identity.peer_id.raw,
        seqno=seqno.to_bytes(8, "big"),
    )
    kp = libp2p_key_pair(identity)
    msg.signature = kp.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    return msg


def send_raw(sender: Gossip, to: Host, *msgs: Any) -> None:
    from libp2p.pubsub.pb import rpc_pb2

    sender.router.send_rpc(to_libp2p_id(to.peer_id), rpc_pb2.RPC(publish=list(msgs)))


async def test_gossip_reaches_every_subscriber_once_over_a_line() -> None:
    async with gossip_nodes(4) as gs:
        subs = await subscribe_all(gs)
        await gs[0].publish(TOPIC, b"alpha|one")
        await gs[3].publish(TOPIC, b"alpha|two")
        for i, sub in enumerate(subs):
            got = {(await receive(sub)).data, (await receive(sub)).data}
            assert got == {b"alpha|one", b"alpha|two"}, i
        # de-duplicated: nothing further arrives even though the messages crossed paths
        await gs[0].publish(TOPIC, b"alpha|three")
        for sub in subs:
            msg = await receive(sub)
            assert msg.data == b"alpha|three"
            assert msg.origin == gs[0].host.peer_id
            assert msg.topic == TOPIC


@pytest.mark.parametrize("attack", ["forged", "tampered", "oversized", "wrong-subnet", "garbage"])
async def test_invalid_messages_are_rejected_and_penalise_the_sender(attack: str) -> None:
    async with gossip_nodes(2) as (victim, attacker):
        vsub, _ = await subscribe_all([victim, attacker])
        bad_id = attacker.host.identity
        seq = time.time_ns()
        if attack == "forged":  # claims to come from the victim's... from a third party
            other = IdentityKey.generate()
            msg = signed_raw(other, str(TOPIC), b"alpha|forged", seq)
            msg.from_id = bad_id.peer_id.raw  # signature by `other`, claimed author attacker
        elif attack == "tampered":
            msg = signed_raw(bad_id, str(TOPIC), b"alpha|original", seq)
            msg.data = b"alpha|tampered"
        elif attack == "oversized":
            msg = signed_raw(bad_id, str(TOPIC), b"alpha|" + b"x" * CFG.max_payload, seq)
        elif attack == "wrong-subnet":
            msg = signed_raw(bad_id, str(TOPIC), b"beta|hello", seq)
        else:
            msg = signed_raw(bad_id, str(TOPIC), b"no separator", seq)
        assert victim.peer_score(attacker.host.peer_id) == 0.0
        send_raw(attacker, victim.host, msg)
        await eventually(lambda: victim.peer_score(attacker.host.peer_id) < 0)
        assert victim.stats.rejected >= 1
        # the bad message was not delivered: the next thing the victim sees is a good one
        await attacker.publish(TOPIC, b"alpha|good")
        assert (await receive(vsub)).data == b"alpha|good"
        assert victim.stats.delivered == 1


async def test_ignore_drops_without_penalty_and_without_forwarding() -> None:
    async with gossip_nodes(3) as gs:  # line 0 - 1 - 2
        subs = await subscribe_all(gs)
        await gs[0].publish(TOPIC, b"alpha|dup-1")  # gs[0] ignores it itself: nothing sent
        seq = time.time_ns()
        send_raw(
            gs[0], gs[1].host, signed_raw(gs[0].host.identity, str(TOPIC), b"alpha|dup-2", seq)
        )
        await gs[0].publish(TOPIC, b"alpha|fresh")
        for sub in subs[1:]:
            assert (await receive(sub)).data == b"alpha|fresh"
        assert gs[1].stats.ignored == 1
        assert gs[2].stats.ignored == 0  # the ignored message was not forwarded
        assert gs[1].peer_score(gs[0].host.peer_id) >= 0.0


async def test_replayed_message_is_delivered_once() -> None:
    async with gossip_nodes(2) as (victim, sender):
        vsub, _ = await subscribe_all([victim, sender])
        msg = signed_raw(sender.host.identity, str(TOPIC), b"alpha|once", time.time_ns())
        send_raw(sender, victim.host, msg)
        assert (await receive(vsub)).data == b"alpha|once"
        send_raw(sender, victim.host, msg, msg)
        send_raw(sender, victim.host, msg)
        await eventually(lambda: victim.stats.duplicates >= 3)
        assert victim.stats.delivered == 1
        assert victim.peer_score(sender.host.peer_id) >= 0.0


async def test_restarted_publisher_is_heard() -> None:
    pub_id = IdentityKey.generate()
    async with (
        open_host(IdentityKey.generate()) as sub_host,
        open_gossip(sub_host, registry(), CFG) as listener,
    ):
        sub = await listener.subscribe(TOPIC)
        for round_ in range(2):  # same identity, restarted within the same second
            async with (
                open_host(pub_id) as pub_host,
                open_gossip(pub_host, registry(), CFG) as pub,
            ):
                await pub_host.connect(sub_host.listen_addrs()[0])
                await pub.subscribe(TOPIC)
                await eventually(lambda pub=pub: bool(pub.topic_peers(TOPIC)))
                # both sides must know the other's subscription before the first publish
                await eventually(lambda: pub_id.peer_id in listener.topic_peers(TOPIC))
                for k in range(3):
                    await pub.publish(TOPIC, b"alpha|r%d-%d" % (round_, k))
                for k in range(3):
                    msg = await receive(sub)
                    assert msg.data == b"alpha|r%d-%d" % (round_, k)
                    assert msg.origin == pub_id.peer_id
            await eventually(lambda: pub_id.peer_id not in sub_host.connected_peers())


async def test_local_publish_is_validated_and_capped() -> None:
    async with gossip_nodes(1, edges=[]) as (g,):
        await g.subscribe(TOPIC)
        with pytest.raises(LocalProtocolError):
            await g.publish(TOPIC, b"beta|wrong")
        with pytest.raises(LocalProtocolError):
            await g.publish(TOPIC, b"alpha|" + b"x" * CFG.max_payload)
        verdict = await g.publish(TOPIC, b"alpha|dup")
        assert verdict.result is Validation.IGNORE
        assert g.stats.published == 0
        with pytest.raises(LocalProtocolError):
            await g.subscribe(TOPIC)
        with pytest.raises(LocalProtocolError):
            await g.subscribe(Topic(ALPHA, TopicKind.VOTES))  # no validator registered


def test_registry_and_config_validation() -> None:
    reg = registry()
    with pytest.raises(LocalProtocolError):
        reg.register(TopicKind.UPDATES, subnet_validator(ALPHA))
    assert TopicKind.UPDATES in reg and TopicKind.VOTES not in reg
    GossipConfig().validate()
    for bad in (
        GossipConfig(heartbeat_interval=0),
        GossipConfig(degree_low=5, degree=4),
        GossipConfig(max_payload=1 << 20),
        GossipConfig(invalid_message_cap=0),
        GossipConfig(graylist_threshold=0.0),
    ):
        with pytest.raises(LocalProtocolError):
            bad.validate()


async def test_a_burst_above_libp2p_defaults_is_delivered_in_full() -> None:
    # py-libp2p drops own publishes above 10 msg/s per topic and buffers 32 messages per
    # subscription (FIELD-NOTES pitfalls 4 and 7): 40 at once must all arrive.
    async with gossip_nodes(2) as (a, b):
        _, bsub = await subscribe_all([a, b])
        for i in range(40):
            await a.publish(TOPIC, b"alpha|burst-%d" % i)
        got = [(await receive(bsub)).data for _ in range(40)]
        assert sorted(got) == sorted(b"alpha|burst-%d" % i for i in range(40))
        assert b.stats.dropped_full == 0


async def test_a_flooder_is_gated_and_pruned_while_honest_peers_are_heard() -> None:
    # star around the victim: flooder - victim - honest (the only paths between them)
    async with gossip_nodes(3, edges=[(0, 1), (0, 2)]) as (victim, flooder, honest):
        vsub, _, hsub = await subscribe_all([victim, flooder, honest])
        fid = flooder.host.peer_id
        await eventually(lambda: fid in victim.mesh_peers(TOPIC))
        bad = flooder.host.identity
        seq = time.time_ns()
        flood = [signed_raw(bad, str(TOPIC), b"beta|spam-%d" % i, seq + i) for i in range(8)]
        send_raw(flooder, victim.host, *flood)
        await eventually(lambda: victim.peer_score(fid) < CFG.publish_threshold)
        assert victim.stats.rejected >= 6
        # a VALID message from the flooder is now dropped unread: not validated, not
        # delivered, not forwarded to the honest peer
        good = signed_raw(bad, str(TOPIC), b"alpha|from-flooder", seq + 100)
        send_raw(flooder, victim.host, good)
        await eventually(lambda: victim.stats.score_gated >= 1)
        accepted = victim.stats.accepted
        # the next message both subscribers see is the victim's marker, not the flooder's
        await victim.publish(TOPIC, b"alpha|marker")
        assert (await receive(vsub)).data == b"alpha|marker"
        assert (await receive(hsub)).data == b"alpha|marker"
        assert victim.stats.accepted == accepted
        # the flooder leaves the victim's mesh at a heartbeat (negative score) ...
        await eventually(lambda: fid not in victim.mesh_peers(TOPIC))
        assert victim.stats.pruned_for_score >= 1
        # ... while the honest peer stays in it and is still heard
        assert honest.host.peer_id in victim.mesh_peers(TOPIC)
        await honest.publish(TOPIC, b"alpha|honest")
        assert (await receive(vsub)).data == b"alpha|honest"
        assert victim.peer_score(honest.host.peer_id) >= 0.0
