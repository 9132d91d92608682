"""Privacy canary: a real multi-process testnet run in which each trainer's private data
carries a unique byte pattern, then a search of everything the run left behind (every
file of every node's home: blocks, logs, status, peer caches, keys; every gossip message
sent or received, traced by ``node.trace_gossip``; every chain transaction's input and
every event's data, read from anvil over RPC) finds none of them. Stored updates are
encrypted at rest: they hold no plaintext, and only the round's recipients open them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sorap2p.core import messages as m
from sorap2p.core.codec import decode
from sorap2p.core.errors import IntegrityError
from sorap2p.core.ids import Role
from sorap2p.core.topics import TopicKind
from sorap2p.node.services import TRACE_FILE, read_trace
from sorap2p.store.blockstore import Blockstore
from sorap2p.store.encrypted import decrypt_update
from sorap2p.testing.canary import files_under, find_canaries, loader_ref, marker
from sorap2p.testing.factories import key
from testnet.cluster import Cluster, ClusterSpec, wait_for
from tests.e2e.marks import NODES_AND_CHAIN

pytestmark = NODES_AND_CHAIN

TRAINERS = 3


def chain_bytes(cluster: Cluster) -> list[tuple[str, bytes]]:
    """Every transaction input and every event's data and topics on the chain."""
    assert cluster.client is not None
    w3 = cluster.client.w3
    out = []
    for n in range(w3.eth.block_number + 1):
        block = w3.eth.get_block(n, full_transactions=True)
        txs: list[Any] = list(block["transactions"])
        for tx in txs:
            out.append((f"tx {tx['hash'].hex()} input", bytes(tx["input"])))
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            for i, log in enumerate(receipt["logs"]):
                raw = bytes(log["data"]) + b"".join(bytes(t) for t in log["topics"])
                out.append((f"tx {tx['hash'].hex()} log {i}", raw))
    return out


def test_no_canary_leaves_a_trainer_and_updates_are_sealed(tmp_path: Path) -> None:
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=2,
        trainers=TRAINERS,
        quorum=2,
        rounds=2,
        round_s=20.0,
        epochs=2,
        extra=("node.trace_gossip=true",),
        per_node={f"trainer-{i}": (f"node.data={loader_ref(i)}",) for i in range(TRAINERS)},
    )
    with Cluster(spec) as cluster:
        cluster.start_all()
        wait_for(lambda: not cluster.alive("aggregator"), 420, "the aggregator to finish")
        assert cluster.recorded_rounds() == [1, 2]
        on_chain = chain_bytes(cluster)
        homes = {name: node.home for name, node in cluster.nodes.items()}
    trainers = range(TRAINERS)

    # the canaries really were in the trainers' data (the search would find them)
    from sorap2p.testing.canary import canary_loader

    x, _ = canary_loader(1).train.tensors  # type: ignore[attr-defined]
    assert marker(1) in x.numpy().tobytes()
    assert {leak.form for leak in find_canaries("data", x.numpy().tobytes(), trainers)} >= {"raw"}

    # 1. nothing on chain
    assert len(on_chain) >= 10
    leaks = [leak for where, raw in on_chain for leak in find_canaries(where, raw, trainers)]
    # 2. no file any node wrote: blocks, logs, status, traces, keys, caches
    searched = 0
    for path in files_under(tmp_path / "net"):
        leaks += find_canaries(str(path), path.read_bytes(), trainers)
        searched += 1
    assert leaks == [], leaks
    assert searched > 50

    # 3. every gossip message, sent and received, was traced (and was searched above)
    messages: list[tuple[str, str, TopicKind, bytes]] = []
    for name, home in homes.items():
        if name != "boot":
            trace = (home.path / TRACE_FILE).read_bytes()
            messages += [(name, d, k, p) for d, k, p in read_trace(trace)]
    sent_kinds = {k for _, d, k, _ in messages if d == ">"}
    assert {TopicKind.ROUNDS, TopicKind.UPDATES, TopicKind.MODELS, TopicKind.VOTES} <= sent_kinds
    received = [(n, k, p) for n, d, k, p in messages if d == "<"]
    assert {n for n, k, _ in received if k is TopicKind.ROUNDS} >= {
        f"trainer-{i}" for i in trainers
    }
    announces = [decode(p, m.UpdateAnnounce) for n, k, p in received if k is TopicKind.UPDATES]
    opens = {
        o.round: o
        for o in (decode(p, m.RoundOpen) for _, k, p in received if k is TopicKind.ROUNDS)
    }
    assert len({(a.round, a.signer) for a in announces}) == 2 * TRAINERS

    # 4. stored updates are sealed: only the round's recipients open them, no plaintext
    aggregator = homes["aggregator"]
    store = Blockstore(aggregator.blockstore_path)
    ids = {name: home.identity_key() for name, home in homes.items()}
    by_peer = {k.peer_id: name for name, k in ids.items()}
    for a in {(a.round, a.update): a for a in announces}.values():
        ro = opens[a.round]
        recipients = {by_peer[r.peer] for r in ro.recipients}
        assert recipients == {"aggregator", "validator-0", "validator-1"}, recipients
        assert {r.role for r in ro.recipients} == {Role.AGGREGATOR, Role.VALIDATOR}
        delta, env = decrypt_update(store, a.update, ids["aggregator"])
        v0_store = Blockstore(homes["validator-0"].blockstore_path)
        again, _ = decrypt_update(v0_store, a.update, ids["validator-0"])
        assert torch.equal(delta, again)
        assert delta.abs().sum() > 0
        # a trainer (even the author: it does not seal to itself), another validator key
        # and a stranger cannot open it, with a clear error
        outsiders = [ids[f"trainer-{i}"] for i in trainers] + [key(4242)]
        for outsider in outsiders:
            with pytest.raises(IntegrityError, match="is not encrypted for"):
                decrypt_update(store, a.update, outsider)
        # at rest: no run of the plaintext in any stored block of the update
        plain = delta.numpy().tobytes()
        for chunk in env.chunks:
            block = store.get(chunk)
            for at in range(0, len(plain) - 32, max(1, len(plain) // 16)):
                assert plain[at : at + 32] not in block
