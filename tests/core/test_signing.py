"""Domain-separated signatures over canonical messages."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings

from sorap2p.core import messages as m
from sorap2p.core.codec import decode, encode
from sorap2p.core.crypto import IdentityKey, verify
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.testing.strategies import messages

KEY = IdentityKey(b"\x07" * 32)
OTHER = IdentityKey(b"\x08" * 32)


@settings(max_examples=100, deadline=None)
@given(messages())
def test_sign_verify_every_signed_type(msg: object) -> None:
    signed = m.sign(KEY, msg)
    assert signed.signer == KEY.peer_id
    m.verify_signed(decode(encode(signed)))


@settings(max_examples=100, deadline=None)
@given(messages())
def test_tampered_messages_fail(msg: object) -> None:
    signed = m.sign(KEY, msg)
    forged = dataclasses.replace(signed, signer=OTHER.peer_id)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        m.verify_signed(forged)
    bad_sig = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(RemoteProtocolError):
        m.verify_signed(dataclasses.replace(signed, signature=bad_sig))


def test_unsigned_is_rejected() -> None:
    from tests.core.test_codec import announce

    with pytest.raises(RemoteProtocolError, match="not signed"):
        m.verify_signed(announce())


def test_context_separates_kinds() -> None:
    sig = KEY.sign("sorap2p/update_announce", b"payload")
    verify(KEY.public_key, "sorap2p/update_announce", b"payload", sig)
    with pytest.raises(RemoteProtocolError):
        verify(KEY.public_key, "sorap2p/validation_vote", b"payload", sig)
    with pytest.raises(LocalProtocolError):
        KEY.sign("", b"x")
