"""Identity keys, sealing and the chunked AEAD."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.crypto import (
    SEALED_KEY_BYTES,
    ChunkCipher,
    IdentityKey,
    seal,
    unseal,
    x25519_public_from_peer,
)
from sorap2p.core.errors import IntegrityError, LocalProtocolError

ALICE = IdentityKey(b"\x01" * 32)
BOB = IdentityKey(b"\x02" * 32)


def test_x25519_from_peer_id_matches_private_derivation() -> None:
    assert x25519_public_from_peer(ALICE.peer_id) == ALICE.x25519_public
    assert x25519_public_from_peer(BOB.peer_id) == BOB.x25519_public


def test_seal_only_recipient_opens() -> None:
    key = ChunkCipher.new_key()
    sealed = seal(x25519_public_from_peer(ALICE.peer_id), key)
    assert len(sealed) == SEALED_KEY_BYTES
    assert unseal(ALICE, sealed) == key
    with pytest.raises(IntegrityError):
        unseal(BOB, sealed)
    tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(IntegrityError):
        unseal(ALICE, tampered)
    with pytest.raises(IntegrityError):
        unseal(ALICE, sealed[:-1])


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 2**40), st.booleans())
def test_chunk_round_trip(data: bytes, index: int, last: bool) -> None:
    c = ChunkCipher(b"\x09" * 32, b"update-1")
    sealed = c.encrypt(index, data, last)
    assert len(sealed) == len(data) + 16
    assert c.decrypt(index, sealed, last) == data
    exact = bytearray(len(data))
    assert c.decrypt_into(index, sealed, exact, last) == len(data)
    assert bytes(exact) == data


def test_chunk_binding() -> None:
    key = os.urandom(32)
    c = ChunkCipher(key, b"update-1")
    sealed = c.encrypt(3, b"weights" * 100, last=False)
    with pytest.raises(IntegrityError):
        c.decrypt(4, sealed, last=False)  # moved to another index
    with pytest.raises(IntegrityError):
        c.decrypt(3, sealed, last=True)  # truncation: presented as the last chunk
    with pytest.raises(IntegrityError):
        ChunkCipher(key, b"update-2").decrypt(3, sealed, last=False)  # another payload
    with pytest.raises(IntegrityError):
        ChunkCipher(os.urandom(32), b"update-1").decrypt(3, sealed, last=False)
    flipped = bytearray(sealed)
    flipped[10] ^= 0x80
    with pytest.raises(IntegrityError):
        c.decrypt(3, bytes(flipped), last=False)
    with pytest.raises(IntegrityError):
        c.decrypt(3, sealed[:8], last=False)


def test_decrypt_into_large_buffer_view() -> None:
    c = ChunkCipher(b"\x03" * 32, b"u")
    data = os.urandom(1 << 16)
    sealed = c.encrypt(0, data, last=True)
    buf = bytearray(len(data) * 2)
    view = memoryview(buf)[100:]
    n = c.decrypt_into(0, sealed, view, last=True)
    assert bytes(view[:n]) == data
    with pytest.raises(LocalProtocolError):
        c.decrypt_into(0, sealed, bytearray(10), last=True)


def test_bad_parameters() -> None:
    with pytest.raises(LocalProtocolError):
        ChunkCipher(b"short", b"u")
    with pytest.raises(LocalProtocolError):
        ChunkCipher(b"\x00" * 32, b"")
    with pytest.raises(LocalProtocolError):
        IdentityKey(b"\x00")
    assert "seed" not in repr(ALICE) and ALICE.seed.hex() not in repr(ALICE)
