"""A libp2p host with sorap2p's transport policy, and the peer-id bridge to the core.

Policy (FIELD-NOTES pitfalls 1, 2, 3, 12, 13):

* TCP only, **Noise only** (`sec_opt` names Noise alone, so a dialer that offers only
  ``/plaintext/2.0.0``, SECIO or TLS fails the security negotiation), **Yamux only**.
* The libp2p identity is the node's Ed25519 `IdentityKey`: the libp2p peer id equals
  ``identity.peer_id`` (checked at start-up).
* ``ConnectionConfig(max_connections_per_peer=1)``: dials return as soon as one connection
  is up instead of waiting out the 250 ms happy-eyeballs delay. One quick dial retry
  (not three with backoff); an explicit `Host.connect` bypasses libp2p's 60 s negative
  dial cache; closing closes all connections concurrently (libp2p sleeps 0.2 s in each).
* mDNS, UPnP, libp2p's own bootstrap module and its auto-connector (which dials every
  peer in the peerstore up to half the high watermark) are off.
* libp2p's log records are forwarded into ``sorap2p.net.libp2p`` two levels down (its
  ERROR/WARNING per normal stream or connection close become INFO/DEBUG), never printed
  by Python's last-resort handler.
* Yamux is our subclass (`sorap2p.net.muxer`): it never grants a peer more credit than
  py-libp2p accepts in one frame (16 MiB), and writes larger frames. Noise reads through
  a read-ahead buffer (`sorap2p.net.noise`).
* Closing: `open_host` closes the libp2p host *inside* its service context; services
  stacked on top (gossip) call `Host.aclose` before leaving their own service context.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId

_log = logging.getLogger(__name__)

DEFAULT_LISTEN: Final = ("/ip4/127.0.0.1/tcp/0",)
NOISE_PROTOCOL: Final = "/noise"
YAMUX_PROTOCOL: Final = "/yamux/1.0.0"
LIBP2P_LOGGER: Final = "sorap2p.net.libp2p"


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Connection limits and timeouts of a host (defaults suit a laptop-sized node)."""

    max_connections: int = 256
    dial_timeout: float = 10.0
    upgrade_timeout: float = 10.0
    negotiate_timeout: int = 10
    close_timeout: float = 2.0

    def validate(self) -> None:
        if self.max_connections < 1:
            raise LocalProtocolError("max_connections must be >= 1")
        if min(self.dial_timeout, self.upgrade_timeout, self.close_timeout) <= 0:
            raise LocalProtocolError("timeouts must be positive")


# -- logging -----------------------------------------------------------------------


class _ForwardHandler(logging.Handler):
    """Re-emit libp2p records into our logger tree, two levels quieter.

    libp2p logs ERROR and WARNING records for ordinary events (a peer closing a stream or
    a connection during shutdown); failures that matter to us surface as exceptions.
    """

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(LIBP2P_LOGGER)
        level = max(logging.DEBUG, record.levelno - 20)
        if not target.isEnabledFor(level):
            return
        target.log(level, "%s: %s", record.name, record.getMessage(), exc_info=record.exc_info)


_FORWARD = _ForwardHandler()


def route_libp2p_logs(level: int = logging.WARNING) -> None:
    """Send libp2p's records at ``level`` and above through ``sorap2p.net.libp2p``.

    Idempotent; `open_host` calls it. libp2p's import-time `setup_logging` leaves the
    ``libp2p`` logger without handlers and non-propagating, so its warnings reach
    stderr through Python's last-resort handler; this replaces that.
    """
    import libp2p  # noqa: F401  (runs libp2p's setup_logging first)

    lg = logging.getLogger("libp2p")
    if _FORWARD not in lg.handlers:
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.addHandler(_FORWARD)
    lg.propagate = False
    lg.setLevel(level)


# -- identity bridge ---------------------------------------------------------------


def libp2p_key_pair(identity: IdentityKey) -> Any:
    """The libp2p `KeyPair` for our Ed25519 identity."""
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    priv = Ed25519PrivateKey.new(identity.seed)
    return KeyPair(priv, priv.get_public_key())


def to_libp2p_id(peer: PeerId) -> Any:
    from libp2p.peer.id import ID

    return ID(peer.raw)


