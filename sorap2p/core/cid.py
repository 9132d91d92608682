"""Content identifiers (CIDv1, and CIDv0 for reading), fast and strict.

A `Cid` is a frozen value holding the binary CID. Hashing is sha2-256 via hashlib; the
text form is multibase base32 (lower case, ``b`` prefix), as kubo and Helia print CIDv1.
Parsing of other multibases is delegated to the `multiformats` package; the hot paths
(binary decode, base32 text, hashing) avoid it because it builds ~5k CIDs/s at most.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError

RAW: Final = 0x55
DAG_PB: Final = 0x70
DAG_CBOR: Final = 0x71
SHA2_256: Final = 0x12
IDENTITY: Final = 0x00

CODEC_NAMES: Final[dict[int, str]] = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}
HASH_NAMES: Final[dict[int, str]] = {SHA2_256: "sha2-256", IDENTITY: "identity"}
MAX_CID_BYTES: Final = 128
MAX_IDENTITY_DIGEST: Final = 64
_B32_LOWER: Final = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128 varint (multiformats unsigned-varint, at most 9 bytes)."""
    if n < 0 or n >= 1 << 63:
        raise LocalProtocolError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a minimal unsigned varint at ``pos``; return ``(value, new_pos)``.

    Raises `RemoteProtocolError` for truncated, over-long or non-minimal encodings.
    """
    value = 0
    shift = 0
    start = pos
    n = len(buf)
    while True:
        if pos >= n:
            raise RemoteProtocolError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and pos - start > 1:
                raise RemoteProtocolError("non-minimal varint")
            return value, pos
        shift += 7
        if shift >= 63:
            raise RemoteProtocolError("varint longer than 9 bytes")


@dataclass(frozen=True, slots=True, order=True)
class Cid:
    """A parsed, validated CID. Ordering is by binary form (used for deterministic order)."""

    raw: bytes

    # -- construction --------------------------------------------------------------
    @classmethod
    def hash(cls, data: bytes | bytearray | memoryview, codec: int = RAW) -> Cid:
        """CIDv1 of ``data`` with sha2-256 and the given codec."""
        if codec not in CODEC_NAMES:
            raise LocalProtocolError(f"unsupported codec 0x{codec:x}")
        digest = hashlib.sha256(data).digest()
        return cls(encode_varint(1) + encode_varint(codec) + b"\x12\x20" + digest)

    @classmethod
    def from_digest(cls, digest: bytes, codec: int = RAW) -> Cid:
        """CIDv1 from a raw sha2-256 digest."""
        if len(digest) != 32:
            raise LocalProtocolError("sha2-256 digest must be 32 bytes")
        return cls(b"\x01" + encode_varint(codec) + b"\x12\x20" + digest)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Cid:
        """Parse a binary CID; anything but exactly one valid CID raises RemoteProtocolError."""
        raw = bytes(data)
        end = _parse(raw, 0)
        if end != len(raw):
            raise RemoteProtocolError("trailing bytes after CID")
        return cls(raw)

    @classmethod
    def decode_prefix(cls, data: bytes | memoryview, pos: int = 0) -> tuple[Cid, int]:
        """Parse a CID at the start of ``data[pos:]``; return it and the end offset."""
        raw = bytes(data)
        end = _parse(raw, pos)
        return cls(raw[pos:end]), end

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Parse the text form: base32 CIDv1 (fast path), CIDv0 (Qm...), or any multibase."""
        if not isinstance(text, str) or not text or len(text) > 4 * MAX_CID_BYTES:
            raise RemoteProtocolError("CID text must be a non-empty string")
        if text[0] == "b" and _B32_LOWER.issuperset(text[1:]):
            body = text[1:].upper()
            try:
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            except ValueError as exc:
                raise RemoteProtocolError(f"invalid base32 CID {text!r}") from exc
            return cls.decode(raw)
        try:
            from multiformats import CID as _MfCID

            mf = _MfCID.decode(text)
        except Exception as exc:
            raise RemoteProtocolError(f"invalid CID {text!r}: {exc}") from exc
        return cls.decode(bytes(mf) if mf.version == 1 else bytes(mf.digest))

    # -- accessors -----------------------------------------------------------------
    @property
    def version(self) -> int:
        return 0 if self.raw[0] == 0x12 else 1

    @property
    def codec(self) -> int:
        if self.version == 0:
            return DAG_PB
        return decode_varint(self.raw, 1)[0]

    @property
    def multihash(self) -> bytes:
        if self.version == 0:
            return self.raw
        _, pos = decode_varint(self.raw, 1)
        return self.raw[pos:]

    @property
    def hash_code(self) -> int:
        return decode_varint(self.multihash, 0)[0]

    @property
    def digest(self) -> bytes:
        mh = self.multihash
        _, pos = decode_varint(mh, 0)
        _, pos = decode_varint(mh, pos)
        return mh[pos:]

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """True when ``data`` hashes to this CID."""
        code = self.hash_code
        if code == SHA2_256:
            return hashlib.sha256(data).digest() == self.digest
        if code == IDENTITY:
            return bytes(data) == self.digest
        return False

    def to_v1(self) -> Cid:
        if self.version == 1:
            return self
        return Cid(b"\x01" + encode_varint(DAG_PB) + self.raw)

    def __str__(self) -> str:
        if self.version == 0:
            from multiformats import multibase

            return str(multibase.encode(self.raw, "base58btc"))[1:]
        return "b" + base64.b32encode(self.raw).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"Cid({self})"

    def __bytes__(self) -> bytes:
        return self.raw


def _parse(raw: bytes, pos: int) -> int:
    """Validate a binary CID starting at ``pos``; return its end offset."""
    if len(raw) - pos < 2:
        raise RemoteProtocolError("CID too short")
    if raw[pos] == 0x12 and raw[pos + 1] == 0x20:  # CIDv0: a bare sha2-256 multihash
        end = pos + 34
        if end > len(raw):
            raise RemoteProtocolError("truncated CIDv0")
        return end
    version, p = decode_varint(raw, pos)
    if version != 1:
        raise RemoteProtocolError(f"unsupported CID version {version}")
    codec, p = decode_varint(raw, p)
    if codec not in CODEC_NAMES:
        raise RemoteProtocolError(f"unsupported CID codec 0x{codec:x}")
    code, p = decode_varint(raw, p)
    length, p = decode_varint(raw, p)
    if code == SHA2_256:
        if length != 32:
            raise RemoteProtocolError("sha2-256 digest length must be 32")
    elif code == IDENTITY:
        if length > MAX_IDENTITY_DIGEST:
            raise RemoteProtocolError("identity digest too long")
    else:
        raise RemoteProtocolError(f"unsupported multihash 0x{code:x}")
    end = p + length
    if end > len(raw):
        raise RemoteProtocolError("truncated multihash digest")
    if end - pos > MAX_CID_BYTES:
        raise RemoteProtocolError("CID too long")
    return end
