"""Bitswap 1.2 / 1.1 (``/ipfs/bitswap/1.2.0``, ``1.1.0``): serve and fetch IPFS blocks.

A compact implementation of the Bitswap wire format (protocols/exchange.md, "Bitswap"):
length-prefixed protobuf messages with a wantlist (want-block / want-have, cancel,
send-dont-have), blocks as ``payload`` (CID prefix + data) and block presences (HAVE /
DONT_HAVE, 1.2 only). It interoperates with Helia 7 / js-libp2p 3 in both directions.

Rules that differ from py-libp2p's own Bitswap (FIELD-NOTES pitfall 11):

* replies (blocks, presences) go on a stream **we open** to the requester, never on the
  requester's stream (Helia never reads the stream it sends its wantlist on); a peer that
  answers on our stream instead is still read;
* a received block is accepted only when a running fetch wants it: its CID is rebuilt from
  the prefix and the sha2-256 of the data, so a tampered block never matches a want;
  anything else (unwanted, other hash functions, over ``max_block``) is dropped, and the
  sending provider is dropped from that fetch;
* messages over ``max_message`` reset the stream; wantlists keep at most ``max_wants``
  entries per peer.

`serve_bitswap(host, store)` serves while its context is open; `bitswap_fetch(host, store,
root, providers)` fetches a whole DAG (following dag-pb / dag-cbor links) from connected
peers, using the running server of ``host`` or a temporary one.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

from sorap2p.core.cid import SHA2_256, Cid, decode_varint, encode_varint
from sorap2p.core.errors import RemoteProtocolError, SoraError
from sorap2p.core.ids import PeerId
from sorap2p.net.exchange import BlockSink, BlockSource, store_hashed
from sorap2p.net.host import Host
from sorap2p.net.streams import Stream, open_stream
from sorap2p.store.dag import links_of
from sorap2p.store.errors import BlockNotFound, CodecError

_log = logging.getLogger(__name__)

BITSWAP_120: Final = "/ipfs/bitswap/1.2.0"
BITSWAP_110: Final = "/ipfs/bitswap/1.1.0"
PROTOCOLS: Final = (BITSWAP_120, BITSWAP_110)


class WantType(enum.IntEnum):
    BLOCK = 0
    HAVE = 1


class Presence(enum.IntEnum):
    HAVE = 0
    DONT_HAVE = 1


class FetchError(SoraError):
    """No provider delivered the DAG."""


@dataclass(frozen=True, slots=True)
class BitswapConfig:
    max_message: int = 4 << 20  # inbound and outbound message cap (Helia's default is 4 MiB)
    max_block: int = 2 << 20  # the Bitswap spec's block limit
    max_wants: int = 8192  # wantlist entries kept per peer
    batch_bytes: int = 1 << 20  # payload per outbound message
    window: int = 256  # outstanding want-blocks per provider during a fetch, at most
    window_bytes: int = 8 << 20  # ... and about this many bytes (see `_Session.limit`)
    idle_timeout: float = 10.0  # a fetch fails when nothing useful arrives for this long
    send_timeout: float = 30.0

    def validate(self) -> None:
        if not 0 < self.max_block <= self.max_message or self.batch_bytes <= 0:
            raise SoraError("bitswap sizes must be positive, max_block <= max_message")
        if min(self.max_wants, self.window, self.window_bytes) <= 0 or self.idle_timeout <= 0:
            raise SoraError("bitswap limits must be positive")


# -- wire format ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Want:
    cid: Cid
    want_type: WantType = WantType.BLOCK
    cancel: bool = False
    send_dont_have: bool = True
    priority: int = 1


@dataclass(slots=True)
class Message:
    wants: list[Want] = field(default_factory=list)
    full: bool = False
    blocks: list[tuple[Cid, bytes]] = field(default_factory=list)
    presences: list[tuple[Cid, Presence]] = field(default_factory=list)
    rejected_blocks: int = 0  # payload entries that could not be turned into a CID

    def empty(self) -> bool:
        return not (self.wants or self.full or self.blocks or self.presences)


def _key(tag: int, wire: int) -> bytes:
    return encode_varint(tag << 3 | wire)


def _len_field(tag: int, body: bytes) -> bytes:
    return _key(tag, 2) + encode_varint(len(body)) + body


def _varint_field(tag: int, value: int) -> bytes:
    return _key(tag, 0) + encode_varint(value)


def cid_prefix(cid: Cid) -> bytes:
    """Bitswap's block prefix: version, codec, multihash code and length as uvarints."""
    return (
        encode_varint(cid.version)
        + encode_varint(cid.codec)
        + encode_varint(cid.hash_code)
        + encode_varint(len(cid.digest))
    )


