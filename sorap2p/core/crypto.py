"""Cryptography of sorap2p, pure and synchronous.

* `IdentityKey`: the node's Ed25519 key, the same key libp2p uses for its peer id.
  Signatures are domain separated: a signature covers
  ``b"sorap2p-sig/v1\\x00" || context || b"\\x00" || sha256(message)`` so that a signature
  over one kind of message can never be replayed as another kind.
* Sealing: X25519 keys derived from the Ed25519 key (the standard birational map), and
  anonymous sealed boxes (libsodium ``crypto_box_seal``) that carry a data key to each
  recipient of an update.
* `ChunkCipher`: AES-256-GCM over a payload cut into chunks. A fresh random data key per
  payload; chunk ``i`` uses nonce ``0x00000000 || u64be(i)``; the AAD binds the payload id,
  the chunk index and a "last chunk" flag, so chunks can be neither reordered, moved to
  another payload, nor truncated at a chunk boundary. Decryption can write straight into a
  caller-supplied buffer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from nacl.bindings import (
    crypto_box_seal,
    crypto_box_seal_open,
    crypto_scalarmult_base,
    crypto_sign_ed25519_pk_to_curve25519,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from sorap2p.core.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId

SIG_DOMAIN: Final = b"sorap2p-sig/v1\x00"
SIGNATURE_BYTES: Final = 64
SEALED_KEY_BYTES: Final = 32 + 48  # data key + crypto_box_seal overhead
TAG_BYTES: Final = 16
KEY_BYTES: Final = 32
MAX_PAYLOAD_ID: Final = 64
AEAD_DOMAIN: Final = b"sorap2p-aead/v1\x00"

RandomBytes = Callable[[int], bytes]


def signing_input(context: str, message: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers (see module docstring)."""
    if not context or "\x00" in context:
        raise LocalProtocolError("signature context must be a non-empty string without NUL")
    return SIG_DOMAIN + context.encode() + b"\x00" + hashlib.sha256(message).digest()


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """An Ed25519 private key (32-byte seed)."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise LocalProtocolError("Ed25519 seed must be 32 bytes")

    @classmethod
    def generate(cls, random_bytes: RandomBytes = os.urandom) -> IdentityKey:
        return cls(random_bytes(32))

    @property
    def _signing(self) -> SigningKey:
        return SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    @property
    def peer_id(self) -> PeerId:
        return PeerId.from_public_key(self.public_key)

    def sign(self, context: str, message: bytes) -> bytes:
        return bytes(self._signing.sign(signing_input(context, message)).signature)

    @property
    def x25519_private(self) -> bytes:
        """The X25519 private scalar derived from this key (libsodium's conversion)."""
        h = bytearray(hashlib.sha512(self.seed).digest()[:32])
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        return bytes(h)

    @property
    def x25519_public(self) -> bytes:
        return bytes(crypto_scalarmult_base(self.x25519_private))

    def __repr__(self) -> str:  # never print key material
        return f"IdentityKey(peer_id={self.peer_id})"


def verify(public_key: bytes, context: str, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raise `RemoteProtocolError` when it does not verify."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != 32:
        raise RemoteProtocolError("malformed signature or public key")
    try:
        VerifyKey(public_key).verify(signing_input(context, message), signature)
    except (BadSignatureError, CryptoError, ValueError) as exc:
        raise RemoteProtocolError(f"bad signature for context {context!r}") from exc


def x25519_public_from_peer(peer: PeerId) -> bytes:
    """The X25519 public key that belongs to a peer id's Ed25519 key."""
    try:
        return bytes(crypto_sign_ed25519_pk_to_curve25519(peer.public_key))
    except (CryptoError, ValueError) as exc:
        raise RemoteProtocolError("peer key cannot be converted to X25519") from exc


def seal(recipient_x25519: bytes, data_key: bytes) -> bytes:
    """Seal a data key to one recipient (anonymous sender, 80 bytes out for a 32-byte key)."""
    if len(recipient_x25519) != 32 or len(data_key) != KEY_BYTES:
        raise LocalProtocolError("seal needs a 32-byte recipient key and a 32-byte data key")
    return bytes(crypto_box_seal(data_key, recipient_x25519))


def unseal(identity: IdentityKey, sealed: bytes) -> bytes:
    """Open a sealed data key; `IntegrityError` when it was not sealed to us or was altered."""
    if len(sealed) != SEALED_KEY_BYTES:
        raise IntegrityError("sealed key has the wrong length")
    try:
        return bytes(crypto_box_seal_open(sealed, identity.x25519_public, identity.x25519_private))
    except CryptoError as exc:
        raise IntegrityError("sealed key cannot be opened with this identity") from exc


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", index)


class ChunkCipher:
    """AES-256-GCM over the chunks of one payload (see module docstring)."""

    __slots__ = ("_aes", "_payload_id")

    def __init__(self, key: bytes, payload_id: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise LocalProtocolError("data key must be 32 bytes")
        if not 1 <= len(payload_id) <= MAX_PAYLOAD_ID:
            raise LocalProtocolError("payload id must be 1-64 bytes")
        self._aes = algorithms.AES(key)
        self._payload_id = payload_id

    @staticmethod
    def new_key(random_bytes: RandomBytes = os.urandom) -> bytes:
        return random_bytes(KEY_BYTES)

    def aad(self, index: int, last: bool) -> bytes:
        return (
            AEAD_DOMAIN
            + bytes([len(self._payload_id)])
            + self._payload_id
            + struct.pack(">QB", index, 1 if last else 0)
        )

    def encrypt(self, index: int, plaintext: bytes | bytearray | memoryview, last: bool) -> bytes:
        """Return ``ciphertext || tag`` (16 bytes longer than the plaintext)."""
        enc = Cipher(self._aes, modes.GCM(_nonce(index))).encryptor()
        enc.authenticate_additional_data(self.aad(index, last))
        out = enc.update(plaintext) + enc.finalize()
        return out + enc.tag

    def decrypt_into(
        self, index: int, sealed_chunk: bytes | memoryview, out: memoryview | bytearray, last: bool
    ) -> int:
        """Decrypt ``ciphertext || tag`` into ``out``; return the plaintext length.

        ``out`` must hold at least the plaintext length + 15 bytes (a `cryptography`
        requirement) unless it is exactly the plaintext length, in which case a bounce
        buffer is used. Raises `IntegrityError` when the tag does not verify; ``out`` then
        holds garbage the caller must discard.
        """
        view = memoryview(sealed_chunk)
        if len(view) < TAG_BYTES:
            raise IntegrityError("encrypted chunk shorter than its tag")
        n = len(view) - TAG_BYTES
        ct, tag = view[:n], bytes(view[n:])
        dec = Cipher(self._aes, modes.GCM(_nonce(index), tag)).decryptor()
        dec.authenticate_additional_data(self.aad(index, last))
        target = memoryview(out)
        try:
            if len(target) >= n + 15:
                written = dec.update_into(ct, target)
                dec.finalize()
                return written
            if len(target) < n:
                raise LocalProtocolError("output buffer too small for chunk")
            plain = dec.update(ct) + dec.finalize()
        except InvalidTag as exc:
            raise IntegrityError(f"chunk {index} failed authentication") from exc
        target[:n] = plain
        return n

    def decrypt(self, index: int, sealed_chunk: bytes | memoryview, last: bool) -> bytes:
        n = len(sealed_chunk) - TAG_BYTES
        buf = bytearray(max(n, 0) + 15)
        written = self.decrypt_into(index, sealed_chunk, buf, last)
        return bytes(buf[:written])


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
