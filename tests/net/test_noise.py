"""Our Noise transport phase (sorap2p.net.noise): the read-ahead buffer and the session,
checked against py-libp2p's own Noise (in memory and over real connections)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.crypto import IdentityKey
from sorap2p.net.host import from_libp2p_id, open_host
from sorap2p.net.noise import READ_AHEAD, BufferedConn
from sorap2p.net.streams import Stream, open_stream


class ChunkedConn:
    """A fake raw connection that delivers ``data`` in the given chunk sizes."""

    def __init__(self, data: bytes, chunks: list[int]) -> None:
        self.data = data
        self.pos = 0
        self.chunks = chunks
        self.reads = 0
        self.remote = ("127.0.0.1", 4001)

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        size = self.chunks[self.reads % len(self.chunks)]
        take = size if n is None else min(size, n)
        out = self.data[self.pos : self.pos + take]
        self.pos += len(out)
        return out

    def get_remote_address(self) -> tuple[str, int]:
        return self.remote


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=3000),
    chunks=st.lists(st.integers(1, 700), min_size=1, max_size=8),
    reads=st.lists(st.one_of(st.none(), st.integers(1, 900)), min_size=1, max_size=20),
)
def test_reads_return_the_byte_stream_in_order(
    data: bytes, chunks: list[int], reads: list[int | None]
) -> None:
    async def run() -> bytes:
        conn = BufferedConn(ChunkedConn(data, chunks))
        out = bytearray()
        i = 0
        while True:
            n = reads[i % len(reads)]
            i += 1
            got = await conn.read(n)
            assert n is None or len(got) <= n
            if not got:
                return bytes(out)
            out += got

    assert trio.run(run) == data


async def test_small_reads_are_served_from_one_socket_read() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: length prefixes and bodies alike
    raw = ChunkedConn(payload, [READ_AHEAD])
    conn = BufferedConn(raw)
    got = bytearray()
    while len(got) < len(payload):
        got += await conn.read(2)
        got += await conn.read(65535)
    assert bytes(got) == payload
    assert raw.reads == 1
    assert await conn.read(2) == b""  # end of stream passes through
    assert conn.get_remote_address() == ("127.0.0.1", 4001)  # other attributes delegate


# -- the transport-phase session (SoraSecureSession) -----------------------------------


def _stock_host() -> Any:
    """A py-libp2p host with its own Noise and Yamux (no sorap2p code on its side)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport

    kp = create_new_key_pair()
    sec = {TProtocol(PROTOCOL_ID): Transport(kp, noise_privkey=x25519_pair().private_key)}
    return new_host(
        key_pair=kp,
        sec_opt=sec,
        enable_mDNS=False,
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=5.0),
    )


ECHO = "/sorap2p/test-echo/1.0.0"
SIZES = [0, 1, 11, 12, 13, 65_519, 65_520, 262_064, 262_065, 3 * 65_519 + 5, 1 << 20, 5_000_017]


async def _echo(raw: Any) -> None:
    """Read a length-prefixed payload, answer its reversal (both directions carry data)."""
    s = Stream(raw)
    buf = bytearray()
    while len(buf) < 8 or len(buf) < 8 + int.from_bytes(buf[:8], "big"):
        chunk = await s.receive_some(1 << 20)
        assert chunk
        buf += chunk
    await s.send_all(bytes(buf[8:])[::-1])
    await s.aclose()


@pytest.mark.net
@pytest.mark.parametrize("ours_dial", [True, False])
async def test_wire_compatible_with_stock_py_libp2p_noise(ours_dial: bool) -> None:
    """Our session's messages are read by py-libp2p's own Noise and Yamux, and theirs by
    ours, at sizes around every boundary (Noise message, Yamux frame, header)."""
    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    stock = _stock_host()
    async with (
        stock.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]),
        open_host(IdentityKey.generate()) as ours,
    ):
        stock.set_stream_handler(TProtocol(ECHO), _echo)
        ours.raw.set_stream_handler(TProtocol(ECHO), _echo)
        stock_addr = f"{stock.get_transport_addrs()[0]}/p2p/{stock.get_id().to_base58()}"
        with trio.fail_after(60):
            if ours_dial:
                await ours.connect(stock_addr)
            else:
                await stock.connect(info_from_p2p_addr(multiaddr.Multiaddr(ours.listen_addrs()[0])))
            conn = ours.raw.get_network().connections[stock.get_id()][0]
            assert type(conn.muxed_conn.secured_conn).__name__ == "SoraSecureSession"
            stock_conn = stock.get_network().connections[ours.raw.get_id()][0]
            assert type(stock_conn.muxed_conn.secured_conn).__name__ == "SecureSession"
            for size in SIZES:
                payload = os.urandom(size)
                # ours -> stock -> ours
                s = await open_stream(ours, from_libp2p_id(stock.get_id()), [ECHO])
                await s.send_all(size.to_bytes(8, "big") + payload)
                got = bytearray()
                while chunk := await s.receive_some(1 << 20):
                    got += chunk
                assert bytes(got) == payload[::-1], size
                # stock -> ours -> stock
                raw = await stock.new_stream(ours.raw.get_id(), [TProtocol(ECHO)])
                await raw.write(size.to_bytes(8, "big") + payload)
                back = bytearray()
                with contextlib.suppress(Exception):  # py-libp2p raises at the end
                    while chunk := await raw.read(1 << 20):
                        back += chunk
                assert bytes(back) == payload[::-1], size
        await stock.close()


