"""A strict, fast DAG-CBOR codec for the values sorap2p stores (manifests, envelopes, CAR headers).

The data model: ``None``, ``bool``, ``int`` (64-bit range), ``float`` (finite, always
encoded as float64), ``str``, ``bytes``, ``list``, ``dict`` with ``str`` keys, and `Cid`
(tag 42). Encoding is canonical (minimal heads, map keys sorted length-first then bytewise),
so equal values give equal bytes and so equal CIDs. Decoding accepts only canonical input:
anything else raises `CodecError` (a `RemoteProtocolError`).

The ``dag-cbor`` package implements the same rules but builds ~5k CIDs/s through
``multiformats``; a model manifest lists one CID per MiB, so this module avoids it (the tests
check both agree on arbitrary values).
"""

from __future__ import annotations

import math
import struct
from typing import Final, TypeAlias

from sorap2p.core.cid import Cid
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.store.errors import CodecError

Value: TypeAlias = "bool | int | float | str | bytes | Cid | list[Value] | dict[str, Value] | None"

MAX_DEPTH: Final = 64
_CID_TAG: Final = 42
_U64: Final = 1 << 64
_PACK_F64: Final = struct.Struct(">d")


def _head(major: int, n: int) -> bytes:
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    return bytes((m | 27,)) + n.to_bytes(8, "big")


