"""A live web dashboard for a testnet run folder, served on 127.0.0.1 only.

One static page (vanilla JS, inline SVG, nothing fetched from anywhere but this server)
polls ``/api/state``: the document `testnet.report.RunReader` builds from the run folder
(each node's status.json) and, while it answers, the run's chain (rounds proven on chain
with their proof transaction, participants, reputations, lineage). A finished run whose
chain is gone is shown from its report.json.

``python -m testnet`` starts it by default; ``python -m testnet.dashboard --dir RUN``
serves any run folder, finished or running."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sorap2p.node.home import Home
from testnet.report import RunReader, chain_answers, node_names

HOST = "127.0.0.1"


class RunSource:
    """The dashboard's data for one run folder, cached for ``ttl_s`` (several browser tabs
    or a fast poller cost one read of the folder and the chain per interval)."""

    def __init__(self, root: Path, chain_url: str | None = None, ttl_s: float = 1.0) -> None:
        self.root = root
        self.chain_url = chain_url
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._reader: RunReader | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _settings(self) -> tuple[str, str]:
        """(chain URL, subnet name) from the run's first node config."""
        for name in node_names(self.root):
            cfg = Home(self.root / name).load_config(env={})
            return self.chain_url or cfg.chain.url, cfg.node.subnet
        return self.chain_url or "", ""

    def _live_reader(self) -> RunReader | None:
        from sorap2p.chain.client import ChainClient
        from sorap2p.chain.deployment import Deployment

        url, subnet = self._settings()
        deployment = self.root / "deployment.json"
        if not url or not deployment.is_file() or not chain_answers(url):
            return None
        if self._reader is None or self._reader.client is None:
            client = ChainClient.connect(url, Deployment.load(deployment))
            self._reader = RunReader(self.root, client, subnet)
        return self._reader

    def _read(self) -> dict[str, Any]:
        error = None
        try:
            reader = self._live_reader()
            if reader is not None:
                return reader.collect()
        except Exception as exc:  # the chain went away mid-read: fall back
            self._reader = None
            error = f"{type(exc).__name__}: {exc}"
        report = self.root / "report.json"
        if report.is_file():
            data: dict[str, Any] = json.loads(report.read_text())
            data["source"] = "report"
            data["nodes"] = RunReader(self.root).collect()["nodes"]
        else:
            _, subnet = self._settings()
            data = RunReader(self.root, None, subnet).collect()
        if error:
            data["error"] = error
        return data

    def state(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl_s:
                data = self._read()
                data["run"] = str(self.root)
                data["served_at_ms"] = int(time.time() * 1000)
                self._cached = (now, data)
            return self._cached[1]


class Dashboard:
    """``with Dashboard(root, port=0) as d: print(d.url)``: serves in a daemon thread."""

    def __init__(self, root: Path, port: int = 0, chain_url: str | None = None) -> None:
        self.source = RunSource(root, chain_url)
        source = self.source

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
                elif path == "/api/state":
                    body = json.dumps(source.state(), default=str).encode()
                    self._send(HTTPStatus.OK, "application/json", body)
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

            def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the testnet prints its own progress

        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dashboard", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/"

    def start(self) -> Dashboard:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>sorap2p testnet</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 .2em} h2{font-size:16px;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left} th{background:#f0f0f0} code{font-size:12px}
.cards{display:flex;gap:1em;margin:.8em 0} .card{background:#fff;border:1px solid #ddd;
padding:.5em 1em} .card b{display:block;font-size:20px} #error{color:#b91c1c}
.charts{display:flex;gap:2em;flex-wrap:wrap} svg{background:#fff;border:1px solid #ddd}
</style></head><body>
<h1>sorap2p testnet</h1>
<div id="meta">loading...</div><div id="error"></div>
<div class="cards">
 <div class="card">rounds proven on chain<b id="proven">-</b></div>
 <div class="card">latest accuracy<b id="latest-acc">-</b></div>
 <div class="card">nodes<b id="node-count">-</b></div>
</div>
<div class="charts">
 <div><h2>Accuracy (validators' held-out data)</h2>
  <svg id="acc-chart" width="480" height="200"></svg></div>
 <div><h2>Participants per round</h2><svg id="part-chart" width="480" height="200"></svg></div>
</div>
<h2>Rounds proven on chain</h2>
<table id="rounds"><thead><tr><th>round</th><th>accuracy</th><th>participants</th>
<th>parent</th><th>proof transaction</th><th>model</th></tr></thead><tbody></tbody></table>
<p>Lineage (latest round back to the first): <span id="lineage">-</span></p>
<h2>Trainer reputation (on chain)</h2>
<table id="reputations"><thead><tr><th>node</th><th>peer</th><th>reputation</th>
<th>last round</th></tr></thead><tbody></tbody></table>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>role</th><th>peers</th><th>rounds ok</th>
<th>last round</th><th>errors</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function fmt(x, d) { return (x === null || x === undefined) ? "?" : Number(x).toFixed(d); }
function fill(table, rows) {
  const body = document.querySelector(table + " tbody");
  body.replaceChildren(...rows);
}
function row(cells, attrs) {
  const tr = el("tr", attrs);
  for (const [cls, text, code] of cells) {
    const td = el("td", {class: cls});
    td.append(code ? el("code", {}, text) : document.createTextNode(text));
    tr.append(td);
  }
  return tr;
}
function chart(id, points, ymax, bars) {
  const svg = document.getElementById(id), w = 480, h = 200;
  svg.replaceChildren();
  if (!points.length) { svg.append(el("svg:text", {x: 20, y: 100}, "no data yet")); return; }
  const xs = points.map(p => p[0]), x0 = Math.min(...xs), x1 = Math.max(Math.max(...xs), x0 + 1);
  const sx = x => 40 + (x - x0) / (x1 - x0) * (w - 70), sy = y => h - 30 - y / ymax * (h - 50);
  const ticks = bars ? [...new Set([0, Math.round(ymax / 2), ymax])] : [0, 0.5, 0.9, 1.0];
  for (const t of ticks) {
    svg.append(el("svg:line", {x1: 40, x2: w - 20, y1: sy(t), y2: sy(t), stroke: "#ddd"}));
    svg.append(el("svg:text", {x: 4, y: sy(t) + 4, "font-size": 10},
                  bars ? Math.round(t) : Math.round(t * 100) + "%"));
  }
  for (const x of xs) svg.append(el("svg:text", {x: sx(x) - 3, y: h - 12, "font-size": 10}, x));
  if (bars) {
    for (const [x, y] of points)
      svg.append(el("svg:rect", {x: sx(x) - 6, y: sy(y), width: 12, height: sy(0) - sy(y),
                                 fill: "#16a34a", class: "bar"}));
  } else {
    svg.append(el("svg:polyline", {fill: "none", stroke: "#2563eb", "stroke-width": 2,
      points: points.map(([x, y]) => sx(x).toFixed(1) + "," + sy(y).toFixed(1)).join(" ")}));
    for (const [x, y] of points)
      svg.append(el("svg:circle", {cx: sx(x), cy: sy(y), r: 3, fill: "#2563eb", class: "dot"}));
  }
}
function render(s) {
  const rounds = s.rounds || [];
  document.getElementById("meta").textContent =
    `run ${s.run} · subnet ${s.subnet || "?"} · data from ${s.source} · ` +
    `updated ${new Date(s.served_at_ms).toLocaleTimeString()}`;
  document.getElementById("error").textContent = s.error || "";
  document.getElementById("proven").textContent = rounds.length;
  const accs = (s.accuracy || []).filter(a => a.accuracy !== null);
  document.getElementById("latest-acc").textContent =
    accs.length ? fmt(accs[accs.length - 1].accuracy, 4) : "-";
  document.getElementById("node-count").textContent = (s.nodes || []).length;
  chart("acc-chart", accs.map(a => [a.round, a.accuracy]), 1.0, false);
  const parts = rounds.filter(r => r.participants !== null && r.participants !== undefined);
  chart("part-chart", parts.map(r => [r.round, r.participants]),
        Math.max(1, ...parts.map(r => r.participants)), true);
  fill("#rounds", rounds.map(r => row([
    ["round", r.round], ["accuracy", fmt(r.accuracy, 4)],
    ["participants", r.participants ?? "?"], ["parent", r.parent ?? "?"],
    ["tx", r.proof_tx || "?", true], ["model", r.model || "?", true]],
    {"data-round": r.round})));
  document.getElementById("lineage").textContent = (s.lineage || []).join(" \\u2190 ") || "-";
  const reps = (s.reputations || []).slice().sort((a, b) => b.reputation - a.reputation);
  fill("#reputations", reps.map(r => row([
    ["node", r.node], ["peer", (r.peer || "").slice(0, 16) + "\\u2026", true],
    ["reputation", fmt(r.reputation, 4)], ["last", r.last_round]], {"data-node": r.node})));
  fill("#nodes", (s.nodes || []).map(n => row([
    ["node", n.node], ["role", n.role || "?"], ["peers", n.peers ?? "?"],
    ["rounds-ok", n.rounds_ok ?? "-"], ["last", n.last_round ?? "-"], ["errors", n.errors]],
    {"data-node": n.node})));
  document.body.dataset.loaded = "1";
}
async function poll() {
  try {
    const resp = await fetch("/api/state", {cache: "no-store"});
    render(await resp.json());
  } catch (e) {
    document.getElementById("error").textContent = "dashboard server unreachable: " + e;
  }
  setTimeout(poll, 2000);
}
poll();
</script></body></html>
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="testnet.dashboard", description=__doc__)
    p.add_argument("--dir", type=Path, required=True, help="a testnet run folder")
    p.add_argument("--port", type=int, default=8700, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--chain", default=None, help="chain URL (default: from the nodes' config)")
    args = p.parse_args(argv)
    if not args.dir.is_dir():
        print(f"testnet.dashboard: no run folder at {args.dir}", file=sys.stderr)
        return 2
    with Dashboard(args.dir.resolve(), args.port, args.chain) as dash:
        print(f"dashboard: {dash.url} (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
