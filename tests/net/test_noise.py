"""The read-ahead buffer under Noise (sorap2p.net.noise)."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.net.noise import READ_AHEAD, BufferedConn


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
