"""The whole system as separate processes on 127.0.0.1: anvil with the contracts, a
bootstrap, an aggregator, 3 validators (k = 2) and 3 trainers on non-IID digits shards.
Rounds are proven on chain even after a validator and a trainer are killed mid-run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sorap2p.core.ids import RoundId, SubnetId
from sorap2p.node.audit import audit_round
from sorap2p.store.blockstore import Blockstore
from testnet.cluster import Cluster, ClusterSpec, wait_for
from tests.e2e.marks import NODES_AND_CHAIN, four_rounds

pytestmark = NODES_AND_CHAIN


def test_rounds_are_proven_despite_killed_validator_and_trainer(tmp_path: Path) -> None:
    spec = four_rounds(tmp_path, log_level="info")
    with Cluster(spec) as cluster:
        cluster.start_all()
        wait_for(lambda: len(cluster.recorded_rounds()) >= 1, 300, "round 1 on chain")
        # one validator and one trainer die (SIGKILL) mid-run
        cluster.kill("validator-2", signal.SIGKILL)
        cluster.kill("trainer-2", signal.SIGKILL)
        wait_for(lambda: not cluster.alive("aggregator"), 600, "the aggregator to finish")
        assert cluster.nodes["aggregator"].proc.returncode == 0  # type: ignore[union-attr]
        recorded = cluster.recorded_rounds()
        assert recorded == [1, 2, 3, 4]
        assert cluster.client is not None
        subnet = SubnetId(spec.subnet).key
        assert cluster.client.lineage(subnet, 4) == [4, 3, 2, 1]
        # every surviving trainer earned reputation on chain
        for name in ("trainer-0", "trainer-1"):
            peer = cluster.nodes[name].home.identity_key().peer_id
            value, last = cluster.client.reputation(subnet, peer.hashed)
            assert value > 0 and last >= 3, (name, value, last)
        # anyone with the chain and the blocks can audit every round; a validator's key
        # can also recompute each aggregate bit for bit
        auditor = cluster.nodes["validator-0"].home
        store = Blockstore(auditor.blockstore_path)
        for r in recorded:
            report = audit_round(
                cluster.client,
                store,
                SubnetId(spec.subnet),
                RoundId(r),
                identity=auditor.identity_key(),
            )
            assert report.ok, report.render()
        # the CLI says the same, and exits 1 for a round that was never proven
        cli = [
            sys.executable,
            "-m",
            "sorap2p.cli",
            "audit",
            "verify",
            "--home",
            str(auditor.path),
            "--subnet",
            spec.subnet,
        ]
        out = subprocess.run([*cli, "--round", "2"], capture_output=True, text=True, check=False)
        assert out.returncode == 0 and "verdict: VALID" in out.stdout, out.stdout + out.stderr
        out = subprocess.run([*cli, "--round", "9"], capture_output=True, text=True, check=False)
        assert out.returncode == 1 and "verdict: INVALID" in out.stdout
        # the owner credits rewards per proven round; surviving trainers claim them
        for r in recorded:
            cluster.credit_round(r)
        claimed = cluster.claim_all()
        assert claimed["trainer-0"] > 0 and claimed["trainer-1"] > 0, claimed
        assert all(v == 0 for v in cluster.claim_all().values())  # nothing left to claim
        # the validators' held-out accuracy improved over the run
        checks = cluster.status("validator-0")["role_status"]["checks"]
        accs = [c["accuracy"] for c in checks if c["ok"]]
        assert accs[-1] > accs[0] and accs[-1] > 0.8, accs


def machine_state(cluster: Cluster, name: str) -> tuple[str, int]:
    st = cluster.status(name)
    machine = st.get("machine") or {}
    return str(machine.get("state")), len(st.get("role_status", {}).get("rounds", []))


def test_aggregator_restart_resumes_and_poisoner_ranks_last(tmp_path: Path) -> None:
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=3,
        trainers=4,
        quorum=2,
        rounds=3,
        round_s=40.0,
        strategy="median",
        per_node={
            "trainer-3": ("node.behaviour=sign_flip",),
            # aggregate at the deadline, not as soon as all 4 updates are in: a round then
            # lasts 40 s (an early-aggregating round took 0.9 s in CI, too short to catch)
            "aggregator": ("round.expected_participants=0",),
        },
    )
    with Cluster(spec) as cluster:
        cluster.start_all()

        # kill the aggregator while round 2 is in progress (collecting, aggregating or
        # awaiting its proof), then start it again
        def round_two_in_progress() -> bool:
            state, finished = machine_state(cluster, "aggregator")
            return finished == 1 and state not in ("IDLE", "None")

        wait_for(round_two_in_progress, 300, "round 2 in progress")
        cluster.kill("aggregator", signal.SIGKILL)
        cluster.start_node("aggregator")
        wait_for(lambda: not cluster.alive("aggregator"), 600, "the aggregator to finish")
        assert cluster.recorded_rounds() == [1, 2, 3]
        assert cluster.client is not None
        subnet = SubnetId(spec.subnet).key
        reps = {}
        for i in range(4):
            peer = cluster.nodes[f"trainer-{i}"].home.identity_key().peer_id
            reps[i] = cluster.client.reputation(subnet, peer.hashed)[0]
        assert min(reps, key=lambda i: reps[i]) == 3, reps
        assert reps[3] < min(reps[i] for i in range(3)), reps


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("wrong_model", "wrong aggregate"),
        ("drop_update", "1 announced updates silently dropped"),
        ("fake_update", "1 accepted updates were never announced"),
        ("fake_rankings", "rankings differ"),
    ],
)
def test_byzantine_aggregator_gets_no_proof_and_is_slashed(
    tmp_path: Path, behaviour: str, reason: str
) -> None:
    """Each way an aggregator can cheat (a wrong aggregate, a silently dropped honest update,
    an injected update, fake rankings) is refused by every honest validator, disputed on
    chain once, and punished by k equal verdicts that slash its stake; no round is proven.
    With the wrong aggregate, one validator colludes (approves everything): fewer than k
    approvals prove nothing, and its contrary verdict does not save the aggregator."""
    colluder = behaviour == "wrong_model"
    per_node = {"aggregator": (f"node.behaviour={behaviour}",)}
    if colluder:
        per_node["validator-0"] = ("node.behaviour=approve_all",)
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=3,
        trainers=2,
        quorum=2,
        rounds=1,
        round_s=40.0,
        per_node=per_node,
        extra=("round.proof_timeout_s=30",),
    )
    with Cluster(spec) as cluster:
        cluster.start_all()
        names = [f"validator-{i}" for i in range(1 if colluder else 0, 3)]

        def disputed(name: str) -> bool:
            return bool(cluster.status(name).get("role_status", {}).get("disputes"))

        wait_for(lambda: all(disputed(n) for n in names), 300, "every validator to dispute")
        aggregator = str(cluster.nodes["aggregator"].home.identity_key().peer_id)
        for n in names:
            st = cluster.status(n)["role_status"]
            assert st["checks"][0]["reason"].startswith(reason), st["checks"]
            assert st["disputes"][0]["accused"] == aggregator
            assert [v["approve"] for v in st["votes"]] == [False]
        # one on-chain dispute, judged by k equal verdicts: the aggregator loses its stake
        assert cluster.client is not None
        subnet = SubnetId(spec.subnet).key
        offender = cluster.address_of("aggregator")
        wait_for(
            lambda: cluster.client.member(subnet, offender).stake == 0,  # type: ignore[union-attr]
            300,
            "the aggregator to be slashed",
        )

        def verdicts() -> list[list[dict[str, object]]]:
            return [cluster.status(n)["role_status"].get("verdicts", []) for n in names]

        wait_for(lambda: all(v and "resolved" in v[0] for v in verdicts()), 60, "verdicts")
        assert all(
            v[0]["upheld"] and v[0]["slash"] == 10**15 and v[0]["resolved"] for v in verdicts()
        ), verdicts()
        if colluder:
            st = cluster.status("validator-0")["role_status"]
            assert [v["approve"] for v in st["votes"]] == [True] and st["proofs"] == []
            assert [v["upheld"] for v in st.get("verdicts", [])] in ([], [False])
        resolutions = [
            r for n in names for r in cluster.status(n)["role_status"].get("resolutions", [])
        ]
        assert len(resolutions) == 1 and resolutions[0]["upheld"], resolutions
        listed = cluster.client.disputes(subnet)
        assert [(d.status.name, d.slashed, d.offender.lower()) for d in listed] == [
            ("UPHELD", 10**15, offender.lower())
        ], listed
        challengers = [n for n in names if cluster.client.claimable(subnet, cluster.address_of(n))]
        assert len(challengers) == 1  # one bond, one challenger credited with the slashed stake
        assert cluster.client.claimable(subnet, cluster.address_of(challengers[0])) == 10**15
        # the aggregator gives up on the round without a proof; nothing reaches the chain
        wait_for(lambda: not cluster.alive("aggregator"), 300, "the aggregator to give up")
        rounds = cluster.status("aggregator")["role_status"]["rounds"]
        assert [(r["ok"], r["reason"]) for r in rounds] == [(False, "no quorum proof")]
        assert cluster.recorded_rounds() == []


def test_two_validators_offline_leave_no_quorum_and_nothing_is_written(tmp_path: Path) -> None:
    spec = ClusterSpec(
        root=tmp_path / "net",
        validators=3,
        trainers=2,
        quorum=2,
        rounds=1,
        round_s=40.0,
        extra=("round.proof_timeout_s=30", "round.start_timeout_s=20"),
    )
    with Cluster(spec) as cluster:
        cluster.start_all()
        wait_for(
            lambda: machine_state(cluster, "validator-0")[0] != "None", 120, "validator-0 running"
        )
        cluster.kill("validator-1", signal.SIGKILL)
        cluster.kill("validator-2", signal.SIGKILL)
        wait_for(lambda: not cluster.alive("aggregator"), 400, "the aggregator to give up")
        rounds = cluster.status("aggregator")["role_status"]["rounds"]
        assert [(r["ok"], r["reason"]) for r in rounds] == [(False, "no quorum proof")]
        # the surviving validator approved, alone: below the quorum, nothing was submitted
        st = cluster.status("validator-0")["role_status"]
        assert [v["approve"] for v in st["votes"]] == [True]
        assert st["proofs"] == []
        assert cluster.recorded_rounds() == []