def from_libp2p_id(peer: Any) -> PeerId:
    """Our `PeerId` for a libp2p `ID`; `RemoteProtocolError` for non-Ed25519 peers."""
    return PeerId(peer.to_bytes())


def split_p2p_addr(addr: str) -> tuple[PeerId, str]:
    """Split ``/ip4/../tcp/../p2p/<id>`` into the peer id and the transport part."""
    head, sep, tail = addr.rpartition("/p2p/")
    if not sep or not head or "/" in tail:
        raise RemoteProtocolError(f"multiaddr {addr!r} does not end in /p2p/<peer id>")
    return PeerId.parse(tail), head


# -- host --------------------------------------------------------------------------


class Host:
    """Our view of a running libp2p host. Other net modules use `raw` for libp2p calls."""

    __slots__ = ("_closed", "_config", "identity", "peer_id", "raw")

    def __init__(self, raw: Any, identity: IdentityKey, config: HostConfig) -> None:
        self.raw = raw
        self.identity = identity
        self.peer_id = identity.peer_id
        self._config = config
        self._closed = False

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs ``/ip4/<ip>/tcp/<port>/p2p/<peer id>`` we listen on."""
        suffix = f"/p2p/{self.peer_id}"
        out = []
        for ma in self.raw.get_transport_addrs():
            text = str(ma)
            out.append(text if text.endswith(suffix) else text + suffix)
        return out

    async def connect(self, addr: str) -> PeerId:
        """Dial a full multiaddr; return the peer id once the connection is usable.

        Raises `RemoteProtocolError` for a malformed address and `ConnectionError`
        (builtin) when the peer cannot be reached, the handshake fails or the dial takes
        longer than ``HostConfig.dial_timeout``.
        """
        import multiaddr
        from libp2p.peer.peerinfo import PeerInfo

        peer, transport = split_p2p_addr(addr)
        if peer == self.peer_id:
            raise LocalProtocolError("refusing to dial ourselves")
        try:
            ma = multiaddr.Multiaddr(transport)
        except Exception as exc:
            raise RemoteProtocolError(f"invalid multiaddr {addr!r}: {exc}") from exc
        info = PeerInfo(to_libp2p_id(peer), [ma])
        # an explicit dial always tries: py-libp2p refuses for 60 s to dial a peer whose
        # last dial failed (its "negative cache"), even a bootstrap that came back
        cache = getattr(self.raw.get_network(), "_negative_peer_cache", None)
        if cache is not None:
            cache.evict(str(info.peer_id))
        limit = self._config.dial_timeout
        try:
            with trio.fail_after(limit):
                await self.raw.connect(info)
        except trio.TooSlowError as exc:
            self._forget_addrs(info.peer_id)
            raise ConnectionError(f"dial to {peer} timed out after {limit} s") from exc
        except (OSError, trio.BrokenResourceError) as exc:
            self._forget_addrs(info.peer_id)
            raise ConnectionError(f"dial to {peer} failed: {exc}") from exc
        except Exception as exc:  # libp2p raises its own SwarmException tree
            if type(exc).__module__.startswith("libp2p"):
                self._forget_addrs(info.peer_id)
                raise ConnectionError(f"dial to {peer} failed: {exc}") from exc
            raise
        return peer

    def _forget_addrs(self, lib_id: Any) -> None:
        # libp2p keeps the addresses of a failed dial in the peerstore, and its DHT
        # falls back to peerstore peers: a dead bootstrap would be re-dialled by every
        # lookup. Forget them; a later `connect` adds them again.
        if not self.is_connected(from_libp2p_id(lib_id)):
            self.raw.get_peerstore().clear_addrs(lib_id)

    def connected_peers(self) -> list[PeerId]:
        out = []
        for pid in self.raw.get_network().connections:
            try:
                out.append(from_libp2p_id(pid))
            except RemoteProtocolError:
                continue
        return out

    def is_connected(self, peer: PeerId) -> bool:
        conns = self.raw.get_network().connections.get(to_libp2p_id(peer))
        return bool(conns)

    async def disconnect(self, peer: PeerId) -> None:
        await self.raw.disconnect(to_libp2p_id(peer))

    async def aclose(self) -> None:
        """Close the libp2p host (idempotent, shielded, bounded by ``close_timeout``)."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(self._config.close_timeout * 2):
            # py-libp2p closes connections one after another and sleeps 0.2 s in each
            # close: close them concurrently first.
            network = self.raw.get_network()
            async with trio.open_nursery() as nursery:
                for pid in list(network.connections):
                    nursery.start_soon(self._close_peer, network, pid)
            try:
                await self.raw.close()
            except Exception as exc:
                _log.debug("libp2p host close raised %r", exc)

    @staticmethod
    async def _close_peer(network: Any, pid: Any) -> None:
        try:
            await network.close_peer(pid)
        except Exception as exc:
            _log.debug("closing connection to %s raised %r", pid, exc)

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.raw.get_network().connections)}

    def __repr__(self) -> str:
        return f"Host({self.peer_id})"


