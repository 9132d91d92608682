"""The testnet dashboard: its JSON and page over a run folder, and, in headless Chromium,
the rounds of a real small testnet (live from the chain, then from the finished run's
report.json) with the numbers report.json records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from sorap2p.chain.devchain import find_anvil
from sorap2p.core.config import load_config
from sorap2p.node.home import Home
from testnet.cluster import Cluster, ClusterSpec
from testnet.dashboard import Dashboard
from testnet.report import collect, write_report

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="/usr/bin/chromium missing: scripts/setup.sh installs it"
)


def chromium_dom(url: str, budget_ms: int = 10_000) -> str:
    """The page's DOM after its scripts ran (headless Chromium, a fresh profile)."""
    with tempfile.TemporaryDirectory(prefix="sorap2p-chromium-") as profile:
        out = subprocess.run(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class TableRows(HTMLParser):
    """Rows ``<tr data-KEY=...>`` of ``<table id=ID>`` as {key: {td class: text}}."""

    def __init__(self, table_id: str, key: str) -> None:
        super().__init__()
        self.table_id, self.key = table_id, key
        self.rows: dict[str, dict[str, str]] = {}
        self._in_table = False
        self._row: dict[str, str] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._in_table = a.get("id") == self.table_id
        elif self._in_table and tag == "tr" and a.get(f"data-{self.key}") is not None:
            self._row = self.rows.setdefault(str(a[f"data-{self.key}"]), {})
        elif self._row is not None and tag == "td":
            self._cell = a.get("class") or ""
            self._row[self._cell] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self._row[self._cell] += data


def table(dom: str, table_id: str, key: str) -> dict[str, dict[str, str]]:
    parser = TableRows(table_id, key)
    parser.feed(dom)
    return parser.rows


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def assert_page_matches_report(dom: str, report: dict[str, Any]) -> None:
    """The page lists every proven round with report.json's numbers."""
    assert 'data-loaded="1"' in dom, dom[:2000]
    rows = table(dom, "rounds", "round")
    assert list(rows) == [str(r["round"]) for r in report["rounds"]], rows
    for r in report["rounds"]:
        row = rows[str(r["round"])]
        acc = "?" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        assert row["accuracy"] == acc, (row, r)
        assert row["participants"] == str(r["participants"]), (row, r)
        assert row["tx"] == r["proof_tx"] and re.fullmatch(r"0x[0-9a-f]{64}", row["tx"])
        assert row["model"] == r["model"] and row["parent"] == str(r["parent"])
    m = re.search(r'<b id="proven">(\d+)</b>', dom)
    assert m is not None and int(m.group(1)) == len(report["rounds"])
    reps = table(dom, "reputations", "node")
    assert sorted(reps) == sorted(x["node"] for x in report["reputations"])
    for x in report["reputations"]:
        assert reps[x["node"]]["reputation"] == f"{x['reputation']:.4f}"
    lineage = re.search(r'<span id="lineage">([^<]*)</span>', dom)
    assert lineage is not None
    assert [int(v) for v in re.findall(r"\d+", lineage.group(1))] == report["lineage"]
    checked = [a for a in report.get("accuracy", []) if a["accuracy"] is not None]
    assert dom.count('class="dot"') == len(checked) >= len(report["rounds"])


# -- without a chain: a run folder's files --------------------------------------------


def make_node(root: Path, name: str, status: dict[str, Any]) -> None:
    home = Home(root / name)
    home.init(load_config("", {}, [f"node.role={status['role']}", "node.subnet=digits"]))
    (home.path / "status.json").write_text(json.dumps(status))


def test_dashboard_serves_a_run_folder_from_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_node(run, "trainer-1", {"role": "trainer", "peers": 3, "rounds": {"ok": 2}})
    make_node(
        run,
        "validator-0",
        {
            "role": "validator",
            "role_status": {
                "checks": [
                    {"round": 1, "ok": True, "accuracy": 0.5},
                    {"round": 2, "ok": True, "accuracy": 0.75},
                ]
            },
        },
    )
    make_node(
        run,
        "aggregator",
        {"role": "aggregator", "role_status": {"rounds": [{"round": 1, "ok": True}]}},
    )
    make_node(run, "boot", {"role": "bootstrap"})
    (run / "notes").mkdir()  # not a node home: ignored
    with Dashboard(run, 0) as dash:
        page = urllib.request.urlopen(dash.url, timeout=10).read().decode()
        assert "<script>" in page and "/api/state" in page
        assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no CDN
        state = get_json(dash.url + "api/state")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(dash.url + "nope", timeout=10)
        assert err.value.code == 404
    assert state["source"] == "status" and state["subnet"] == "digits"
    assert [n["node"] for n in state["nodes"]] == ["boot", "aggregator", "validator-0", "trainer-1"]
    assert state["accuracy"] == [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.75}]
    assert state["rounds"] == [] and state["unproven"] == [{"round": 1, "ok": True, "reason": None}]
    # a finished run whose chain is gone is shown from its report.json
    report = {"rounds": [{"round": 1, "accuracy": 0.5}], "reputations": [], "lineage": [1]}
    (run / "report.json").write_text(json.dumps(report))
    with Dashboard(run, 0) as dash:
        state = get_json(dash.url + "api/state")
    assert state["source"] == "report" and state["rounds"] == report["rounds"]
    assert len(state["nodes"]) == 4


