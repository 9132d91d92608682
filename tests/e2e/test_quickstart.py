"""The README's main command on its embedded defaults: 10 rounds, 1 bootstrap, 1 aggregator,
3 validators, 5 trainers, each a separate process; >= 95% accuracy and 10 proofs on chain.
Its run folder is then served by the dashboard and checked in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.marks import NODES_AND_CHAIN
from tests.e2e.test_dashboard import CHROMIUM, assert_page_matches_report, serve_and_render

pytestmark = NODES_AND_CHAIN

ROOT = Path(__file__).resolve().parents[2]


def test_default_testnet_learns_and_proves_every_round(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "testnet", "--dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    proven = re.findall(r"round +(\d+): proven on chain; held-out accuracy ([0-9.]+)", out.stdout)
    assert [int(r) for r, _ in proven] == list(range(1, 11)), out.stdout
    assert float(proven[-1][1]) >= 0.95, out.stdout
    report = json.loads((run / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == list(range(1, 11))
    assert report["lineage"] == list(range(10, 0, -1))
    assert len(report["reputations"]) == 5 and all(
        r["reputation"] > 0 for r in report["reputations"]
    )
    md = (run / "report.md").read_text()
    assert "## Rounds proven on chain" in md and (run / "accuracy.svg").read_text().startswith(
        "<svg"
    )
    # the live dashboard was served while it ran; the finished run is shown from report.json
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/$", out.stdout, re.M), out.stdout
    if CHROMIUM.is_file():
        dom = serve_and_render(run)
        assert_page_matches_report(dom, report)
        assert "10" in re.findall(r'<b id="proven">(\d+)</b>', dom)