def build_libp2p_host(identity: IdentityKey, config: HostConfig) -> Any:
    """Construct (not start) the libp2p host with our policy."""
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig, RetryConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID

    from sorap2p.net.muxer import install_muxer, yamux_class
    from sorap2p.net.noise import noise_transport_class

    config.validate()
    key_pair = libp2p_key_pair(identity)
    sec_opt = {
        TProtocol(NOISE_ID): noise_transport_class()(
            key_pair, noise_privkey=x25519_pair().private_key
        )
    }
    muxer_opt = {TProtocol(YAMUX_ID): yamux_class()}
    conn_cfg = ConnectionConfig(
        max_connections=config.max_connections,
        high_watermark=config.max_connections,
        low_watermark=0,
        min_connections=0,
        max_connections_per_peer=1,
        dial_timeout=config.dial_timeout,
        inbound_upgrade_timeout=config.upgrade_timeout,
        outbound_upgrade_timeout=config.upgrade_timeout,
        connection_close_timeout=config.close_timeout,
    )
    raw = new_host(
        key_pair=key_pair,
        sec_opt=sec_opt,
        muxer_opt=muxer_opt,
        enable_mDNS=False,
        enable_upnp=False,
        negotiate_timeout=config.negotiate_timeout,
        connection_config=conn_cfg,
    )
    # libp2p's auto-connector dials peers from the peerstore (everything the DHT ever
    # mentioned) up to half the high watermark: we choose whom to dial ourselves.
    swarm: Any = raw.get_network()
    swarm.auto_connector.maybe_connect = _no_auto_connect
    # one quick retry instead of three with exponential backoff: callers (bootstrap,
    # discovery) decide what to try next
    swarm.retry_config = RetryConfig(max_retries=1, initial_delay=0.05, max_delay=0.5)
    install_muxer(raw)
    return raw


async def _no_auto_connect(*_args: Any, **_kwargs: Any) -> None:
    return None


@asynccontextmanager
async def open_host(
    identity: IdentityKey,
    listen: Sequence[str] = DEFAULT_LISTEN,
    *,
    config: HostConfig | None = None,
) -> AsyncIterator[Host]:
    """Start a host listening on ``listen``; close it on exit.

    ``listen`` entries are TCP multiaddrs without ``/p2p``; port 0 picks a free port.
    """
    import multiaddr

    cfg = config or HostConfig()
    route_libp2p_logs()
    try:
        addrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise LocalProtocolError(f"invalid listen address in {list(listen)!r}: {exc}") from exc
    for a in addrs:
        if "tcp" not in {p.name for p in a.protocols()}:
            raise LocalProtocolError(f"listen address {a} is not TCP")
    raw = build_libp2p_host(identity, cfg)
    actual = from_libp2p_id(raw.get_id())
    if actual != identity.peer_id:  # pragma: no cover - a libp2p regression
        raise LocalProtocolError(f"libp2p derived peer id {actual}, expected {identity.peer_id}")
    host = Host(raw, identity, cfg)
    async with raw.run(listen_addrs=addrs):
        # py-libp2p 0.8.1 logs a failed bind (port taken) and runs without a listener
        deaf = bool(addrs) and not host.listen_addrs()
        if not deaf:
            try:
                yield host
            finally:
                await host.aclose()
    if deaf:
        raise ConfigError(f"network.listen: cannot listen on {list(listen)} (address in use?)")
