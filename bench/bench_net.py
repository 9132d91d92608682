"""Network benchmarks of sorap2p.net, each against a baseline measured in the same run.

    python bench/bench_net.py [--mib 100] [--nodes 4] [--messages 50] [--rate 5] [--members 8]

1. Bulk transfer between two processes over TCP + Noise + Yamux:
   * baseline A: a raw TCP loopback copy of the same bytes (no libp2p),
   * baseline B: one plain py-libp2p stream carrying the same bytes,
   * measured: `fetch_dag` of a UnixFS DAG of that size over ``/sorap2p/car/1.0.0``
     (hash-verified, written to a block store).
2. Gossip across ``--nodes`` processes (a line of hosts): delivery ratio and p50/p99
   latency of ``--messages`` messages published at ``--rate`` msg/s (baseline: one
   ``/sorap2p`` request/response round trip between two of the processes).
3. Subnet lookup time with ``--members`` members behind one bootstrap (in one process;
   baseline: the request/response round trip of part 1).

Prints ratios and writes bench/results/bench_net.json. Keep sizes small on shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

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


async def child_gossip(connect_to: str, seconds: float) -> None:
    registry = ValidatorRegistry({TopicKind.UPDATES: lambda p, d: Validation.ACCEPT})
    latencies: list[float] = []
    async with (
        open_host(IdentityKey.generate()) as host,
        open_gossip(host, registry, GossipConfig()) as gossip,
    ):
        sub = await gossip.subscribe(TOPIC)
        if connect_to != "-":
            await host.connect(connect_to)
        print(json.dumps({"addr": host.listen_addrs()[0]}), flush=True)
        with trio.move_on_after(seconds):
            async for msg in sub:
                sent_ns = int(msg.data[:20])
                latencies.append((time.time_ns() - sent_ns) / 1e6)
        print(json.dumps({"latencies_ms": latencies}), flush=True)


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


async def bench_libp2p(nbytes: int, mib_dag: int) -> dict[str, float]:
    proc = spawn("libp2p", str(nbytes), str(mib_dag))
    assert proc.stdout is not None and proc.stdin is not None
    info = json.loads(await trio.to_thread.run_sync(proc.stdout.readline))
    out: dict[str, float] = {}
    try:
        async with open_host(IdentityKey.generate()) as host:
            peer = await host.connect(info["addr"])
            # plain stream
            s: Stream = await open_stream(host, peer, [STREAM_PROTO])
            t0 = time.perf_counter()
            got = 0
            while chunk := await s.receive_some(CHUNK):
                got += len(chunk)
            out["stream_mib_s"] = got / (1 << 20) / (time.perf_counter() - t0)
            # request/response round trip (gossip latency baseline)
            async with open_request_response(host, PING_PROTO) as rr:
                await rr.request(peer, b"warm")
                rtts = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    await rr.request(peer, b"x" * 64)
                    rtts.append((time.perf_counter() - t0) * 1000)
                out["rtt_ms_p50"] = statistics.median(rtts)
            # CAR DAG
            if mib_dag:
                from sorap2p.core.cid import Cid

                sink = Blockstore(Path(tempfile.mkdtemp(prefix="bench-sink-")))
                report = await fetch_dag(host, sink, Cid.parse(info["root"]), [peer])
                out["car_mib_s"] = report.mib_per_s
                out["car_blocks"] = report.blocks
    finally:
        proc.stdin.close()
        proc.wait()
    return out


async def bench_gossip(nodes: int, messages: int, rate: float) -> dict[str, float]:
    seconds = messages / rate + 8.0
    procs: list[subprocess.Popen[str]] = []
    prev = "-"
    for _ in range(nodes):
        p = spawn("gossip", prev, str(seconds))
        assert p.stdout is not None
        prev = json.loads(await trio.to_thread.run_sync(p.stdout.readline))["addr"]
        procs.append(p)
    registry = ValidatorRegistry({TopicKind.UPDATES: lambda p, d: Validation.ACCEPT})
    async with (
        open_host(IdentityKey.generate()) as host,
        open_gossip(host, registry, GossipConfig()) as gossip,
    ):
        await gossip.subscribe(TOPIC)
        await host.connect(prev)
        with trio.fail_after(20):
            await gossip.wait_for_topic_peers(TOPIC, 1)
        await trio.sleep(2.5)  # meshes form on heartbeats
        for i in range(messages):
            stamp = str(time.time_ns()).rjust(20, "0").encode()
            await gossip.publish(TOPIC, stamp + b"|%d" % i)
            await trio.sleep(1 / rate)
        lat: list[float] = []
        delivered = 0
        for p in procs:
            assert p.stdout is not None
            res = json.loads(await trio.to_thread.run_sync(p.stdout.readline))
            lat.extend(res["latencies_ms"])
            delivered += len(res["latencies_ms"])
            p.wait()
    lat.sort()
    return {
        "delivery_ratio": delivered / (messages * nodes),
        "latency_ms_p50": lat[len(lat) // 2] if lat else float("nan"),
        "latency_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
    }


async def bench_lookup(members: int) -> dict[str, float]:
    cfg = DiscoveryConfig(record_ttl=120, refresh_interval=60)
    subnet = SubnetId("bench")
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(open_host(IdentityKey.generate()))
        await stack.enter_async_context(open_discovery(boot, cfg))
        for i in range(members + 1):
            h = await stack.enter_async_context(open_host(IdentityKey.generate()))
            last = await stack.enter_async_context(open_discovery(h, cfg))
            await last.add_peer(await h.connect(boot.listen_addrs()[0]))
            if i < members:
                await last.join(subnet)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            found = await last.find_members(subnet)
            times.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        last.dht.provider_store.get_providers(subnet.key)
        local_ms = (time.perf_counter() - t0) * 1000
    return {
        "lookup_ms_p50": statistics.median(times),
        "found": len(found),
        "local_read_ms": local_ms,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    nbytes = args.mib << 20
    results: dict[str, Any] = {"mib": args.mib}
    results["raw_tcp_mib_s"] = bench_raw(nbytes)
    results.update(await bench_libp2p(nbytes, args.mib))
    if args.nodes:
        results["gossip"] = await bench_gossip(args.nodes, args.messages, args.rate)
    if args.members:
        results["lookup"] = await bench_lookup(args.members)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "raw":
            child_raw(int(rest[0]))
        elif kind == "libp2p":
            trio.run(child_libp2p, int(rest[0]), int(rest[1]))
        else:
            trio.run(child_gossip, rest[0], float(rest[1]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--members", type=int, default=8)
    args = ap.parse_args()
    r = trio.run(main_async, args)
    raw, stream, car = r["raw_tcp_mib_s"], r["stream_mib_s"], r.get("car_mib_s", 0.0)
    print(f"transfer of {args.mib} MiB between two processes (loopback)")
    print(f"  raw TCP copy          {raw:9.1f} MiB/s   (baseline)")
    print(f"  py-libp2p stream      {stream:9.1f} MiB/s   {stream / raw:6.3f} x raw")
    print(
        f"  CAR DAG fetch         {car:9.1f} MiB/s   {car / raw:6.3f} x raw, "
        f"{car / stream:5.2f} x stream (goal 200 MiB/s)"
    )
    print(f"  request/response RTT  {r['rtt_ms_p50']:9.2f} ms (p50)")
    if "gossip" in r:
        g = r["gossip"]
        print(
            f"gossip over {args.nodes} processes at {args.rate} msg/s: delivery "
            f"{g['delivery_ratio']:.3f}, p50 {g['latency_ms_p50']:.1f} ms "
            f"({g['latency_ms_p50'] / r['rtt_ms_p50']:.1f} x RTT), p99 {g['latency_ms_p99']:.1f} ms"
        )
    if "lookup" in r:
        lk = r["lookup"]
        print(
            f"subnet lookup with {args.members} members: p50 {lk['lookup_ms_p50']:.1f} ms "
            f"({lk['lookup_ms_p50'] / r['rtt_ms_p50']:.1f} x RTT), found {lk['found']}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_net.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
