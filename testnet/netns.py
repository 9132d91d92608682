"""The testnet's network-namespace mode (root only): every node process in its own Linux
network namespace, its links delayed and lossy.

Layout for a run with prefix ``P`` (``sora`` + 4 random hex digits, so parallel runs and
leftovers never collide):

* one namespace ``P-<node>`` per node (``ip netns add``), with ``lo`` up and one link
  ``P0`` holding the node's address ``10.A.B.n/24`` from a private /24 that no route of
  this machine uses;
* the root namespace joins the same /24 as ``10.A.B.1`` on a link ``Ph``; anvil is
  reached from every namespace through a TCP relay on ``10.A.B.1`` to anvil's
  127.0.0.1 port (anvil itself stays on loopback);
* the links meet in a switch that applies the impairment to every packet it delivers
  towards a node (what ``tc qdisc add dev <veth> root netem delay D loss L%`` on each
  node's bridge port does): a fixed one-way delay and independent random loss.

Impairment: with the kernel's ``sch_netem`` the links are veth pairs on a bridge
(``Pbr`` in the root namespace) with netem on each node's bridge-side veth. Kernels
built without netem (CONFIG_NET_SCH_NETEM unset, as on this project's machines) get
the same topology from TUN links and a userspace switch thread with the same
semantics (`LinkEmulator`). Everything is torn down on exit, Ctrl-C and errors:
`NetnsLab.close` deletes the namespaces, links, bridge and relay."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import ipaddress
import json
import os
import random
import secrets
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

CLONE_NEWNET: Final = 0x40000000
TUNSETIFF: Final = 0x400454CA
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
MAX_QUEUED: Final = 65536  # packets held by the switch at once; beyond that they are dropped


class NetnsError(RuntimeError):
    """The namespace mode cannot run here (not root, no `ip netns`, ...)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError(
            "the netns mode needs root (it creates network namespaces and links); "
            "run without --netns, or as root"
        )
    if subprocess.run(["which", "ip"], capture_output=True, check=False).returncode != 0:
        raise NetnsError("the netns mode needs the `ip` command (Debian package iproute2)")


def free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A private /24 in 10.200.0.0/13 that overlaps no address or route of this machine."""
    used = []
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(word if word != "default" else "0.0.0.0/32"))
    for line in ip("-4", "-o", "addr").stdout.splitlines():
        for word in line.split():
            if "/" in word:
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.IPv4Interface(word).network)
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(200, 208)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise NetnsError("no free private /24 in 10.200.0.0/13")


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (probed on a throw-away veth pair)."""
    name = f"snp{secrets.token_hex(3)}"
    if ip("link", "add", name, "type", "veth", "peer", "name", name + "b", check=False).returncode:
        return False
    try:
        out = subprocess.run(
            ["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"],
            capture_output=True,
            check=False,
        )
        return out.returncode == 0
    except FileNotFoundError:
        return False
    finally:
        ip("link", "del", name, check=False)


def _open_tun(netns: str | None, ifname: str) -> int:
    """A TUN device ``ifname`` created inside namespace ``netns`` (None: this one); the
    device lives as long as the returned descriptor is open."""
    result: dict[str, int | BaseException] = {}

    def work() -> None:  # setns applies to the calling thread only: a throw-away thread
        try:
            if netns is not None:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{netns}") as f:
                    if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {netns}")
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TUN | IFF_NO_PI))
            result["fd"] = fd
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    t = threading.Thread(target=work, name="open-tun")
    t.start()
    t.join()
    if "error" in result:
        raise NetnsError(f"TUN {ifname} in {netns}: {result['error']}")
    fd = result["fd"]
    assert isinstance(fd, int)
    return fd


@dataclass(frozen=True)
class LinkStats:
    forwarded: int  # packets delivered
    impaired: int  # packets that reached an impaired link (towards a node)
    dropped_loss: int  # of those, dropped as random loss
    dropped_full: int  # dropped because a queue was full