def cid_from_prefix(prefix: bytes, data: bytes | memoryview) -> Cid:
    """The CID of ``data`` under ``prefix`` (sha2-256 only); `RemoteProtocolError` else."""
    version, pos = decode_varint(prefix, 0)
    codec, pos = decode_varint(prefix, pos)
    mh_code, pos = decode_varint(prefix, pos)
    mh_len, pos = decode_varint(prefix, pos)
    if pos != len(prefix) or mh_code != SHA2_256 or mh_len != 32:
        raise RemoteProtocolError(f"unsupported block prefix {prefix.hex()}")
    digest = hashlib.sha256(data).digest()
    if version == 0:
        if codec != 0x70:
            raise RemoteProtocolError("CIDv0 prefix with a codec other than dag-pb")
        return Cid.decode(b"\x12\x20" + digest)
    if version != 1:
        raise RemoteProtocolError(f"unsupported CID version {version}")
    return Cid.decode(b"\x01" + encode_varint(codec) + b"\x12\x20" + digest)


def encode_message(msg: Message) -> bytes:
    """One protobuf ``Message`` (without the length prefix)."""
    out = bytearray()
    if msg.wants or msg.full:
        wl = bytearray()
        for w in msg.wants:
            entry = _len_field(1, w.cid.raw) + _varint_field(2, w.priority)
            if w.cancel:
                entry += _varint_field(3, 1)
            if w.want_type is not WantType.BLOCK:
                entry += _varint_field(4, int(w.want_type))
            if w.send_dont_have:
                entry += _varint_field(5, 1)
            wl += _len_field(1, entry)
        if msg.full:
            wl += _varint_field(2, 1)
        out += _len_field(1, bytes(wl))
    for cid, data in msg.blocks:
        body = _len_field(1, cid_prefix(cid)) + _len_field(2, data)
        out += _len_field(3, body)
    for cid, presence in msg.presences:
        out += _len_field(4, _len_field(1, cid.raw) + _varint_field(2, int(presence)))
    return bytes(out)


