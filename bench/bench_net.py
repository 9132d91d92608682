"""Network benchmarks of sorap2p.net, each against a baseline measured in the same run.

    python bench/bench_net.py [--mib 100] [--nodes 4] [--messages 40] [--rate 5]
        [--degree 3] [--network 8] [--members 4] [--lookups 10] [--out FILE]

1. Bulk transfer between two processes over TCP + Noise + Yamux (``--mib``; 0 skips):
   * baseline A: a raw TCP loopback copy of the same bytes (no libp2p),
   * baseline B: one plain py-libp2p stream carrying the same bytes,
   * measured: `fetch_dag` of a UnixFS DAG of that size over ``/sorap2p/car/1.0.0``
     (hash-verified, written to a block store), ``--car-runs`` times (medians); also the
     CPU seconds of both processes and of the client's verify and store stages. Block
     stores live under ``$TMPDIR``: the store stage is mostly the kernel's page-cache
     writes, whose cost depends on the file system and on the machine's memory state.
2. Gossip across ``--nodes`` processes (0 skips), each dialling ``--degree`` random
   earlier ones: every process publishes its share of ``--messages`` at ``--rate`` msg/s
   in all; delivery ratio and p50/p99 latency (baseline: one request/response round
   trip between two processes).
3. Subnet lookup in a DHT of ``--network`` processes (0 skips): one bootstrap, every
   node dials it and ``--degree`` - 1 random earlier nodes, ``--members`` join the
   subnet, the others look it up ``--lookups`` times: p50/p95 (same baseline).

Prints ratios and writes ``--out`` (bench/results/bench_net.json). The defaults are a
quick run; the issue's scale is ``--mib 0 --nodes 20 --messages 100`` and
``--mib 0 --nodes 0 --network 30 --members 10 --lookups 40`` (heavy on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from sorap2p.core.cid import Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import SubnetId
from sorap2p.core.topics import Topic, TopicKind
from sorap2p.core.validation import Validation
from sorap2p.net.discovery import DiscoveryConfig, open_discovery
from sorap2p.net.exchange import fetch_dag, serve_car
from sorap2p.net.framing import open_request_response
from sorap2p.net.gossip import GossipConfig, ValidatorRegistry, open_gossip
from sorap2p.net.host import open_host
from sorap2p.net.streams import Stream, open_stream
from sorap2p.store import Blockstore
from sorap2p.store.unixfs import import_bytes

STREAM_PROTO = "/sorap2p/bench-stream/1.0.0"
PING_PROTO = "/sorap2p/bench-ping/1.0.0"
TOPIC = Topic(SubnetId("bench"), TopicKind.UPDATES)
CHUNK = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results"


# -- child processes ----------------------------------------------------------------


def child_raw(nbytes: int) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    buf = os.urandom(CHUNK)
    sent = 0
    while sent < nbytes:
        n = min(CHUNK, nbytes - sent)
        conn.sendall(memoryview(buf)[:n])
        sent += n
    conn.close()


async def child_libp2p(nbytes: int, mib_dag: int) -> None:
    store_dir = Path(tempfile.mkdtemp(prefix="bench-net-"))
    try:
        await _serve_libp2p(nbytes, mib_dag, store_dir)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


async def _serve_libp2p(nbytes: int, mib_dag: int, store_dir: Path) -> None:
    store = Blockstore(store_dir)
    root = import_bytes(store, os.urandom(mib_dag << 20)).root if mib_dag else None
    payload = os.urandom(1 << 20)

    async def stream_handler(raw: Any) -> None:
        s = Stream(raw)
        sent = 0
        while sent < nbytes:
            n = min(len(payload), nbytes - sent)
            await s.send_all(payload[:n])
            sent += n
        await s.aclose()

    async def ping(peer: Any, data: bytes) -> bytes:
        return data

    async with (
        open_host(IdentityKey.generate()) as host,
        serve_car(host, store),
        open_request_response(host, PING_PROTO, ping),
    ):
        from libp2p.custom_types import TProtocol

        host.raw.set_stream_handler(TProtocol(STREAM_PROTO), stream_handler)
        print(json.dumps({"addr": host.listen_addrs()[0], "root": str(root)}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin


def _stdin_lines() -> Any:
    """Lines the parent writes to our stdin, read in a worker thread."""
    return trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


async def child_gossip(index: int, nodes: int, messages: int, rate: float) -> None:
    """One gossip node: connect as told, publish its share of the schedule, time receipts.

    stdin: ``connect <json addrs>``, then ``go <t0 ns>``. stdout: ``{"addr"}``,
    ``{"ready"}``, then ``{"latencies_ms", "published"}``.
    """
    registry = ValidatorRegistry({TopicKind.UPDATES: lambda p, d: Validation.ACCEPT})
    latencies: list[float] = []
    seen_k: list[int] = []
    async with (
        open_host(IdentityKey.generate()) as host,
        open_gossip(host, registry, GossipConfig()) as gossip,
    ):
        sub = await gossip.subscribe(TOPIC)
        print(json.dumps({"addr": host.listen_addrs()[0]}), flush=True)
        addrs = json.loads((await _stdin_lines()).split(" ", 1)[1])
        for addr in addrs:
            await host.connect(addr)
        with trio.fail_after(60):
            await gossip.wait_for_topic_peers(TOPIC, 1)
        print(json.dumps({"ready": len(gossip.topic_peers(TOPIC))}), flush=True)
        t0 = int((await _stdin_lines()).split()[1]) / 1e9
        end = t0 + messages / rate + 5.0
        me = host.peer_id
        published = 0

        async def publish_share() -> None:
            nonlocal published
            for k in range(index, messages, nodes):
                await trio.sleep(max(0.0, t0 + k / rate - time.time()))
                stamp = str(time.time_ns()).rjust(20, "0").encode()
                await gossip.publish(TOPIC, stamp + b"|%d" % k)
                published += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_share)
            with trio.move_on_after(max(1.0, end - time.time())):
                async for msg in sub:
                    if msg.origin != me:
                        sent_ns = int(msg.data[:20])
                        latencies.append((time.time_ns() - sent_ns) / 1e6)
                        seen_k.append(int(msg.data[21:]))
        print(
            json.dumps({"latencies_ms": latencies, "index": seen_k, "published": published}),
            flush=True,
        )


async def child_lookup(bootstrap: str) -> None:
    """One DHT node: ``-`` makes it the bootstrap. stdin commands, one JSON line each:
    ``connect <json addrs>``, ``join``, ``find`` (prints ``{"find_ms", "found"}``)."""
    cfg = DiscoveryConfig(record_ttl=300, refresh_interval=120)
    subnet = SubnetId("bench")
    async with open_host(IdentityKey.generate()) as host, open_discovery(host, cfg) as disc:
        if bootstrap != "-":
            await disc.add_peer(await host.connect(bootstrap))
        print(json.dumps({"addr": host.listen_addrs()[0]}), flush=True)
        while line := (await _stdin_lines()).strip():
            cmd, _, arg = line.partition(" ")
            if cmd == "connect":
                for addr in json.loads(arg):
                    await disc.add_peer(await host.connect(addr))
                print(json.dumps({"table": disc.routing_table_size()}), flush=True)
            elif cmd == "join":
                await disc.join(subnet)
                print(json.dumps({"joined": True}), flush=True)
            elif cmd == "find":
                t0 = time.perf_counter()
                found = await disc.find_members(subnet)
                ms = (time.perf_counter() - t0) * 1000
                print(json.dumps({"find_ms": ms, "found": len(found)}), flush=True)


# -- parent -------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def bench_raw(nbytes: int) -> float:
    proc = spawn("raw", str(nbytes))
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        got = 0
        buf = bytearray(CHUNK)
        while got < nbytes:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
    dt = time.perf_counter() - t0
    proc.wait()
    return got / (1 << 20) / dt


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux; else 0)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _bench_car(
    host: Any, peer: Any, root: Cid, server_pid: int, mib_dag: int, runs: int
) -> dict[str, Any]:
    """``runs`` fetches of the DAG: MiB/s and CPU seconds per 100 MiB (client process,
    server process, and the client's worker-thread stages), the median of each."""
    per_100 = 100 / mib_dag
    sinks = [Path(tempfile.mkdtemp(prefix="bench-sink-")) for _ in range(runs)]
    results: list[dict[str, float]] = []
    try:
        for sink_dir in sinks:
            sink = Blockstore(sink_dir)
            c0, s0 = time.process_time(), _cpu_of(server_pid)
            report = await fetch_dag(host, sink, root, [peer])
            client = (time.process_time() - c0) * per_100
            results.append(
                {
                    "mib_s": report.mib_per_s,
                    "blocks": report.blocks,
                    "client_cpu": client,
                    "server_cpu": (_cpu_of(server_pid) - s0) * per_100,
                    "verify_cpu": report.verify_cpu_s * per_100,
                    "store_cpu": report.store_cpu_s * per_100,
                }
            )
            sink.close()
    finally:
        for sink_dir in sinks:
            shutil.rmtree(sink_dir, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    return {
        "car_runs": results,
        "car_mib_s": med("mib_s"),
        "car_blocks": results[0]["blocks"],
        "car_client_cpu_s_per_100mib": med("client_cpu"),
        "car_server_cpu_s_per_100mib": med("server_cpu"),
        "car_client_verify_cpu_s_per_100mib": med("verify_cpu"),
        "car_client_store_cpu_s_per_100mib": med("store_cpu"),
    }


async def bench_libp2p(nbytes: int, mib_dag: int, car_runs: int = 3) -> dict[str, Any]:
    proc = spawn("libp2p", str(nbytes), str(mib_dag))
    assert proc.stdout is not None and proc.stdin is not None
    info = json.loads(await trio.to_thread.run_sync(proc.stdout.readline))
    out: dict[str, Any] = {}
    try:
        async with open_host(IdentityKey.generate()) as host:
            peer = await host.connect(info["addr"])
            # plain stream
            s: Stream = await open_stream(host, peer, [STREAM_PROTO])
            c0, s0, t0 = time.process_time(), _cpu_of(proc.pid), time.perf_counter()
            got = 0
            while chunk := await s.receive_some(CHUNK):
                got += len(chunk)
            if nbytes:
                out["stream_mib_s"] = got / (1 << 20) / (time.perf_counter() - t0)
                per_100 = (100 << 20) / nbytes
                out["stream_client_cpu_s_per_100mib"] = (time.process_time() - c0) * per_100
                out["stream_server_cpu_s_per_100mib"] = (_cpu_of(proc.pid) - s0) * per_100
            # request/response round trip (gossip latency baseline)
            async with open_request_response(host, PING_PROTO) as rr:
                await rr.request(peer, b"warm")
                rtts = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    await rr.request(peer, b"x" * 64)
                    rtts.append((time.perf_counter() - t0) * 1000)
                out["rtt_ms_p50"] = statistics.median(rtts)
            # CAR DAG, ``car_runs`` times into fresh block stores (all kept until the end:
            # a store deleted between runs would hand its warm page-cache pages to the
            # next run's writes, which then cost the kernel far less)
            if mib_dag:
                out.update(
                    await _bench_car(
                        host, peer, Cid.parse(info["root"]), proc.pid, mib_dag, car_runs
                    )
                )
    finally:
        proc.stdin.close()
        proc.wait()
    return out


class Child:
    """A child process that speaks JSON lines on stdout and takes commands on stdin."""

    def __init__(self, *args: str) -> None:
        self.proc = spawn(*args)

    async def line(self, within: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.fail_after(within):
            text = await trio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        if not text:
            raise RuntimeError(f"child {self.proc.args[3:]} exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(text)
        return out

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def bench_gossip(nodes: int, messages: int, rate: float, degree: int) -> dict[str, Any]:
    """``nodes`` processes, each dialling ``degree`` random earlier ones; every process
    publishes its share of ``messages`` (message k at t0 + k / rate, by node k % nodes)
    and timestamps what it receives from the others."""
    rng = random.Random(1)
    children = [Child("gossip", str(i), str(nodes), str(messages), str(rate)) for i in range(nodes)]
    try:
        addrs = [(await c.line(120))["addr"] for c in children]
        for i, c in enumerate(children):
            peers = rng.sample(range(i), min(degree, i))
            c.send("connect " + json.dumps([addrs[j] for j in peers]))
        for c in children:
            await c.line(120)  # ready: it sees at least one subscribed peer
        t0 = time.time_ns() + 3_000_000_000  # meshes form on the 1 s heartbeats
        for c in children:
            c.send(f"go {t0}")
        results = [await c.line(messages / rate + 60) for c in children]
    finally:
        for c in children:
            c.close()
    lat = [x for r in results for x in r["latencies_ms"]]
    published = sum(r["published"] for r in results)
    # the worst latency of each message (index k was published at t0 + k / rate)
    worst: dict[int, float] = {}
    for r in results:
        for k, ms in zip(r["index"], r["latencies_ms"], strict=True):
            worst[k] = max(worst.get(k, 0.0), ms)
    return {
        "nodes": nodes,
        "messages": messages,
        "rate_msg_s": rate,
        "degree": degree,
        "published": published,
        "delivery_ratio": len(lat) / (published * (nodes - 1)) if published else 0.0,
        "latency_ms_p50": _percentile(lat, 0.5),
        "latency_ms_p99": _percentile(lat, 0.99),
        "latency_ms_max": max(lat) if lat else float("nan"),
        "late_messages": {k: round(ms) for k, ms in sorted(worst.items()) if ms > 500},
    }


async def bench_lookup(network: int, members: int, lookups: int, degree: int) -> dict[str, Any]:
    """A DHT of ``network`` processes (one bootstrap; every other node dials it and
    ``degree`` - 1 random earlier nodes); ``members`` of them join the subnet; the others
    take turns looking the subnet up, ``lookups`` times in all."""
    rng = random.Random(2)
    boot = Child("lookup", "-")
    children: list[Child] = []
    try:
        baddr = (await boot.line(120))["addr"]
        children = [Child("lookup", baddr) for _ in range(network - 1)]
        addrs = [(await c.line(120))["addr"] for c in children]
        tables = []
        for i, c in enumerate(children):
            peers = rng.sample(range(i), min(degree - 1, i))
            c.send("connect " + json.dumps([addrs[j] for j in peers]))
            tables.append((await c.line(60))["table"])
        for c in children[:members]:
            c.send("join")
            await c.line(60)
        searchers = children[members:]
        times: list[float] = []
        first: list[float] = []  # a searcher's first lookup (it dials most peers anew)
        found: list[int] = []
        for k in range(lookups):
            c = searchers[k % len(searchers)]
            c.send("find")
            res = await c.line(60)
            times.append(res["find_ms"])
            if k < len(searchers):
                first.append(res["find_ms"])
            found.append(res["found"])
    finally:
        for c in [boot, *children]:
            c.close()
    return {
        "network": network,
        "members": members,
        "lookups": lookups,
        "degree": degree,
        "routing_table_mean": statistics.mean(tables) if tables else 0,
        "lookup_ms_p50": _percentile(times, 0.5),
        "lookup_ms_p95": _percentile(times, 0.95),
        "lookup_ms_max": max(times) if times else float("nan"),
        "first_lookup_ms_p50": _percentile(first, 0.5),
        "repeat_lookup_ms_p50": _percentile(times[len(first) :], 0.5),
        "found_all_fraction": sum(f == members for f in found) / len(found) if found else 0.0,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    nbytes = args.mib << 20
    results: dict[str, Any] = {"mib": args.mib, "cpus": os.cpu_count()}
    results["load_avg_1min_at_start"] = os.getloadavg()[0]
    if nbytes:
        results["raw_tcp_mib_s"] = bench_raw(nbytes)
    results.update(await bench_libp2p(nbytes, args.mib, args.car_runs))
    if args.nodes:
        results["gossip"] = await bench_gossip(args.nodes, args.messages, args.rate, args.degree)
    if args.network:
        results["lookup"] = await bench_lookup(
            args.network, args.members, args.lookups, args.degree
        )
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "raw":
            child_raw(int(rest[0]))
        elif kind == "libp2p":
            trio.run(child_libp2p, int(rest[0]), int(rest[1]))
        elif kind == "gossip":
            trio.run(child_gossip, int(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]))
        else:
            trio.run(child_lookup, rest[0])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=100, help="transfer size (0: no transfer)")
    ap.add_argument("--car-runs", type=int, default=3, help="CAR fetches (medians printed)")
    ap.add_argument("--nodes", type=int, default=4, help="gossip processes (0: no gossip)")
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--rate", type=float, default=5.0, help="gossip messages per second")
    ap.add_argument("--degree", type=int, default=3, help="dials per joining process")
    ap.add_argument("--network", type=int, default=8, help="DHT processes (0: no lookup)")
    ap.add_argument("--members", type=int, default=4, help="subnet members in that DHT")
    ap.add_argument("--lookups", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_net.json")
    args = ap.parse_args()
    if args.car_runs < 1:
        ap.error("--car-runs must be >= 1")
    if args.network and not 0 < args.members < args.network - 1:
        ap.error("need 0 < --members < --network - 1 (the bootstrap and a searcher)")
    r = trio.run(main_async, args)
    if args.mib:
        raw, stream, car = r["raw_tcp_mib_s"], r["stream_mib_s"], r.get("car_mib_s", 0.0)
        print(f"transfer of {args.mib} MiB between two processes (loopback)")
        print(f"  raw TCP copy          {raw:9.1f} MiB/s   (baseline)")
        print(f"  py-libp2p stream      {stream:9.1f} MiB/s   {stream / raw:6.3f} x raw")
        runs = r.get("car_runs", [])
        print(
            f"  CAR DAG fetch         {car:9.1f} MiB/s   {car / raw:6.3f} x raw, "
            f"{car / stream:5.2f} x stream (goal 200 MiB/s; median of {len(runs)}: "
            + ", ".join(f"{x['mib_s']:.0f}" for x in runs)
            + ")"
        )
        print(
            f"  CPU s per 100 MiB (client + server): stream "
            f"{r['stream_client_cpu_s_per_100mib']:.2f} + "
            f"{r['stream_server_cpu_s_per_100mib']:.2f}, CAR "
            f"{r['car_client_cpu_s_per_100mib']:.2f} + {r['car_server_cpu_s_per_100mib']:.2f}"
        )
        if runs:
            verify = r["car_client_verify_cpu_s_per_100mib"]
            store = r["car_client_store_cpu_s_per_100mib"]
            print(
                f"  CAR client CPU s per 100 MiB by stage (medians): verify {verify:.3f} "
                f"(parse + sha-256), store {store:.3f} (block files: mostly the kernel's "
                f"page-cache writes, which depend on the machine), the rest "
                f"{r['car_client_cpu_s_per_100mib'] - verify - store:.3f} "
                f"(TCP, Noise, Yamux, the event loop)"
            )
    print(f"  request/response RTT  {r['rtt_ms_p50']:9.2f} ms (p50)")
    if "gossip" in r:
        g = r["gossip"]
        print(
            f"gossip over {args.nodes} processes at {args.rate} msg/s: delivery "
            f"{g['delivery_ratio']:.4f}, p50 {g['latency_ms_p50']:.1f} ms "
            f"({g['latency_ms_p50'] / r['rtt_ms_p50']:.1f} x RTT), p99 "
            f"{g['latency_ms_p99']:.1f} ms (goal 100%, p99 <= 500 ms)"
        )
    if "lookup" in r:
        lk = r["lookup"]
        print(
            f"subnet lookup in a {args.network}-process DHT with {args.members} members: "
            f"p50 {lk['lookup_ms_p50']:.1f} ms ({lk['lookup_ms_p50'] / r['rtt_ms_p50']:.1f} x "
            f"RTT), p95 {lk['lookup_ms_p95']:.1f} ms (goal <= 2000), all members found in "
            f"{lk['found_all_fraction']:.0%} of lookups"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