class LinkEmulator:
    """A userspace switch between TUN links: IPv4 packets are routed by destination
    address; those towards an impaired port are dropped with probability ``loss`` and
    otherwise delivered ``delay_s`` later (a bounded queue), like netem on that link."""

    def __init__(self, delay_s: float, loss: float, rng: random.Random) -> None:
        self.delay_s = delay_s
        self.loss = loss
        self.rng = rng
        self.ports: dict[bytes, tuple[int, bool]] = {}  # packed IPv4 -> (fd, impaired)
        self._sel = selectors.DefaultSelector()
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="link-emulator", daemon=True)
        self.forwarded = self.impaired = self.dropped_loss = self.dropped_full = 0

    def add_port(self, addr: str, fd: int, *, impaired: bool) -> None:
        self.ports[ipaddress.IPv4Address(addr).packed] = (fd, impaired)
        self._sel.register(fd, selectors.EVENT_READ)

    def start(self) -> None:
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def statistics(self) -> LinkStats:
        return LinkStats(self.forwarded, self.impaired, self.dropped_loss, self.dropped_full)

    def _send(self, fd: int, packet: bytes) -> None:
        try:
            os.write(fd, packet)
            self.forwarded += 1
        except OSError:  # the device's queue is full or it went away: a lost packet
            self.dropped_full += 1

    def _route(self, packet: bytes, now: float) -> None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return  # IPv4 only (the kernel's own IPv6 chatter goes nowhere)
        port = self.ports.get(packet[16:20])
        if port is None:
            return
        fd, impaired = port
        if not impaired:
            self._send(fd, packet)
            return
        self.impaired += 1
        if self.rng.random() < self.loss:
            self.dropped_loss += 1
        elif len(self._queue) >= MAX_QUEUED:
            self.dropped_full += 1
        else:
            self._seq += 1
            heapq.heappush(self._queue, (now + self.delay_s, self._seq, fd, packet))

    def _run(self) -> None:
        while not self._stop:
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, fd, packet = heapq.heappop(self._queue)
                self._send(fd, packet)
            timeout = max(0.0, self._queue[0][0] - now) if self._queue else 1.0
            for key, _ in self._sel.select(timeout):
                fd = int(key.fd)
                if fd == self._wake_r:
                    continue
                for _ in range(256):  # drain, but let the delivery queue run
                    try:
                        packet = os.read(fd, 65536)
                    except (BlockingIOError, OSError):
                        break
                    self._route(packet, time.monotonic())