def _fields(buf: bytes | memoryview) -> list[tuple[int, int, Any]]:
    """(tag, wire type, value) of every field; LEN values as memoryview slices."""
    view = memoryview(buf)
    out: list[tuple[int, int, Any]] = []
    pos, end = 0, len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        tag, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _decode_any_varint(view, pos)
        elif wire == 2:
            n, pos = decode_varint(view, pos)
            if pos + n > end:
                raise RemoteProtocolError("protobuf field runs past the message")
            value, pos = view[pos : pos + n], pos + n
        elif wire == 1:
            value, pos = view[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = view[pos : pos + 4], pos + 4
        else:
            raise RemoteProtocolError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise RemoteProtocolError("truncated protobuf field")
        out.append((tag, wire, value))
    return out


def _decode_any_varint(view: memoryview, pos: int) -> tuple[int, int]:
    """A protobuf varint of up to 10 bytes (negative int32 values use all ten)."""
    result = shift = 0
    for i in range(10):
        if pos + i >= len(view):
            raise RemoteProtocolError("truncated varint")
        b = view[pos + i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos + i + 1
        shift += 7
    raise RemoteProtocolError("varint longer than 10 bytes")


def decode_message(buf: bytes | memoryview, max_block: int = 2 << 20) -> Message:
    """Parse one protobuf ``Message``; `RemoteProtocolError` for malformed input.

    Blocks are returned with the CID computed from their data, so a tampered block comes
    back under a CID nobody wants. Blocks that cannot be hashed (unknown prefix, too big)
    are counted in ``rejected_blocks``.
    """
    msg = Message()
    for tag, wire, value in _fields(buf):
        if tag == 1 and wire == 2:
            for wtag, wwire, wvalue in _fields(value):
                if wtag == 1 and wwire == 2:
                    msg.wants.append(_decode_entry(wvalue))
                elif wtag == 2 and wwire == 0:
                    msg.full = bool(wvalue)
        elif tag == 2 and wire == 2:  # Bitswap 1.0.0 raw block: CIDv0
            if len(value) > max_block:
                msg.rejected_blocks += 1
                continue
            msg.blocks.append(
                (Cid.decode(b"\x12\x20" + hashlib.sha256(value).digest()), bytes(value))
            )
        elif tag == 3 and wire == 2:
            prefix, data = b"", b""
            for btag, bwire, bvalue in _fields(value):
                if btag == 1 and bwire == 2:
                    prefix = bytes(bvalue)
                elif btag == 2 and bwire == 2:
                    data = bytes(bvalue)
            if len(data) > max_block:
                msg.rejected_blocks += 1
                continue
            try:
                msg.blocks.append((cid_from_prefix(prefix, data), data))
            except RemoteProtocolError:
                msg.rejected_blocks += 1
        elif tag == 4 and wire == 2:
            cid_raw, kind = b"", 0
            for ptag, pwire, pvalue in _fields(value):
                if ptag == 1 and pwire == 2:
                    cid_raw = bytes(pvalue)
                elif ptag == 2 and pwire == 0:
                    kind = pvalue
            if kind in (0, 1):
                msg.presences.append((Cid.decode(cid_raw), Presence(kind)))
    return msg


def _decode_entry(buf: memoryview) -> Want:
    cid_raw, priority, cancel, want_type, sdh = b"", 1, False, 0, False
    for tag, wire, value in _fields(buf):
        if tag == 1 and wire == 2:
            cid_raw = bytes(value)
        elif tag == 2 and wire == 0:
            priority = value
        elif tag == 3 and wire == 0:
            cancel = bool(value)
        elif tag == 4 and wire == 0:
            want_type = value
        elif tag == 5 and wire == 0:
            sdh = bool(value)
    if want_type not in (0, 1):
        raise RemoteProtocolError(f"unknown want type {want_type}")
    return Want(Cid.decode(cid_raw), WantType(want_type), cancel, sdh, priority & 0x7FFFFFFF)


class MessageReader:
    """Splits a byte stream into uvarint-length-prefixed messages (sans-IO)."""

    def __init__(self, max_message: int) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while self._buf:
            try:
                n, pos = decode_varint(bytes(self._buf[:10]), 0)
            except (RemoteProtocolError, IndexError):
                if len(self._buf) >= 10:
                    raise RemoteProtocolError("bad length prefix") from None
                break
            if n > self._max:
                raise RemoteProtocolError(f"bitswap message of {n} bytes over {self._max}")
            if len(self._buf) < pos + n:
                break
            out.append(bytes(self._buf[pos : pos + n]))
            del self._buf[: pos + n]
        return out


def frame(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


# -- engine ------------------------------------------------------------------------


class _Session:
    """One running fetch: which CIDs it wants, from whom; where accepted blocks go."""

    def __init__(self, store: BlockSink, providers: list[PeerId], cfg: BitswapConfig) -> None:
        self.store = store
        self.providers = providers
        self.cfg = cfg
        self.fresh: deque[Cid] = deque()  # linked, not yet looked up in the store
        self.queue: list[Cid] = []  # missing from the store, not yet asked
        self.asked: dict[bytes, tuple[Cid, PeerId]] = {}  # multihash -> (cid, provider)
        self.lacking: dict[bytes, set[PeerId]] = {}  # providers that said DONT_HAVE
        self.done: set[bytes] = set()
        self.misbehaved: dict[PeerId, str] = {}
        self.changed = trio.Event()
        self.received_bytes = 0
        self.blocks = 0
        self.storing = 0  # blocks accepted, being written
        self.failure: BaseException | None = None  # writing a block failed
        self.leaf_size = 0  # largest block without links seen so far

    def limit(self) -> int:
        """Outstanding wants per provider: ``window_bytes`` worth of the largest leaf seen
        (1 MiB assumed before the first). Bounding the bytes in flight keeps a js-libp2p
        sender from writing one Yamux frame larger than py-libp2p accepts (16 MiB; it
        closes the connection otherwise, see protocols/exchange.md)."""
        size = self.leaf_size or (1 << 20)
        return max(1, min(self.cfg.window, self.cfg.window_bytes // size))


class Bitswap:
    """The Bitswap engine of one host: server ledgers plus the running fetches."""

    def __init__(
        self, host: Host, store: BlockSource, config: BitswapConfig, nursery: trio.Nursery
    ) -> None:
        self.host = host
        self.store = store
        self.cfg = config
        self._nursery = nursery
        self._ledgers: dict[PeerId, OrderedDict[bytes, Want]] = {}
        self._serving: set[PeerId] = set()
        self._recent: OrderedDict[bytes, None] = OrderedDict()  # blocks of ended fetches
        self._out: dict[PeerId, Stream] = {}
        self._send_locks: dict[PeerId, trio.Lock] = {}
        self._sessions: list[_Session] = []
        self.stats = {
            "blocks_sent": 0,
            "bytes_sent": 0,
            "blocks_received": 0,
            "unwanted_blocks": 0,
            "bad_messages": 0,
        }

    # -- inbound ---------------------------------------------------------------
    async def handle(self, raw: Any) -> None:
        """libp2p stream handler: read messages until the peer closes the stream."""
        await self._read_stream(Stream(raw))

    async def _read_stream(self, stream: Stream, *, ours: bool = False) -> None:
        """Read messages until the peer ends its side. ``ours``: the stream we send on;
        Helia half-closes it at once, which must not stop our sending."""
        reader = MessageReader(self.cfg.max_message)
        try:
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                for body in reader.feed(data):
                    msg = decode_message(body, self.cfg.max_block)
                    await self._on_message(stream.peer, msg)
        except (RemoteProtocolError, CodecError) as exc:
            self.stats["bad_messages"] += 1
            _log.info("bad bitswap message from %s: %s", stream.peer, exc)
            self._forget_out(stream)
            await stream.reset()
            return
        except ConnectionError:
            self._forget_out(stream)
            return
        if not ours:
            await stream.aclose()

    def _forget_out(self, stream: Stream) -> None:
        if self._out.get(stream.peer) is stream:
            del self._out[stream.peer]

    async def _on_message(self, peer: PeerId, msg: Message) -> None:
        if msg.wants or msg.full:
            self._on_wantlist(peer, msg)
        if msg.blocks or msg.rejected_blocks:
            await self._on_blocks(peer, msg.blocks, msg.rejected_blocks)
        for cid, presence in msg.presences:
            if presence is Presence.DONT_HAVE:
                self._on_dont_have(peer, cid)

    def _on_wantlist(self, peer: PeerId, msg: Message) -> None:
        ledger = self._ledgers.get(peer)
        if ledger is None or msg.full:
            ledger = self._ledgers[peer] = OrderedDict()
        for want in msg.wants:
            key = want.cid.multihash
            if want.cancel:
                ledger.pop(key, None)
            elif key not in ledger and len(ledger) < self.cfg.max_wants:
                ledger[key] = want
        if ledger and peer not in self._serving:
            self._serving.add(peer)
            self._nursery.start_soon(self._serve_peer, peer)

    # -- serving ---------------------------------------------------------------
    async def _serve_peer(self, peer: PeerId) -> None:
        """Answer ``peer``'s wantlist, in order, on a stream we open (never theirs); end
        when the wantlist is empty (`_on_wantlist` starts a new task)."""
        try:
            while True:
                ledger = self._ledgers.get(peer)
                if not ledger:
                    return
                # wants leave the ledger here, in the trio thread; the store is read in a
                # worker thread, which hands back the wants it had no room for
                wants = [ledger.popitem(last=False)[1] for _ in range(min(64, len(ledger)))]
                msg, unread = await trio.to_thread.run_sync(self._answer, wants)
                for want in reversed(unread):
                    key = want.cid.multihash
                    if key not in ledger:
                        ledger[key] = want
                        ledger.move_to_end(key, last=False)
                if not msg.empty():
                    await self._send(peer, msg)
                    self.stats["blocks_sent"] += len(msg.blocks)
                    self.stats["bytes_sent"] += sum(len(d) for _, d in msg.blocks)
        except (ConnectionError, trio.TooSlowError) as exc:
            _log.info("bitswap: cannot answer %s: %s", peer, exc)
            self._ledgers.pop(peer, None)
            out = self._out.pop(peer, None)
            if out is not None:
                await out.reset()
        finally:
            self._serving.discard(peer)
            if not self._ledgers.get(peer):
                self._ledgers.pop(peer, None)

    def _answer(self, wants: list[Want]) -> tuple[Message, list[Want]]:
        """One message with at most ``batch_bytes`` of blocks (a single larger block goes
        alone) and the wants left unread. Runs in a worker thread: it reads the store."""
        msg = Message()
        size = 0
        for i, want in enumerate(wants):
            if msg.blocks and size >= self.cfg.batch_bytes:
                return msg, wants[i:]
            data: bytes | None = None
            try:
                if want.want_type is WantType.BLOCK:
                    data = self.store.get(want.cid)
                have = data is not None or self.store.has(want.cid)
            except BlockNotFound:
                have = False
            except (SoraError, OSError) as exc:  # a corrupt or unreadable block
                _log.warning("bitswap: cannot serve %s: %r", want.cid, exc)
                have = False
            if data is not None:
                if msg.blocks and size + len(data) > self.cfg.batch_bytes:
                    return msg, wants[i:]
                msg.blocks.append((want.cid, data))
                size += len(data)
            elif have:
                msg.presences.append((want.cid, Presence.HAVE))
            elif want.send_dont_have:
                msg.presences.append((want.cid, Presence.DONT_HAVE))
        return msg, []

    async def _send(self, peer: PeerId, msg: Message) -> None:
        """Send on our outbound stream to ``peer`` (opened on first use, reopened once)."""
        lock = self._send_locks.setdefault(peer, trio.Lock())
        async with lock:
            stream = self._out.get(peer)
            if stream is not None and stream.protocol == BITSWAP_110:
                msg.presences = []  # 1.1.0 has no block presences
            body = encode_message(msg)
            for attempt in range(2):
                if stream is None:
                    with trio.fail_after(self.cfg.send_timeout):
                        stream = await open_stream(self.host, peer, list(PROTOCOLS))
                    self._out[peer] = stream
                    self._nursery.start_soon(partial(self._read_stream, stream, ours=True))
                    if stream.protocol == BITSWAP_110 and msg.presences:
                        msg.presences = []
                        body = encode_message(msg)
                    if not body:
                        return
                try:
                    with trio.fail_after(self.cfg.send_timeout):
                        await stream.send_all(frame(body))
                    return
                except ConnectionError:
                    self._out.pop(peer, None)
                    await stream.reset()
                    stream = None
                    if attempt:
                        raise

    # -- fetching ----------------------------------------------------------------
    async def _on_blocks(self, peer: PeerId, blocks: list[tuple[Cid, bytes]], bad: int) -> None:
        for session in self._sessions:
            if bad and peer in session.providers:
                self._drop_provider(session, peer, f"{bad} block(s) with a bad prefix or size")
        for cid, data in blocks:
            key = cid.multihash
            owner = next((s for s in self._sessions if key in s.asked), None)
            if owner is None:
                # a block of a want we already got (or cancelled) is normal: cancels race
                # with sends. Anything else (a tampered block has a CID nobody asked for)
                # is unsolicited.
                known = key in self._recent or any(key in s.done for s in self._sessions)
                if not known:
                    self.stats["unwanted_blocks"] += 1
                    for session in self._sessions:
                        if peer in session.providers:
                            self._drop_provider(session, peer, f"unwanted block {cid}")
                continue
            wanted, _asked_from = owner.asked[key]
            if wanted.codec != cid.codec or wanted.version != cid.version:
                # the same digest under another codec: treat as unsolicited
                self.stats["unwanted_blocks"] += 1
                self._drop_provider(owner, peer, f"block {cid} instead of {wanted}")
                continue
            try:
                links = links_of(cid, data)
            except (CodecError, RemoteProtocolError) as exc:
                self._drop_provider(owner, peer, f"undecodable block {cid}: {exc}")
                continue
            del owner.asked[key]
            owner.done.add(key)
            owner.storing += 1
            try:
                await trio.to_thread.run_sync(store_hashed, owner.store, cid, data)
            except Exception as exc:  # reported by the fetch (FetchError)
                owner.failure = exc
                owner.changed.set()
                continue
            finally:
                owner.storing -= 1
            owner.received_bytes += len(data)
            owner.blocks += 1
            self.stats["blocks_received"] += 1
            owner.fresh.extend(links)
            if not links:
                owner.leaf_size = max(owner.leaf_size, len(data))
            owner.changed.set()

    def _on_dont_have(self, peer: PeerId, cid: Cid) -> None:
        key = cid.multihash
        for session in self._sessions:
            entry = session.asked.get(key)
            if entry is not None and entry[1] == peer:
                session.lacking.setdefault(key, set()).add(peer)
                del session.asked[key]
                session.queue.insert(0, entry[0])
                session.changed.set()

    def _drop_provider(self, session: _Session, peer: PeerId, why: str) -> None:
        if peer in session.misbehaved:
            return
        _log.info("bitswap: dropping provider %s: %s", peer, why)
        session.misbehaved[peer] = why
        if peer in session.providers:
            session.providers.remove(peer)
        for key, (cid, p) in list(session.asked.items()):
            if p == peer:
                del session.asked[key]
                session.queue.insert(0, cid)
        session.changed.set()

    async def fetch(self, store: BlockSink, root: Cid, providers: Sequence[PeerId]) -> int:
        """Fetch the DAG under ``root`` into ``store``; return the number of blocks fetched.

        Blocks already in ``store`` are not asked for (their links are followed)."""
        session = _Session(store, list(dict.fromkeys(providers)), self.cfg)
        if not session.providers:
            raise FetchError("no providers")
        self._sessions.append(session)
        try:
            await self._run_session(session, root)
        finally:
            self._sessions.remove(session)
            for key in list(session.done) + list(session.asked):
                self._recent[key] = None
            while len(self._recent) > 65536:
                self._recent.popitem(last=False)
            await self._cancel_all(session)
        return session.blocks

    async def _run_session(self, session: _Session, root: Cid) -> None:
        session.fresh.append(root)
        while session.fresh or session.queue or session.asked or session.storing:
            if session.failure is not None:
                raise FetchError(f"storing a block failed: {session.failure!r}")
            session.changed = trio.Event()
            await self._skip_local(session)
            await self._ask(session)
            if not session.queue and not session.asked and not session.storing:
                break
            if not session.providers:
                raise FetchError(f"every provider misbehaved: {session.misbehaved}")
            with trio.move_on_after(self.cfg.idle_timeout) as idle:
                await session.changed.wait()
            if idle.cancelled_caught:
                raise FetchError(
                    f"no progress for {self.cfg.idle_timeout} s; {len(session.asked)} "
                    f"block(s) outstanding, e.g. {next(iter(session.asked.values()))[0]}"
                )

    async def _skip_local(self, session: _Session) -> None:
        """Sort freshly linked CIDs: blocks already in the store are walked, not asked for."""
        while session.fresh:
            cid = session.fresh.popleft()
            key = cid.multihash
            if key in session.done or key in session.asked:
                continue
            data: bytes | None = None
            if session.store.has(cid):
                try:
                    data = await trio.to_thread.run_sync(session.store.get, cid)
                except BlockNotFound:
                    data = None
            if data is None:
                session.queue.append(cid)
                continue
            session.done.add(key)
            session.fresh.extend(links_of(cid, data))

    async def _ask(self, session: _Session) -> None:
        """Move queued CIDs to providers with room in their window, one message each."""
        per_peer: dict[PeerId, list[Want]] = {}
        load = {p: 0 for p in session.providers}
        for _cid, p in session.asked.values():
            if p in load:
                load[p] += 1
        rest: list[Cid] = []
        limit = session.limit()
        for cid in session.queue:
            key = cid.multihash
            if key in session.done or key in session.asked:
                continue
            if not session.providers:
                raise FetchError(f"every provider misbehaved: {session.misbehaved}")
            lacking = session.lacking.get(key, set())
            candidates = [p for p in session.providers if p not in lacking]
            if not candidates:
                raise FetchError(f"no provider has {cid}")
            peer = min(candidates, key=lambda p: load[p])
            if load[peer] >= limit:
                rest.append(cid)
                continue
            load[peer] += 1
            session.asked[key] = (cid, peer)
            per_peer.setdefault(peer, []).append(Want(cid))
        session.queue = rest
        for peer, wants in per_peer.items():
            try:
                await self._send(peer, Message(wants=wants))
            except (ConnectionError, trio.TooSlowError) as exc:
                self._drop_provider(session, peer, f"cannot send wantlist: {exc}")

    async def _cancel_all(self, session: _Session) -> None:
        per_peer: dict[PeerId, list[Want]] = {}
        for cid, peer in session.asked.values():
            per_peer.setdefault(peer, []).append(Want(cid, cancel=True, send_dont_have=False))
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            for peer, wants in per_peer.items():
                try:
                    await self._send(peer, Message(wants=wants))
                except (ConnectionError, trio.TooSlowError):
                    continue

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "peers": len(self._ledgers), "fetches": len(self._sessions)}


_ENGINES: dict[int, Bitswap] = {}


@asynccontextmanager
async def serve_bitswap(
    host: Host, store: BlockSource, config: BitswapConfig | None = None
) -> AsyncIterator[Bitswap]:
    """Serve ``store`` over Bitswap 1.2/1.1 while the context is open (and receive blocks
    for `bitswap_fetch` on ``host``)."""
    from libp2p.custom_types import TProtocol

    cfg = config or BitswapConfig()
    cfg.validate()
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        engine = Bitswap(host, store, cfg, nursery)
        for proto in PROTOCOLS:
            host.raw.set_stream_handler(TProtocol(proto), engine.handle)
        _ENGINES[id(host)] = engine
        try:
            yield engine
        except Exception as exc:
            # re-raised below, outside the nursery, so that callers see their own
            # exception rather than an ExceptionGroup
            failure = exc
        finally:
            _ENGINES.pop(id(host), None)
            for proto in PROTOCOLS:
                host.raw.remove_stream_handler(TProtocol(proto))
            for stream in list(engine._out.values()):
                await stream.aclose()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def bitswap_fetch(
    host: Host,
    store: BlockSink,
    root: Cid,
    providers: Sequence[PeerId],
    config: BitswapConfig | None = None,
) -> int:
    """Fetch the DAG under ``root`` into ``store`` from connected ``providers`` over Bitswap;
    return the number of blocks fetched. Raises `FetchError`.

    Uses the engine of a running `serve_bitswap` on ``host`` (``config`` is then ignored),
    else serves ``store`` for the duration of the fetch."""
    engine = _ENGINES.get(id(host))
    if engine is not None:
        return await engine.fetch(store, root, providers)
    async with serve_bitswap(host, store, config) as temp:
        return await temp.fetch(store, root, providers)