def encode(value: Value) -> bytes:
    """Canonical DAG-CBOR bytes of ``value``; `LocalProtocolError` for unsupported values."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(v: Value, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise LocalProtocolError("DAG-CBOR value nested too deeply")
    if v is None:
        out.append(0xF6)
    elif v is True:
        out.append(0xF5)
    elif v is False:
        out.append(0xF4)
    elif isinstance(v, int):
        if 0 <= v < _U64:
            out += _head(0, v)
        elif -_U64 <= v < 0:
            out += _head(1, -1 - v)
        else:
            raise LocalProtocolError(f"integer out of DAG-CBOR range: {v}")
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise LocalProtocolError("DAG-CBOR forbids NaN and infinities")
        out.append(0xFB)
        out += _PACK_F64.pack(v)
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out += _head(3, len(b))
        out += b
    elif isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        out += _head(2, len(b))
        out += b
    elif isinstance(v, Cid):
        out += b"\xd8\x2a"
        out += _head(2, len(v.raw) + 1)
        out.append(0)
        out += v.raw
    elif isinstance(v, list | tuple):
        out += _head(4, len(v))
        for item in v:
            _encode(item, out, depth + 1)
    elif isinstance(v, dict):
        keys = []
        for k in v:
            if not isinstance(k, str):
                raise LocalProtocolError(f"DAG-CBOR map keys must be strings, not {type(k)}")
            kb = k.encode("utf-8")
            keys.append((len(kb), kb, k))
        keys.sort()
        out += _head(5, len(keys))
        for n, kb, k in keys:
            out += _head(3, n)
            out += kb
            _encode(v[k], out, depth + 1)
    else:
        raise LocalProtocolError(f"cannot encode {type(v).__name__} as DAG-CBOR")


def decode(data: bytes | bytearray | memoryview) -> Value:
    """Decode exactly one canonical DAG-CBOR value; `CodecError` for anything else."""
    buf = bytes(data)
    value, pos = _Decoder(buf).value(0, 0)
    if pos != len(buf):
        raise CodecError("trailing bytes after DAG-CBOR value")
    return value


def decode_prefix(data: bytes, pos: int = 0) -> tuple[Value, int]:
    """Decode one value at ``pos``; return it and the offset after it."""
    return _Decoder(data).value(pos, 0)


_MINIMUM: Final = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}
_WIDTH: Final = {24: 1, 25: 2, 26: 4, 27: 8}


class _Decoder:
    __slots__ = ("buf", "n")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.n = len(buf)

    def head(self, pos: int) -> tuple[int, int, int, int]:
        """Return (major, additional info, argument, new pos)."""
        if pos >= self.n:
            raise CodecError("truncated DAG-CBOR")
        ib = self.buf[pos]
        major, ai = ib >> 5, ib & 0x1F
        pos += 1
        if ai < 24:
            return major, ai, ai, pos
        width = _WIDTH.get(ai)
        if width is None:
            raise CodecError(f"DAG-CBOR forbids additional info {ai} (indefinite or reserved)")
        end = pos + width
        if end > self.n:
            raise CodecError("truncated DAG-CBOR head")
        arg = int.from_bytes(self.buf[pos:end], "big")
        if major != 7 and arg < _MINIMUM[ai]:
            raise CodecError("non-minimal DAG-CBOR integer encoding")
        return major, ai, arg, end

    def value(self, pos: int, depth: int) -> tuple[Value, int]:
        if depth > MAX_DEPTH:
            raise CodecError("DAG-CBOR nested too deeply")
        major, ai, arg, pos = self.head(pos)
        if major == 0:
            return arg, pos
        if major == 1:
            return -1 - arg, pos
        if major in (2, 3):
            end = pos + arg
            if end > self.n:
                raise CodecError("truncated DAG-CBOR string")
            raw = self.buf[pos:end]
            if major == 2:
                return raw, end
            try:
                return raw.decode("utf-8"), end
            except UnicodeDecodeError as exc:
                raise CodecError("invalid UTF-8 in DAG-CBOR string") from exc
        if major == 4:
            if arg > self.n - pos:
                raise CodecError("DAG-CBOR array longer than its input")
            items: list[Value] = []
            for _ in range(arg):
                item, pos = self.value(pos, depth + 1)
                items.append(item)
            return items, pos
        if major == 5:
            if arg > self.n - pos:
                raise CodecError("DAG-CBOR map longer than its input")
            out: dict[str, Value] = {}
            prev: tuple[int, bytes] | None = None
            for _ in range(arg):
                kmajor, _ai, klen, kpos = self.head(pos)
                if kmajor != 3:
                    raise CodecError("DAG-CBOR map keys must be strings")
                kend = kpos + klen
                if kend > self.n:
                    raise CodecError("truncated DAG-CBOR map key")
                kb = self.buf[kpos:kend]
                order = (klen, kb)
                if prev is not None and order <= prev:
                    raise CodecError("DAG-CBOR map keys out of order or duplicated")
                prev = order
                try:
                    key = kb.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CodecError("invalid UTF-8 in DAG-CBOR map key") from exc
                out[key], pos = self.value(kend, depth + 1)
            return out, pos
        if major == 6:
            if arg != _CID_TAG:
                raise CodecError(f"DAG-CBOR allows only tag 42, not {arg}")
            inner, pos = self.value(pos, depth + 1)
            if not isinstance(inner, bytes) or not inner or inner[0] != 0:
                raise CodecError("tag 42 must wrap a byte string starting with 0x00")
            try:
                return Cid.decode(inner[1:]), pos
            except RemoteProtocolError as exc:
                raise CodecError(f"invalid CID in DAG-CBOR link: {exc}") from exc
        # major 7
        if ai == 20:
            return False, pos
        if ai == 21:
            return True, pos
        if ai == 22:
            return None, pos
        if ai == 27:
            f = _PACK_F64.unpack(self.buf[pos - 8 : pos])[0]
            if not math.isfinite(f):
                raise CodecError("DAG-CBOR forbids NaN and infinities")
            return f, pos
        raise CodecError(f"DAG-CBOR forbids simple value / float kind {ai}")


def iter_links(value: Value) -> list[Cid]:
    """Every CID inside ``value``, in document order (map values in canonical key order)."""
    out: list[Cid] = []
    stack: list[Value] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Cid):
            out.append(v)
        elif isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            ordered = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
            stack.extend(v[k] for k in reversed(ordered))
    return out
