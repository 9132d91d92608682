"""Faults and Byzantine trainers, with real node processes (and real libp2p gossip):

* corrupted block files at a trainer are detected on read, moved aside, fetched again
  from a peer, and the round completes; a label-flipping trainer ranks last;
* the chain RPC goes away mid-run and comes back with its state: nodes keep running,
  retry, and the later rounds are proven;
* a trainer whose block store is full logs a clear error, skips the round, and trains
  again once space returns (a small tmpfs; root only);
* a stale round's UpdateAnnounce replayed by its trainer is rejected by gossip validation
  and the sender's peer score drops, while fresh announces still flow.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from sorap2p.core.codec import encode
from sorap2p.core.gossip_rules import STALE_REPLAY_MS, GossipRules, SubnetView
from sorap2p.core.ids import Role, SubnetId
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.core.validation import Validation, Verdict
from sorap2p.node import work
from sorap2p.store.blockstore import Blockstore
from sorap2p.testing.factories import SUBNET, Cast, announce, round_open
from testnet.cluster import Cluster, ClusterSpec, wait_for
from tests.e2e.marks import nodes_and_chain


def role_status(cluster: Cluster, name: str) -> dict[str, Any]:
    st: dict[str, Any] = cluster.status(name).get("role_status", {})
    return st


def reputations(cluster: Cluster, trainers: int) -> dict[int, int]:
    assert cluster.client is not None
    subnet = SubnetId(cluster.spec.subnet).key
    out = {}
    for i in range(trainers):
        peer = cluster.nodes[f"trainer-{i}"].home.identity_key().peer_id
        out[i] = cluster.client.reputation(subnet, peer.hashed)[0]
    return out


def log_of(cluster: Cluster, name: str) -> str:
    return (cluster.nodes[name].home.path / "node.log").read_text(errors="replace")


@nodes_and_chain
def test_corrupt_blocks_are_refetched_and_a_label_flipper_ranks_last(tmp_path: Path) -> None:
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=2,
        trainers=3,
        quorum=2,
        rounds=2,
        round_s=20.0,
        strategy="median",
        per_node={"trainer-2": ("node.behaviour=label_flip",)},
    )
    with Cluster(spec) as cluster:
        # trainer-0 already holds the genesis model (the same bytes the aggregator will
        # create), but every block file of it is corrupt: same size, bytes flipped
        store = Blockstore(cluster.nodes["trainer-0"].home.blockstore_path)
        genesis = work.store_genesis(store, spec.model)
        corrupted = 0
        for cid in list(store.iter_cids()):
            path = store.path_of(cid)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            corrupted += 1
        assert corrupted >= 2 and store.has(genesis)

        cluster.start_all()
        wait_for(lambda: not cluster.alive("aggregator"), 420, "the aggregator to finish")
        assert cluster.recorded_rounds() == [1, 2]
        # trainer-0 detected the corruption, moved the files aside, fetched the model
        # again, and its update made it into both rounds
        assert role_status(cluster, "trainer-0")["rounds_trained"] == 2
        assert store.stats().quarantined >= 1
        assert "fetching it again from peers" in log_of(cluster, "trainer-0")
        assert store.get(genesis)  # a good copy now
        # the label flipper trained on wrong labels: the lowest reputation on chain
        reps = reputations(cluster, 3)
        assert min(reps, key=lambda i: reps[i]) == 2, reps
        assert reps[2] < min(reps[0], reps[1]), reps


@nodes_and_chain
def test_chain_rpc_going_away_and_back(tmp_path: Path) -> None:
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=2,
        trainers=2,
        quorum=2,
        rounds=3,
        round_s=20.0,
        chain_state=True,
        extra=("round.proof_timeout_s=90",),
    )
    with Cluster(spec) as cluster:
        cluster.start_all()
        wait_for(lambda: len(cluster.recorded_rounds()) >= 1, 300, "round 1 on chain")
        cluster.chain_down()
        down_at = time.monotonic()
        time.sleep(8)  # the outage itself: nothing to wait for but time
        assert all(cluster.alive(n) for n in cluster.nodes), "a node died with the chain"
        cluster.chain_up()
        assert time.monotonic() - down_at >= 8
        assert cluster.recorded_rounds()[:1] == [1]  # the state came back with it
        wait_for(lambda: not cluster.alive("aggregator"), 420, "the aggregator to finish")
        assert cluster.nodes["aggregator"].proc.returncode == 0  # type: ignore[union-attr]
        # a round whose proof fell into the outage may time out (cleanly: its proof is never
        # half-written); the run goes on from the last proven model and later rounds land
        recorded = cluster.recorded_rounds()
        assert recorded[0] == 1 and recorded[-1] == 3, recorded
        rounds = cluster.status("aggregator")["role_status"]["rounds"]
        for r in rounds:
            assert r["ok"] == (r["round"] in recorded), rounds
            assert r["ok"] or r["reason"] == "no quorum proof", rounds
        assert cluster.client is not None
        subnet = SubnetId(spec.subnet).key
        assert cluster.client.lineage(subnet, 3) == sorted(recorded, reverse=True)
        for name in ("validator-0", "validator-1", "trainer-0", "trainer-1"):
            assert cluster.alive(name), name


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return out.returncode == 0


def _fill(path: Path) -> Path:
    """Fill the file system of ``path`` to the last byte with one file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (65_536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@nodes_and_chain
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_trainer_skips_the_round_and_recovers(tmp_path: Path) -> None:
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=2,
        trainers=2,
        quorum=2,
        rounds=3,
        round_s=20.0,
    )
    with Cluster(spec) as cluster:
        blocks = cluster.nodes["trainer-0"].home.blockstore_path
        if not _mount_tmpfs(blocks, "2m"):
            pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
        try:
            Blockstore(blocks)  # its skeleton, then not one byte more
            filler = _fill(blocks)
            cluster.start_all()
            wait_for(lambda: len(cluster.recorded_rounds()) >= 1, 300, "round 1 on chain")
            st = role_status(cluster, "trainer-0")
            assert st.get("rounds_trained", 0) == 0, st
            assert cluster.alive("trainer-0")
            log = log_of(cluster, "trainer-0")
            assert "the block store is full" in log, log[-2000:]
            filler.unlink()  # space returns
            wait_for(lambda: not cluster.alive("aggregator"), 420, "the aggregator to finish")
            assert cluster.recorded_rounds() == [1, 2, 3]
            st = role_status(cluster, "trainer-0")
            assert st["rounds_trained"] >= 1 and st["last_round"] == 3, st
            reps = reputations(cluster, 2)
            assert reps[0] > 0, reps
        finally:
            cluster.stop()
            subprocess.run(["umount", "-l", str(blocks)], check=False)