def _sealed_pair() -> tuple[Any, Any]:
    """Two py-libp2p Noise states after an XX handshake (in memory)."""
    from noise.connection import Keypair, NoiseConnection

    a = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
    b = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
    for conn, initiator in ((a, True), (b, False)):
        if initiator:
            conn.set_as_initiator()
        else:
            conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
        conn.start_handshake()
    b.read_message(a.write_message())
    a.read_message(b.write_message())
    b.read_message(a.write_message())
    assert a.handshake_finished and b.handshake_finished
    return a, b


class _Pipe:
    """One direction of a byte pipe, read in the given chunk sizes (a raw connection)."""

    def __init__(self, chunks: list[int]) -> None:
        self.data = bytearray()
        self.chunks = chunks
        self.reads = 0
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.data += data

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        size = self.chunks[self.reads % len(self.chunks)]
        take = size if n is None else min(size, n)
        out = bytes(self.data[:take])
        del self.data[:take]
        return out


def _sessions(chunks: list[int]) -> tuple[Any, Any]:
    """(ours, stock): the same keys; ours reads what stock writes (in socket reads of
    ``chunks`` bytes) and vice versa."""
    from libp2p.security.noise.io import NoiseTransportReadWriter
    from libp2p.security.secure_session import SecureSession

    from sorap2p.net.noise import adopt

    a, b = _sealed_pair()
    # py-libp2p's own reader gives up after 100 short socket reads: feed it whole chunks
    a_to_b, b_to_a = _Pipe([1 << 20]), _Pipe(chunks)

    class Duplex:
        def __init__(self, rx: _Pipe, tx: _Pipe) -> None:
            self.rx, self.tx = rx, tx

        async def read(self, n: int | None = None) -> bytes:
            return await self.rx.read(n)

        async def write(self, data: bytes) -> None:
            await self.tx.write(data)

    def session(state: Any, raw: Any) -> Any:
        return SecureSession(
            local_peer=None,  # type: ignore[arg-type]
            local_private_key=None,  # type: ignore[arg-type]
            remote_peer=None,  # type: ignore[arg-type]
            remote_permanent_pubkey=None,  # type: ignore[arg-type]
            is_initiator=False,
            conn=NoiseTransportReadWriter(raw, state),
        )

    ours = adopt(session(a, BufferedConn(Duplex(b_to_a, a_to_b))))
    stock = session(b, Duplex(a_to_b, b_to_a))
    assert type(ours).__name__ == "SoraSecureSession"
    return ours, stock


@settings(max_examples=30, deadline=None)
@given(
    # an empty write is an empty message, which py-libp2p reads as the end: not data
    writes=st.lists(st.integers(1, 150_000), min_size=1, max_size=4),
    reads=st.lists(st.one_of(st.none(), st.integers(1, 150_000)), min_size=1, max_size=8),
    chunks=st.lists(st.integers(301, 300_000), min_size=1, max_size=4),
)
def test_session_reads_and_writes_what_stock_noise_does(
    writes: list[int], reads: list[int | None], chunks: list[int]
) -> None:
    """``read(n)`` returns exactly ``n`` bytes (``None``: what one message holds), in
    order, whatever the message and socket-read boundaries, without a socket read when
    ``readable_now(n)`` said so; ``write`` and ``write_frame`` produce messages
    py-libp2p's session decrypts."""

    async def run() -> None:
        ours, stock = _sessions(chunks)
        rx = ours._sora_raw._conn.rx
        sent = b"".join(os.urandom(n) for n in writes)
        pos = 0
        for n in writes:
            await stock.write(sent[pos : pos + n])
            pos += n
        got = bytearray()
        i = 0
        while len(got) < len(sent):
            n = reads[i % len(reads)]
            i += 1
            want = None if n is None else min(n, len(sent) - len(got))
            socket_reads = rx.reads
            now = want is not None and ours.readable_now(want)
            piece = await ours.read(want)
            assert want is None or len(piece) == want
            if now:  # the muxer skips its timeout on this promise
                assert rx.reads == socket_reads
            assert piece  # an empty piece would be read as the end
            got += piece
        assert bytes(got) == sent
        # and back: header + payload views, and plain writes
        back = os.urandom(sum(writes) + 12)
        await ours.write_frame(back[:12], memoryview(back)[12:])
        await ours.write(b"tail")
        echoed = await stock.read(len(back) + 4)
        assert echoed == back + b"tail"

    trio.run(run)


async def test_tampered_message_is_refused() -> None:
    from noise.exceptions import NoiseInvalidMessage

    ours, stock = _sessions([1 << 20])
    await stock.write(b"x" * 1000)
    pipe = ours._sora_raw._conn.rx
    pipe.data[100] ^= 1
    with pytest.raises(NoiseInvalidMessage):
        await ours.read(10)


async def test_end_of_connection_mid_message_raises_incomplete_read() -> None:
    from libp2p.io.exceptions import IncompleteReadError

    ours, stock = _sessions([1 << 20])
    await stock.write(b"x" * 1000)
    pipe = ours._sora_raw._conn.rx
    del pipe.data[500:]
    with pytest.raises(IncompleteReadError):
        await ours.read(1000)