# -- a real testnet, in Chromium ----------------------------------------------------


@needs_chromium
@pytest.mark.net
@pytest.mark.chain
@pytest.mark.slow
@pytest.mark.skipif(find_anvil() is None, reason="anvil missing: scripts/setup.sh installs it")
def test_dashboard_shows_the_rounds_of_a_real_testnet_in_chromium(tmp_path: Path) -> None:
    spec = ClusterSpec(root=tmp_path / "run", validators=2, quorum=2, trainers=3, rounds=2)
    with Cluster(spec) as cluster, Dashboard(spec.root, 0, cluster.chain.url) as dash:
        cluster.start_all()
        deadline = time.monotonic() + 600
        while cluster.alive("aggregator") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not cluster.alive("aggregator"), "the aggregator did not finish in time"
        while time.monotonic() < deadline and not all(  # status files trail by <= 1 s
            {1, 2} <= {c["round"] for c in cluster.status(v)["role_status"]["checks"]}
            for v in ("validator-0", "validator-1")
        ):
            time.sleep(0.2)
        write_report(cluster, collect(cluster), 0.0)
        report = json.loads((spec.root / "report.json").read_text())
        assert [r["round"] for r in report["rounds"]] == [1, 2]
        assert all(r["participants"] == 3 for r in report["rounds"])
        assert get_json(dash.url + "api/state")["source"] == "chain"
        live = chromium_dom(dash.url)
    assert "data from chain" in live
    assert_page_matches_report(live, report)
    assert list(table(live, "nodes", "node")) == [
        "boot",
        "aggregator",
        "validator-0",
        "validator-1",
        "trainer-0",
        "trainer-1",
        "trainer-2",
    ]
    # finished: the chain is gone; `python -m testnet.dashboard --dir` serves report.json
    dom = serve_and_render(spec.root)
    assert "data from report" in dom
    assert_page_matches_report(dom, report)


def serve_and_render(run: Path) -> str:
    """`python -m testnet.dashboard --dir RUN --port 0`, rendered in Chromium."""
    dash = subprocess.Popen(
        [sys.executable, "-m", "testnet.dashboard", "--dir", str(run), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert dash.stdout is not None
        first = dash.stdout.readline()
        assert first.startswith("dashboard: http://127.0.0.1:"), first
        return chromium_dom(first.split()[1])
    finally:
        dash.terminate()
        dash.wait(timeout=30)
        if dash.stdout:
            dash.stdout.close()
