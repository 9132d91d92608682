"""The localhost status API: a real h11 server on 127.0.0.1, real sockets, real clients;
one test opens real node services and one runs `run_node` with the API configured."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.config import Config, StatusSection, load_config
from sorap2p.core.errors import ConfigError
from sorap2p.node.driver import wall_clock_ms
from sorap2p.node.home import Home
from sorap2p.node.http import (
    MAX_BODY,
    MAX_HEAD,
    METRICS_TYPE,
    StatusApp,
    StatusServer,
    render_metrics,
    serve_http,
    serve_status,
)
from sorap2p.node.runner import run_node
from sorap2p.node.services import open_services
from sorap2p.node.status import STATUS_FILE, ErrorLog, read_status, round_summary
from tests.net.helpers_net import eventually

DOC: dict[str, Any] = {
    "peer_id": "12D3KooWtest",
    "role": "trainer",
    "subnet": "digits",
    "peers": 3,
    "membership": {"aggregator": None, "members": 0, "validators": ["a", "b"], "quorum": 2},
    "rounds": {"ok": 4, "failed": 1, "last": 5},
    "machine": {
        "state": "IDLE",
        "handled": {"RoundOpened": 5, "TrainingDone": 4},
        "ignored": {"IDLE:TimerFired": 2},
        "transitions": 11,
    },
    "gossip": {"accepted": 7, "rejected": 1, "ignored": 2, "published": 4},
    "blockstore": {"blocks": 12, "bytes": 4096, "temp_files": 0, "quarantined": 0, "pins": 2},
    "chain": {"attached": False, "validator_set_version": 0, "validator_set_size": 0},
    "errors_total": {"warning": 3},
}


# --------------------------------------------------------------------------- helpers


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, half-close nothing, and read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return bytes(out)


def parse_responses(
    raw: bytes, heads: tuple[bool, ...] = ()
) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse every response in ``raw`` with an h11 client (``heads[i]``: i-th was HEAD)."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    i = 0
    while True:
        method = "HEAD" if i < len(heads) and heads[i] else "GET"
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Response):
                status = ev.status_code
                headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                return out
        out.append((status, headers, body))
        i += 1
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out
        conn.start_next_cycle()


def get(path: str, method: str = "GET", *, close: bool = True, extra: str = "") -> bytes:
    conn = "connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{conn}{extra}\r\n".encode()


async def fetch(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    [resp] = parse_responses(await exchange(port, get(path, method)), (method == "HEAD",))
    return resp


class Source:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")
        return dict(DOC)


@asynccontextmanager
async def server(**kw: Any) -> AsyncIterator[tuple[int, StatusServer, Source]]:
    source = Source()
    srv = StatusServer(StatusApp(source), **kw)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_http(source, task_status=task_status, server=srv)
        )
        yield port, srv, source
        nursery.cancel_scope.cancel()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --------------------------------------------------------------------------- routes


async def test_routes() -> None:
    async with server() as (port, srv, source):
        status, headers, body = await fetch(port, "/healthz")
        assert (status, body) == (200, b"ok\n")
        status, headers, body = await fetch(port, "/status?pretty=1")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == DOC
        status, headers, body = await fetch(port, "/metrics")
        assert status == 200 and headers["content-type"] == METRICS_TYPE
        metrics = parse_metrics(body.decode())
        assert metrics[("sorap2p_peers", ())] == 3
        status, headers, body = await fetch(port, "/status", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 10
        status, headers, _ = await fetch(port, "/nothing")
        assert status == 404
        status, headers, _ = await fetch(port, "/status", "DELETE")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert source.calls == 3  # /healthz, 404 and 405 build no document
        assert srv.statistics()["served"] == 6


async def test_keep_alive_and_pipelining() -> None:
    async with server() as (port, _srv, _):
        raw = get("/healthz", close=False) + get("/status", close=False) + get("/metrics")
        responses = parse_responses(await exchange(port, raw))
        assert [r[0] for r in responses] == [200, 200, 200]
        assert json.loads(responses[1][2])["role"] == "trainer"
        assert b"sorap2p_info" in responses[2][2]


async def test_failing_document_is_500_and_server_survives() -> None:
    async with server() as (port, srv, source):
        source.fail = True
        assert (await fetch(port, "/status"))[0] == 500
        source.fail = False
        assert (await fetch(port, "/status"))[0] == 200
        assert srv.statistics()["errors"] == 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"NOT AN HTTP REQUEST\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without host
        (b"GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n", 431),
        (
            b"GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY + 10)
            + b"b" * (MAX_BODY + 10),
            413,
        ),
        (b"\x00\xff\x16\x03\x01 tls hello?\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_get_4xx_and_server_keeps_serving(raw: bytes, code: int) -> None:
    async with server() as (port, _srv, _):
        [resp] = parse_responses(await exchange(port, raw))
        assert resp[0] == code
        assert (await fetch(port, "/healthz"))[0] == 200


async def test_client_that_hangs_up_or_stalls_is_dropped() -> None:
    async with server(timeout=0.3) as (port, _srv, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()  # connect and leave
        # send half a request and wait: the server closes the connection at its deadline
        assert await exchange(port, b"GET /status HTTP/1.1\r\nhost:") == b""
        assert (await fetch(port, "/healthz"))[0] == 200


async def test_concurrent_clients() -> None:
    async with server() as (port, _srv, _):
        results: list[int] = []

        async def one(i: int) -> None:
            path = ("/status", "/metrics", "/healthz")[i % 3]
            results.append((await fetch(port, path))[0])

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
        assert results == [200] * 30


async def test_connection_limit_answers_503() -> None:
    async with server(max_clients=2) as (port, srv, _):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await eventually(lambda: srv.active == 2)
        raw = await exchange(port, get("/healthz"))
        assert raw.startswith(b"HTTP/1.1 503 ")
        for s in idle:
            await s.aclose()
        await eventually(lambda: srv.active == 0)
        assert (await fetch(port, "/healthz"))[0] == 200


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda line, rest: line + b"\r\n" + rest,
            st.sampled_from(
                [b"GET /status HTTP/1.1", b"HEAD /metrics HTTP/1.0", b"GET /healthz HTTP/1.1"]
            ),
            st.binary(max_size=300),
        ),
    )
)
async def test_arbitrary_bytes_get_an_http_answer_or_a_close(raw: bytes) -> None:
    """Whatever a client sends, the connection handler answers with HTTP or closes, and
    returns without raising (over an in-memory stream: no sockets, so many examples)."""
    srv = StatusServer(StatusApp(Source()), timeout=5)
    client, server_end = trio.testing.memory_stream_pair()
    out = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(srv.handle, server_end)
            await client.send_all(raw)
            await client.send_eof()
            while chunk := await client.receive_some(65536):
                out += chunk
    if out:  # (the first status line: a HEAD answer has no body to parse past)
        assert out.startswith(b"HTTP/1.1 ")
        assert int(out[9:12]) in {200, 400, 404, 405, 413, 431, 501, 505}
    assert srv.statistics()["errors"] == 0 and srv.active == 0


# --------------------------------------------------------------------------- documents


def test_metrics_exposition_parses_and_carries_values() -> None:
    doc = {**DOC, "peer_id": 'we"ird\\id\nx'}
    m = parse_metrics(render_metrics(doc))
    assert (
        m[
            (
                "sorap2p_info",
                (("peer_id", 'we"ird\\id\nx'), ("role", "trainer"), ("subnet", "digits")),
            )
        ]
        == 1
    )
    assert m[("sorap2p_rounds_finished_total", (("ok", "true"),))] == 4
    assert m[("sorap2p_rounds_finished_total", (("ok", "false"),))] == 1
    assert m[("sorap2p_round", ())] == 5
    assert m[("sorap2p_gossip_accepted_total", ())] == 7
    assert m[("sorap2p_gossip_rejected_total", ())] == 1
    assert m[("sorap2p_gossip_ignored_total", ())] == 2
    assert m[("sorap2p_blockstore_blocks", ())] == 12
    assert m[("sorap2p_blockstore_bytes", ())] == 4096
    assert m[("sorap2p_machine_state", (("state", "IDLE"),))] == 1
    assert m[("sorap2p_machine_transitions_total", ())] == 11
    assert m[("sorap2p_machine_handled_total", (("event", "RoundOpened"),))] == 5
    assert m[("sorap2p_machine_ignored_total", (("event", "TimerFired"), ("state", "IDLE")))] == 2
    assert m[("sorap2p_subnet_validators", ())] == 2
    assert m[("sorap2p_chain_attached", ())] == 0
    assert m[("sorap2p_log_messages_total", (("level", "warning"),))] == 3


def test_metrics_of_a_sparse_document() -> None:
    """A node without a round machine, rounds or blockstore statistics still exposes a
    valid text; unknown counts are left out rather than reported as zero."""
    doc = {"peer_id": "p", "role": "bootstrap", "subnet": "s", "rounds": {"ok": None}}
    m = parse_metrics(render_metrics(doc))
    assert m[("sorap2p_info", (("peer_id", "p"), ("role", "bootstrap"), ("subnet", "s")))] == 1
    assert not any(name.startswith("sorap2p_rounds_finished") for name, _ in m)
    assert not any(name.startswith("sorap2p_machine") for name, _ in m)


def test_round_summary_per_role() -> None:
    trainer = {"role": "trainer", "rounds_trained": 3, "last_round": 4}
    assert round_summary(trainer) == {"ok": 3, "failed": None, "last": 4}
    agg = {"rounds": [{"round": 1, "ok": True}, {"round": 2, "ok": False}], "head_round": 1}
    assert round_summary(agg) == {"ok": 1, "failed": 1, "last": 2}
    val = {"checks": [{"ok": True}, {"ok": True}], "last_round": {"round": 2, "ok": True}}
    assert round_summary(val) == {"ok": 2, "failed": 0, "last": 2}
    assert round_summary({}) == {"ok": None, "failed": None, "last": None}
    assert round_summary({"rounds_ok": 5, "rounds_failed": 2}) == {
        "ok": 5,
        "failed": 2,
        "last": None,
    }


def test_error_log_is_bounded_and_counts() -> None:
    log = ErrorLog(capacity=3)
    logger = logging.getLogger("sorap2p.test_http.errorlog")
    logger.addHandler(log)
    try:
        for i in range(5):
            logger.warning("w%d", i)
        logger.error("bad %s", "thing")
        logger.info("not captured")
    finally:
        logger.removeHandler(log)
    assert [r["msg"] for r in log.recent()] == ["w3", "w4", "bad thing"]
    assert log.totals == {"warning": 5, "error": 1}


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("", None),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:8080", ConfigError),
        ("192.168.1.2:80", ConfigError),
        ("[::1]:80", ConfigError),
        ("127.0.0.1", ConfigError),
        ("127.0.0.1:70000", ConfigError),
        ("127.0.0.1:-1", ConfigError),
        ("localhost:http", ConfigError),
    ],
)
def test_status_listen_validation(listen: str, expected: Any) -> None:
    section = StatusSection(listen=listen)
    if expected is ConfigError:
        with pytest.raises(ConfigError, match=r"status\.listen"):
            load_config("", {}, [f"status.listen={listen}"]).validate()
        with pytest.raises(ConfigError):
            section.address()
    else:
        assert section.address() == expected
        load_config("", {}, [f"status.listen={listen}"]).validate()


# --------------------------------------------------------------------------- real node


def make_home(tmp: Path, overrides: list[str]) -> tuple[Home, Config]:
    home = Home(tmp / "node")
    cfg = load_config("", {}, ["node.role=bootstrap", "node.subnet=httptest", *overrides])
    home.init(cfg)
    return home, home.load_config({})


@pytest.mark.net
async def test_serve_status_of_real_services(tmp_path: Path) -> None:
    home, cfg = make_home(tmp_path, ["status.listen=127.0.0.1:0"])
    async with (
        open_services(cfg, home, clock=wall_clock_ms) as services,
        trio.open_nursery() as nursery,
    ):
        services.blocks.put(b"a block of bytes")
        port = await nursery.start(serve_status, services)
        assert port > 0 and services.extras["status_url"] == f"http://127.0.0.1:{port}"
        logging.getLogger("sorap2p.test_http").warning("disk %s is nearly full", "/x")
        status, _, body = await fetch(port, "/status")
        doc = json.loads(body)
        assert status == 200
        assert doc["peer_id"] == str(services.identity.peer_id)
        assert doc["role"] == "bootstrap" and doc["subnet"] == "httptest"
        assert doc["status_url"] == f"http://127.0.0.1:{port}"
        assert doc["blockstore"]["blocks"] == 1 and doc["blockstore"]["bytes"] >= 16
        assert doc["chain"]["attached"] is False
        assert doc["errors"][-1]["msg"] == "disk /x is nearly full"
        assert doc["errors_total"] == {"warning": 1}
        metrics = parse_metrics((await fetch(port, "/metrics"))[2].decode())
        assert metrics[("sorap2p_peers", ())] == 0
        assert metrics[("sorap2p_blockstore_blocks", ())] == 1
        assert metrics[("sorap2p_log_messages_total", (("level", "warning"),))] == 1
        nursery.cancel_scope.cancel()
    assert "status_url" not in services.extras
    assert not any(isinstance(h, ErrorLog) for h in logging.getLogger("sorap2p").handlers)


@pytest.mark.net
async def test_serve_status_logs_a_port_in_use_and_returns(tmp_path: Path) -> None:
    taken = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = taken[0].socket.getsockname()[1]
    home, cfg = make_home(tmp_path, [f"status.listen=127.0.0.1:{port}"])
    async with open_services(cfg, home, clock=wall_clock_ms) as services:
        assert await serve_status(services) is None  # returns instead of crashing the node
        assert "status_url" not in services.extras
        errors = services.extras["error_log"].recent()
        assert "cannot listen" in errors[-1]["msg"]
    for listener in taken:
        await listener.aclose()


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger("sorap2p")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


@pytest.mark.net
async def test_run_node_serves_status_and_records_its_url(
    tmp_path: Path, restore_logging: None
) -> None:
    home, cfg = make_home(tmp_path, ["status.listen=localhost:0", "node.log_level=warning"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_node(cfg, home, lambda addrs: None))

        def published_url() -> bool:
            return (home.path / STATUS_FILE).exists() and bool(
                read_status(home.path).get("status_url")
            )

        await eventually(published_url, within=60)
        url = read_status(home.path)["status_url"]
        assert url.startswith("http://127.0.0.1:")
        status, _, body = await fetch(int(url.rsplit(":", 1)[1]), "/status")
        assert status == 200 and json.loads(body)["peer_id"] == str(home.identity_key().peer_id)
        nursery.cancel_scope.cancel()
