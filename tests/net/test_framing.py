"""Request/response framing: the sans-IO codec (hypothesis) and the live protocol."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId
from sorap2p.net.framing import (
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameKind,
    RequestConfig,
    RequestError,
    RequestTimeoutError,
    decode_error,
    encode_error,
    encode_frame,
    open_request_response,
)
from sorap2p.net.host import open_host
from sorap2p.net.streams import open_stream

PROTO = "/sorap2p/test-req/1.0.0"
MAX = 4096

frames = st.builds(
    Frame,
    st.sampled_from(list(FrameKind)),
    st.integers(0, (1 << 63) - 1),
    st.binary(max_size=MAX - 10),
)


@given(st.lists(frames, max_size=8), st.data())
def test_frames_round_trip_through_any_split(items: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(f, MAX) for f in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    dec = FrameDecoder(MAX)
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        dec.receive_data(wire[prev:cut])
        prev = cut
        while (f := dec.next_frame()) is not None:
            out.append(f)
    assert out == items
    assert dec.buffered == 0


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_remote_protocol_error(blob: bytes) -> None:
    dec = FrameDecoder(64)
    dec.receive_data(blob)
    try:
        while dec.next_frame() is not None:
            pass
    except RemoteProtocolError:
        pass


def test_caps_and_error_payloads() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(FrameKind.REQUEST, 1, b"x" * 100), 50)
    dec = FrameDecoder(50)
    dec.receive_data(encode_frame(Frame(FrameKind.REQUEST, 1, b"x" * 100), 1000))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        dec.next_frame()
    dec = FrameDecoder(50)
    dec.receive_data(b"\x02\x07\x00")
    with pytest.raises(RemoteProtocolError, match="kind"):
        dec.next_frame()
    assert decode_error(encode_error(ErrorCode.TIMEOUT, "slow")) == (ErrorCode.TIMEOUT, "slow")
    with pytest.raises(RemoteProtocolError):
        decode_error(b"\x63oops")


async def echo(peer: PeerId, payload: bytes) -> bytes:
    if payload.startswith(b"sleep"):
        await trio.sleep(float(payload[5:]))
    if payload == b"bad":
        raise RemoteProtocolError("bad request")
    if payload == b"boom":
        raise ValueError("boom")
    if payload == b"big":
        return b"x" * (MAX * 2)
    return peer.raw[-4:] + payload


CFG = RequestConfig(max_request=MAX, max_response=MAX, timeout=2.0)


@pytest.mark.net
async def test_pipelined_requests_out_of_order_and_errors() -> None:
    async with (
        open_host(IdentityKey.generate()) as server_host,
        open_host(IdentityKey.generate()) as client_host,
        open_request_response(server_host, PROTO, echo, CFG) as server,
        open_request_response(client_host, PROTO, None, CFG) as client,
    ):
        peer = await client_host.connect(server_host.listen_addrs()[0])
        tag = client_host.peer_id.raw[-4:]
        results: dict[bytes, bytes] = {}
        order: list[bytes] = []

        async def ask(p: bytes) -> None:
            results[p] = await client.request(peer, p)
            order.append(p)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, b"sleep0.3")
            nursery.start_soon(ask, b"quick")
        assert results == {b"sleep0.3": tag + b"sleep0.3", b"quick": tag + b"quick"}
        assert order == [b"quick", b"sleep0.3"]  # answered out of order, matched by id
        assert client.statistics()["channels"] == 1  # one stream carried both

        with pytest.raises(RequestError) as bad:
            await client.request(peer, b"bad")
        assert bad.value.code is ErrorCode.BAD_REQUEST
        with pytest.raises(RequestError) as boom:
            await client.request(peer, b"boom")
        assert boom.value.code is ErrorCode.INTERNAL
        with pytest.raises(RequestError) as big:
            await client.request(peer, b"big")
        assert big.value.code is ErrorCode.INTERNAL
        with pytest.raises(RequestError) as slow:
            await client.request(peer, b"sleep5")
        assert slow.value.code is ErrorCode.TIMEOUT
        with pytest.raises(LocalProtocolError):
            await client.request(peer, b"x" * MAX)
        assert await client.request(peer, b"still ok") == tag + b"still ok"
        assert server.statistics()["served"] >= 3


@pytest.mark.net
async def test_client_timeout_and_garbage_resets_stream() -> None:
    cfg = RequestConfig(max_request=MAX, max_response=MAX, timeout=0.3)
    async with (
        open_host(IdentityKey.generate()) as server_host,
        open_host(IdentityKey.generate()) as client_host,
        open_request_response(server_host, PROTO, echo, RequestConfig(timeout=5.0)),
        open_request_response(client_host, PROTO, None, cfg) as client,
    ):
        peer = await client_host.connect(server_host.listen_addrs()[0])
        with pytest.raises(RequestTimeoutError):
            await client.request(peer, b"sleep2")
        # a peer that sends an oversized frame header gets its stream reset
        raw = await open_stream(client_host, peer, [PROTO])
        await raw.send_all(b"\xff\xff\xff\xff\x0f")
        with trio.fail_after(5):
            while await raw.receive_some():
                pass
        # and the protocol still works for well-behaved requests
        assert (await client.request(peer, b"hi")).endswith(b"hi")


@pytest.mark.net
async def test_request_to_unreachable_peer_fails_cleanly() -> None:
    async with (
        open_host(IdentityKey.generate()) as host,
        open_request_response(host, PROTO, None, CFG) as client,
    ):
        with pytest.raises(RequestError):
            await client.request(IdentityKey.generate().peer_id, b"anyone?")
    with pytest.raises(LocalProtocolError):
        async with open_request_response(host, "/other/1.0.0"):
            pass


def test_golden_vectors() -> None:
    import json
    from pathlib import Path

    from sorap2p.core.cid import Cid
    from sorap2p.net.exchange import CarRequest

    path = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / "net.json"
    vectors = json.loads(path.read_text())
    for v in vectors["frames"]:
        frame = Frame(FrameKind(v["kind"]), v["request_id"], bytes.fromhex(v["payload_hex"]))
        wire = bytes.fromhex(v["wire_hex"])
        assert encode_frame(frame, 1 << 20) == wire
        dec = FrameDecoder(1 << 20)
        dec.receive_data(wire)
        assert dec.next_frame() == frame
    for v in vectors["car_requests"]:
        req = CarRequest(Cid.parse(v["root"]), v["skip"], v["max_blocks"])
        assert req.encode().hex() == v["wire_hex"]
        assert CarRequest.decode(bytes.fromhex(v["wire_hex"])) == req