# -- a stale announce replayed over real gossip ----------------------------------------


@pytest.mark.net
async def test_replayed_stale_announce_is_rejected_and_penalises_its_sender() -> None:
    from sorap2p.core.crypto import IdentityKey
    from sorap2p.net.gossip import GossipConfig, ValidatorRegistry, open_gossip
    from sorap2p.net.host import open_host
    from tests.net.helpers_net import eventually

    cast = Cast.make(validators=1, trainers=2)
    agg, (t0, t1) = cast.aggregator, cast.trainers
    members = {agg.peer_id: Role.AGGREGATOR, t0.peer_id: Role.TRAINER, t1.peer_id: Role.TRAINER}
    view = SubnetView(SUBNET, agg.peer_id, members)
    clock = [10_000]
    rules = GossipRules(lambda: view, lambda: clock[0])
    topic = Topic(SUBNET, TopicKind.UPDATES)
    # round 1 ran earlier: its announce from t0 is on record
    r1 = round_open(agg, 1, cast.recipients(), opened_at=10_000, duration=20_000)
    assert rules.for_kind(TopicKind.ROUNDS)(agg.peer_id, encode(r1)).result is Validation.ACCEPT
    stale = announce(t0, r1)
    assert rules.for_kind(TopicKind.UPDATES)(t0.peer_id, encode(stale)).result is (
        Validation.ACCEPT
    )
    # ... and rounds 2..4 followed; it is now round 4
    for n in (2, 3, 4):
        clock[0] = 10_000 + (n - 1) * 25_000
        ro = round_open(agg, n, cast.recipients(), opened_at=clock[0], duration=20_000)
        assert rules.for_kind(TopicKind.ROUNDS)(agg.peer_id, encode(ro)).result is (
            Validation.ACCEPT
        )
    clock[0] += 1_000
    updates = rules.for_kind(TopicKind.UPDATES)
    # late, but an honest peer may forward it this late (a healed partition's TCP
    # retransmissions): dropped without a penalty
    verdict = updates(t0.peer_id, encode(stale))
    assert verdict.result is Validation.IGNORE, verdict
    r3_announce = announce(t0, round_open(agg, 3, cast.recipients(), opened_at=60_000))
    clock[0] = 60_000 + 20_000 + 31_000
    assert updates(t0.peer_id, encode(r3_announce)).result is Validation.IGNORE
    # past STALE_REPLAY_MS after its deadline no honest path delivers it: a replay
    clock[0] = 10_000 + 20_000 + STALE_REPLAY_MS + 1_000
    ro = round_open(agg, 5, cast.recipients(), opened_at=clock[0] - 1_000, duration=20_000)
    assert rules.for_kind(TopicKind.ROUNDS)(agg.peer_id, encode(ro)).result is Validation.ACCEPT
    fresh = announce(t1, ro)
    verdict = updates(t0.peer_id, encode(stale))
    assert verdict.result is Validation.REJECT and "stale replay" in verdict.reason, verdict

    def validators(mine: bool) -> ValidatorRegistry:
        if mine:
            return ValidatorRegistry({TopicKind.UPDATES: rules.for_kind(TopicKind.UPDATES)})
        return ValidatorRegistry({TopicKind.UPDATES: lambda origin, data: Verdict.accept()})

    cfg = GossipConfig()
    async with (
        open_host(IdentityKey.generate()) as vhost,
        open_host(t0) as ahost,
        open_host(t1) as hhost,
        open_gossip(vhost, validators(True), cfg) as victim,
        open_gossip(ahost, validators(False), cfg) as replayer,
        open_gossip(hhost, validators(False), cfg) as honest,
    ):
        await ahost.connect(vhost.listen_addrs()[0])
        await hhost.connect(vhost.listen_addrs()[0])
        sub = await victim.subscribe(topic)
        for g in (replayer, honest):
            await g.subscribe(topic)
        await eventually(lambda: len(victim.topic_peers(topic)) >= 2)
        await eventually(lambda: len(replayer.topic_peers(topic)) >= 1)
        await eventually(lambda: len(honest.topic_peers(topic)) >= 1)
        assert victim.peer_score(t0.peer_id) == 0.0
        await replayer.publish(topic, encode(stale))
        await eventually(lambda: victim.peer_score(t0.peer_id) < 0)
        assert victim.stats.rejected >= 1
        await honest.publish(topic, encode(fresh))
        with trio.fail_after(10):
            got = await sub.receive()
        assert got.data == encode(fresh) and got.origin == t1.peer_id
        assert victim.peer_score(t1.peer_id) >= 0.0
