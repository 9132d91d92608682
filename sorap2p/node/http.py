"""The node's status API: a small HTTP/1.1 server (h11 on trio) bound to 127.0.0.1 only.

Routes (GET or HEAD):

* ``/status``  the JSON status document: `sorap2p.node.status.snapshot` plus blockstore
  statistics and the last warnings/errors;
* ``/metrics`` Prometheus text exposition format 0.0.4 (`render_metrics`);
* ``/healthz`` ``ok``.

Unknown paths get 404, other methods 405, malformed requests 400, oversized heads 431 and
bodies 413; every connection has a deadline and the number of concurrent connections is
bounded (503 beyond it). Nothing a client sends can stop the server or the node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

import h11
import trio

from sorap2p.node.services import Services
from sorap2p.node.status import capture_errors, snapshot

_log = logging.getLogger(__name__)

MAX_HEAD: Final = 8 * 1024  # request line + headers
MAX_BODY: Final = 16 * 1024  # GET requests have none; tolerate a small one
RECEIVE_CHUNK: Final = 4096
REQUEST_TIMEOUT_S: Final = 10.0  # to read a request and send its response (and keep-alive idle)
MAX_CLIENTS: Final = 32
LINGER_S: Final = 1.0  # after an error response, drain the client's input this long ...
LINGER_BYTES: Final = 64 * 1024  # ... or this much
STATS_TTL_S: Final = 1.0  # blockstore statistics walk the disk: reuse them this long
SERVER_NAME: Final = "sorap2p"
JSON_TYPE: Final = "application/json"
METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE: Final = "text/plain; charset=utf-8"
_BUSY: Final = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT_TYPE
    headers: tuple[tuple[str, str], ...] = ()


_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class _RequestTooLargeError(Exception):
    pass


# --------------------------------------------------------------------------- documents

StatusFn = Callable[[], Awaitable[dict[str, Any]]]


class ServicesStatus:
    """Builds the status document of a running node; blockstore statistics (a walk of the
    block directory, in a worker thread) are cached for ``ttl`` seconds."""

    def __init__(self, services: Services, *, ttl: float = STATS_TTL_S) -> None:
        self.services = services
        self.ttl = ttl
        self._stats: dict[str, Any] | None = None
        self._stats_at = -math.inf
        self._lock = trio.Lock()

    async def blockstore(self) -> dict[str, Any]:
        async with self._lock:
            if self._stats is None or trio.current_time() - self._stats_at >= self.ttl:
                stats = await trio.to_thread.run_sync(self.services.blocks.stats)
                self._stats, self._stats_at = asdict(stats), trio.current_time()
            return dict(self._stats)

    async def __call__(self) -> dict[str, Any]:
        doc = snapshot(self.services)
        doc["blockstore"] = await self.blockstore()
        return doc


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, Any], float]],
    ) -> None:
        rows = list(samples)
        if not rows:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        suffix = "_total" if kind == "counter" else ""
        for labels, value in rows:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{suffix}{{{text}}} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def render_metrics(doc: dict[str, Any]) -> str:
    """The Prometheus text exposition (format 0.0.4) of a status document."""
    out = _Exposition()
    out.add(
        "sorap2p_info",
        "gauge",
        "Identity of this node (always 1).",
        [
            (
                {
                    "peer_id": doc.get("peer_id"),
                    "role": doc.get("role"),
                    "subnet": doc.get("subnet"),
                },
                1,
            )
        ],
    )
    if _int(doc.get("peers")) is not None:
        out.add("sorap2p_peers", "gauge", "Connected peers.", [({}, doc["peers"])])
    membership = doc.get("membership") or {}
    out.add(
        "sorap2p_subnet_members",
        "gauge",
        "Known subnet members (0: open membership).",
        [({}, v) for v in [_int(membership.get("members"))] if v is not None],
    )
    out.add(
        "sorap2p_subnet_validators",
        "gauge",
        "Validators in the current set.",
        [({}, len(membership.get("validators") or []))],
    )
    out.add(
        "sorap2p_subnet_quorum",
        "gauge",
        "Votes a proof needs.",
        [({}, v) for v in [_int(membership.get("quorum"))] if v is not None],
    )
    rounds = doc.get("rounds") or {}
    out.add(
        "sorap2p_round",
        "gauge",
        "The last round this node finished or worked on.",
        [({}, v) for v in [_int(rounds.get("last"))] if v is not None],
    )
    out.add(
        "sorap2p_rounds_finished",
        "counter",
        "Rounds finished by this node's round machine, by outcome.",
        [
            ({"ok": label}, v)
            for label, v in (
                ("true", _int(rounds.get("ok"))),
                ("false", _int(rounds.get("failed"))),
            )
            if v is not None
        ],
    )
    machine = doc.get("machine")
    if isinstance(machine, dict):
        out.add(
            "sorap2p_machine_state",
            "gauge",
            "The round machine's current state (1 for the current one).",
            [({"state": machine.get("state")}, 1)],
        )
        out.add(
            "sorap2p_machine_transitions",
            "counter",
            "Events the round machine applied.",
            [({}, v) for v in [_int(machine.get("transitions"))] if v is not None],
        )
        out.add(
            "sorap2p_machine_handled",
            "counter",
            "Events the round machine handled, by event.",
            [({"event": k}, v) for k, v in sorted((machine.get("handled") or {}).items())],
        )
        ignored = sorted((machine.get("ignored") or {}).items())
        out.add(
            "sorap2p_machine_ignored",
            "counter",
            "Events the round machine ignored (late or duplicate), by state and event.",
            [({"state": k.partition(":")[0], "event": k.partition(":")[2]}, v) for k, v in ignored],
        )
    for key, value in sorted((doc.get("gossip") or {}).items()):
        if _int(value) is not None:
            out.add(f"sorap2p_gossip_{key}", "counter", f"Gossip messages {key}.", [({}, value)])
    store = doc.get("blockstore") or {}
    for key, help_text in (
        ("blocks", "Blocks in the blockstore."),
        ("bytes", "Bytes of blocks in the blockstore."),
        ("pins", "Pinned roots."),
        ("temp_files", "Unfinished block writes."),
        ("quarantined", "Blocks quarantined after failing their hash check."),
    ):
        if _int(store.get(key)) is not None:
            out.add(f"sorap2p_blockstore_{key}", "gauge", help_text, [({}, store[key])])
    chain = doc.get("chain") or {}
    if "attached" in chain:
        out.add(
            "sorap2p_chain_attached",
            "gauge",
            "1 when a chain is attached.",
            [({}, chain["attached"])],
        )
        out.add(
            "sorap2p_chain_validator_set_version",
            "gauge",
            "Version of the validator set seen on chain.",
            [({}, v) for v in [_int(chain.get("validator_set_version"))] if v is not None],
        )
    totals = doc.get("errors_total") or {}
    out.add(
        "sorap2p_log_messages",
        "counter",
        "Warnings and errors logged, by level.",
        [({"level": k}, v) for k, v in sorted(totals.items()) if _int(v) is not None],
    )
    return out.text()


# --------------------------------------------------------------------------- routing


def _json(status: int, data: Any) -> Response:
    body = (json.dumps(data, indent=1, default=str) + "\n").encode()
    return Response(status, body, JSON_TYPE)


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode(), TEXT_TYPE)


class StatusApp:
    """Maps a request (method, target) to a `Response`; ``status`` builds the document."""

    ROUTES: Final = ("/status", "/metrics", "/healthz")

    def __init__(self, status: StatusFn) -> None:
        self.status = status

    async def respond(self, method: str, target: str) -> Response:
        path = target.partition("?")[0]
        if path not in self.ROUTES:
            return _text(404, "not found\n")
        if method not in {"GET", "HEAD"}:
            return Response(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        if path == "/healthz":
            return _text(200, "ok\n")
        doc = await self.status()
        if path == "/metrics":
            return Response(200, render_metrics(doc).encode(), METRICS_TYPE)
        return _json(200, doc)


# --------------------------------------------------------------------------- server


class StatusServer:
    """Serves a `StatusApp` over HTTP/1.1 (keep-alive) on already bound listeners."""

    def __init__(
        self,
        app: StatusApp,
        *,
        timeout: float = REQUEST_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.max_clients = max_clients
        self.active = 0
        self.served = 0
        self.errors = 0

    def statistics(self) -> dict[str, int]:
        return {"active": self.active, "served": self.served, "errors": self.errors}

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection; never raises (but for cancellation)."""
        if self.active >= self.max_clients:
            with trio.move_on_after(LINGER_S), contextlib.suppress(*_GONE):
                await stream.send_all(_BUSY)
                await _linger(stream)
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        try:
            await self._serve(stream)
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                with trio.move_on_after(self.timeout):
                    request = await self._read_request(stream, conn)
                    if request is None:
                        return
                    method = request.method.decode("ascii", "replace")
                    target = request.target.decode("ascii", "replace")
                    try:
                        response = await self.app.respond(method, target)
                    except Exception as exc:
                        self.errors += 1
                        _log.warning("status API: %s %s failed: %r", method, target, exc)
                        response = _text(500, "internal error\n")
                    await self._send(stream, conn, response, head=method == "HEAD")
                    self.served += 1
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # timed out, or either side asked to close
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._send_error(stream, conn, exc.error_status_hint, str(exc))
        except _RequestTooLargeError:
            await self._send_error(stream, conn, 413, "request body too large")
        except _GONE:
            pass  # the client went away
        except Exception as exc:
            self.errors += 1
            _log.warning("status API connection failed: %r", exc)

    async def _read_request(
        self, stream: trio.abc.Stream, conn: h11.Connection
    ) -> h11.Request | None:
        request: h11.Request | None = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_CHUNK))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_BODY:
                    raise _RequestTooLargeError
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen before our response; treat as closed
                return None

    async def _send(
        self, stream: trio.abc.Stream, conn: h11.Connection, response: Response, *, head: bool
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            ("server", SERVER_NAME),
            *response.headers,
        ]
        if response.status >= 400 and response.status not in {404, 405}:
            headers.append(("connection", "close"))
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        assert data is not None
        await stream.send_all(data)
        if not head and response.body:
            data = conn.send(h11.Data(data=response.body))
            assert data is not None
            await stream.send_all(data)
        data = conn.send(h11.EndOfMessage())
        assert data is not None
        await stream.send_all(data)

    async def _send_error(
        self, stream: trio.abc.Stream, conn: h11.Connection, status: int, reason: str
    ) -> None:
        if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            return
        _log.debug("status API: bad request (%d): %s", status, reason)
        with trio.move_on_after(self.timeout):
            with contextlib.suppress(*_GONE, h11.LocalProtocolError):
                await self._send(stream, conn, _text(status, f"{reason}\n"), head=False)
                await _linger(stream)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close and read what the client is still sending (a bounded amount, for a short
    time) so that closing with unread input does not reset the connection before the client
    has read our error response."""
    with trio.move_on_after(LINGER_S):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES:
            chunk = await stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                return
            drained += len(chunk)


async def serve_http(
    status: StatusFn,
    port: int = 0,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    server: StatusServer | None = None,
) -> None:
    """Serve the status API on 127.0.0.1:``port`` (0: a free one) until cancelled; the bound
    port is passed to ``task_status.started``."""
    server = server or StatusServer(StatusApp(status))
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.handle, listeners)
        task_status.started(bound)


async def serve_status(services: Services, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the node's status API at ``config.status.listen`` until cancelled, recording its
    URL in ``services.extras["status_url"]``. A port that cannot be bound is logged as an
    error and leaves the node running without the API."""
    address = services.config.status.address()
    if address is None:
        task_status.started(0)
        return
    source = ServicesStatus(services)
    with capture_errors(services):
        try:
            listeners = await trio.open_tcp_listeners(address[1], host=address[0])
        except OSError as exc:
            _log.error("status API: cannot listen on %s: %s", services.config.status.listen, exc)
            task_status.started(0)
            return
        port = listeners[0].socket.getsockname()[1]
        services.extras["status_url"] = f"http://127.0.0.1:{port}"
        _log.info("status API on http://127.0.0.1:%d/status", port)
        server = StatusServer(StatusApp(source))
        services.extras["status_server"] = server
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, server.handle, listeners)
                task_status.started(port)
        finally:
            services.extras.pop("status_url", None)
