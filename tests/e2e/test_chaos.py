"""SIGKILL of each role at a different phase of a round, each restarted at once, in one
multi-process testnet: every round is still proven on chain, the restarted aggregator resumes
from its state file, lineage and audits hold, and no node's blockstore lost or corrupted a
block."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sorap2p.core.ids import RoundId, SubnetId
from sorap2p.node.audit import audit_round
from sorap2p.store.blockstore import Blockstore
from testnet.cluster import Cluster
from tests.e2e.marks import NODES_AND_CHAIN, four_rounds

pytestmark = NODES_AND_CHAIN


def test_each_role_killed_mid_round_and_restarted(tmp_path: Path) -> None:
    spec = four_rounds(tmp_path)
    # (whose log marks the phase, the phase, the victim)
    steps = [
        ("aggregator", r"opening round 1 ", "trainer-0"),  # a trainer while it trains
        ("validator-1", r"round 2: (approve|reject)", "validator-1"),  # a validator as it votes
        ("aggregator", r"round 3: aggregated", "aggregator"),  # the aggregator before its proof
        ("aggregator", r"opening round 4 ", "validator-0"),  # a validator while it observes
    ]
    with Cluster(spec) as cluster:
        cluster.start_all()
        for watched, phase, victim in steps:
            cluster.wait_log(watched, phase, 600)
            cluster.kill(victim, signal.SIGKILL)
            cluster.start_node(victim)
        wait_for_exit = time.monotonic() + 900
        while cluster.alive("aggregator") and time.monotonic() < wait_for_exit:
            time.sleep(0.5)
        proc = cluster.nodes["aggregator"].proc
        assert proc is not None and proc.returncode == 0
        assert cluster.recorded_rounds() == [1, 2, 3, 4]
        assert cluster.client is not None
        subnet = SubnetId(spec.subnet)
        assert cluster.client.lineage(subnet.key, 4) == [4, 3, 2, 1]
        agg_log = (cluster.nodes["aggregator"].home.path / "node.log").read_text()
        assert "resumed in state" in agg_log
        # every proven round audits clean from a validator's blocks, aggregate recomputed
        auditor = cluster.nodes["validator-2"].home
        store = Blockstore(auditor.blockstore_path)
        for r in range(1, 5):
            report = audit_round(
                cluster.client, store, subnet, RoundId(r), identity=auditor.identity_key()
            )
            assert report.ok, report.render()
        # no node lost or corrupted a block, killed ones included
        for name, node in cluster.nodes.items():
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sorap2p.cli",
                    "blocks",
                    "verify",
                    "--home",
                    str(node.home.path),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert out.returncode == 0, (name, out.stdout[-2000:], out.stderr[-2000:])