class TcpRelay:
    """Accepts on ``(host, 0)`` and relays each connection to ``127.0.0.1:target_port``:
    anvil stays on loopback and the namespaces reach it through the root's link address."""

    def __init__(self, host: str, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            conn.close()
            return
        conn.settimeout(None)
        upstream.settimeout(None)

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
        back.start()
        pipe(conn, upstream)
        back.join()
        conn.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


class NetnsLab:
    """One run's namespaces and links; a `testnet.cluster.Placement`.

    ``with NetnsLab(delay_ms=100, loss_pct=5) as lab: Cluster(spec, placement=lab)``;
    a namespace is created the first time a node asks for its overrides."""

    def __init__(
        self,
        delay_ms: float,
        loss_pct: float,
        *,
        record: Path | None = None,
        seed: int | None = None,
        use_netem: bool | None = None,
    ) -> None:
        if not 0 <= loss_pct < 100 or delay_ms < 0:
            raise NetnsError("expected 0 <= loss < 100 % and delay >= 0 ms")
        self.delay_ms = delay_ms
        self.loss_pct = loss_pct
        self.record = record
        self.rng = random.Random(seed)
        self.prefix = f"sora{secrets.token_hex(2)}"
        self.use_netem = use_netem
        self.net: ipaddress.IPv4Network | None = None
        self.namespaces: dict[str, tuple[str, str]] = {}  # node -> (namespace, address)
        self.links: list[str] = []  # root-namespace links to delete
        self.fds: list[int] = []
        self.emulator: LinkEmulator | None = None
        self.relay: TcpRelay | None = None
        self._hub = ""
        self._cuts: list[tuple[str, str]] = []  # (namespace, blackholed address)

    @property
    def hub(self) -> str:
        return self._hub

    def open(self) -> NetnsLab:
        require_root()
        while self.leftovers():  # a leftover or parallel run holds this prefix: pick another
            self.prefix = f"sora{secrets.token_hex(2)}"
        if self.use_netem is None:
            self.use_netem = netem_available()
        self.net = free_subnet(self.rng)
        self._hub = str(self.net.network_address + 1)
        try:
            if self.use_netem:
                br = f"{self.prefix}br"
                ip("link", "add", br, "type", "bridge")
                self.links.append(br)
                ip("addr", "add", f"{self._hub}/24", "dev", br)
                ip("link", "set", br, "up")
            else:
                fd = _open_tun(None, f"{self.prefix}h")
                self.fds.append(fd)
                ip("addr", "add", f"{self._hub}/24", "dev", f"{self.prefix}h")
                ip("link", "set", f"{self.prefix}h", "up")
                self.emulator = LinkEmulator(self.delay_ms / 1000, self.loss_pct / 100, self.rng)
                self.emulator.add_port(self._hub, fd, impaired=False)
                self.emulator.start()
        except BaseException:
            self.close()
            raise
        self._save()
        return self

    def _save(self, stats: LinkStats | None = None) -> None:
        if self.record is not None:
            self.record.write_text(
                json.dumps(
                    {
                        "prefix": self.prefix,
                        "subnet": str(self.net),
                        "hub": self._hub,
                        "delay_ms": self.delay_ms,
                        "loss_pct": self.loss_pct,
                        "impairment": "netem" if self.use_netem else "userspace",
                        "namespaces": self.namespaces,
                        "link_stats": asdict(stats) if stats is not None else None,
                    },
                    indent=1,
                )
            )

    def add_node(self, name: str) -> str:
        """Create ``name``'s namespace and link; returns its address."""
        if name in self.namespaces:
            return self.namespaces[name][1]
        assert self.net is not None
        if len(self.namespaces) >= 250:
            raise NetnsError("the netns mode holds at most 250 nodes (one /24)")
        ns = f"{self.prefix}-{name}"
        addr = str(self.net.network_address + 2 + len(self.namespaces))
        ip("netns", "add", ns)
        self.namespaces[name] = (ns, addr)
        ip("-n", ns, "link", "set", "lo", "up")
        dev = f"{self.prefix}0"
        if self.use_netem:
            outer = f"{self.prefix}v{len(self.namespaces)}"
            ip("link", "add", outer, "type", "veth", "peer", "name", dev)
            self.links.append(outer)
            ip("link", "set", dev, "netns", ns)
            ip("link", "set", outer, "master", f"{self.prefix}br", "up")
            if self.delay_ms or self.loss_pct:  # 0 and 0: plain links
                netem = ["delay", f"{self.delay_ms}ms", "loss", f"{self.loss_pct}%"]
                tc = ["tc", "qdisc", "add", "dev", outer, "root", "netem", *netem]
                out = subprocess.run(tc, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise NetnsError(f"{' '.join(tc)}: {out.stderr.strip()}")
        else:
            fd = _open_tun(ns, dev)
            self.fds.append(fd)
            assert self.emulator is not None
            self.emulator.add_port(addr, fd, impaired=True)
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        self._save()
        return addr

    # -- partitions --------------------------------------------------------------------
    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every node of each group off from every node of the other groups, in both
        directions, with blackhole routes in their namespaces (packets silently vanish, as
        on a severed link; the chain relay stays reachable). `heal` removes them."""
        sides = [[self.namespaces[n] for n in g] for g in groups]
        for i, side in enumerate(sides):
            others = [addr for j, o in enumerate(sides) if j != i for _, addr in o]
            for ns, _ in side:
                for addr in others:
                    ip("-n", ns, "route", "add", "blackhole", f"{addr}/32")
                    self._cuts.append((ns, addr))

    def heal(self) -> None:
        """Remove every cut made by `partition`."""
        cuts, self._cuts = self._cuts, []
        for ns, addr in cuts:
            ip("-n", ns, "route", "del", "blackhole", f"{addr}/32", check=False)

    # -- Placement ---------------------------------------------------------------------
    def command_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[name][0]]

    def overrides(self, name: str, chain_url: str) -> list[str]:
        addr = self.add_node(name)
        if self.relay is None:
            self.relay = TcpRelay(self._hub, int(chain_url.rsplit(":", 1)[1]))
        return [
            f"network.listen=/ip4/{addr}/tcp/0",
            f"chain.url=http://{self._hub}:{self.relay.port}",
        ]

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Delete everything this lab created; safe to call twice and after errors."""
        if self.emulator is not None and self.net is not None:
            self._save(self.emulator.statistics())
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        for ns, _ in self.namespaces.values():
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        for link in reversed(self.links):
            ip("link", "del", link, check=False)
        self.links.clear()
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def leftovers(self) -> list[str]:
        """Namespaces and links of this run that still exist (empty after `close`)."""
        out = [n for n in ip("netns", "list").stdout.split() if n.startswith(self.prefix)]
        for line in ip("-o", "link").stdout.splitlines():
            parts = line.split(":")
            if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(self.prefix):
                out.append(parts[1].strip())
        return out

    def __enter__(self) -> NetnsLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
