"""The versioned, canonical msgpack envelope of every sorap2p message.

Wire form (msgpack), keys in exactly this order::

    {"v": 1, "type": "<type name>", "body": {<field>: <value>, ...}}

* The body is a map whose keys are the message's field names, in declaration order.
* Encoding is canonical: the same message always encodes to the same bytes (msgpack's
  shortest forms, map keys in declaration order, dict-valued fields sorted by key, floats
  as float64). A decoder re-encodes what it parsed and rejects any input that differs, so
  there is exactly one accepted encoding per message (signatures and CIDs rely on this).
* Every type has a size cap; every field has a type and limits. Unknown types, versions and
  fields, missing fields, wrong types, out-of-range values, NaN/inf floats and oversize
  inputs raise `RemoteProtocolError` with a message naming the problem.

Messages are frozen, slotted dataclasses registered with `@message(name, max_size)`;
nested value types use `@struct`. Field limits are given with `spec(...)` metadata.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgpack

from sorap2p.core.cid import Cid
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId, RoundId, SubnetId

ENVELOPE_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 256 * 1024  # absolute cap, before the per-type cap is known
INT_MIN: Final = -(1 << 63)
INT_MAX: Final = (1 << 64) - 1

T = TypeVar("T")

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]


def spec(
    *,
    max_len: int | None = None,
    size: int | None = None,
    min_value: int | float | None = None,
    max_value: int | float | None = None,
    max_items: int | None = None,
) -> dict[str, Any]:
    """Field metadata: limits checked on encode and decode."""
    return {
        "sorap2p": {
            "max_len": max_len,
            "size": size,
            "min_value": min_value,
            "max_value": max_value,
            "max_items": max_items,
        }
    }


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    encode: Encoder
    decode: Decoder


@dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Any]
    fields: tuple[_Field, ...]
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class MessageType:
    name: str
    cls: type[Any]
    max_size: int


_SCHEMAS: dict[type[Any], _Schema] = {}


class TypeTable:
    """An explicit table of message types (name <-> class, with size caps)."""

    def __init__(self) -> None:
        self._by_name: dict[str, MessageType] = {}
        self._by_cls: dict[type[Any], MessageType] = {}

    def add(self, name: str, cls: type[Any], max_size: int) -> None:
        if name in self._by_name or cls in self._by_cls:
            raise LocalProtocolError(f"message type {name!r} registered twice")
        if not 0 < max_size <= MAX_MESSAGE_BYTES:
            raise LocalProtocolError(f"max_size of {name!r} out of range")
        entry = MessageType(name, cls, max_size)
        self._by_name[name] = entry
        self._by_cls[cls] = entry

    def by_name(self, name: str) -> MessageType:
        try:
            return self._by_name[name]
        except KeyError:
            raise RemoteProtocolError(f"unknown message type {name!r}") from None

    def by_cls(self, cls: type[Any]) -> MessageType:
        try:
            return self._by_cls[cls]
        except KeyError:
            raise LocalProtocolError(f"{cls.__name__} is not a registered message") from None

    def __iter__(self) -> typing.Iterator[MessageType]:
        return iter(self._by_name.values())


TYPES: Final = TypeTable()


def struct(cls: type[T]) -> type[T]:
    """Register a frozen dataclass as a nested wire struct."""
    _schema(cls)
    return cls


def message(name: str, max_size: int) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as a top-level message type."""

    def wrap(cls: type[T]) -> type[T]:
        _schema(cls)
        TYPES.add(name, cls, max_size)
        return cls

    return wrap


def type_name(msg: object) -> str:
    return TYPES.by_cls(type(msg)).name


# --------------------------------------------------------------------------- encode/decode


def encode(msg: object) -> bytes:
    """Canonical envelope bytes of a registered message."""
    entry = TYPES.by_cls(type(msg))
    body = _encode_struct(msg)
    data: bytes = msgpack.packb(
        {"v": ENVELOPE_VERSION, "type": entry.name, "body": body},
        use_bin_type=True,
        strict_types=True,
    )
    if len(data) > entry.max_size:
        raise LocalProtocolError(
            f"{entry.name} encodes to {len(data)} bytes, over its cap of {entry.max_size}"
        )
    return data


def decode(data: bytes | bytearray | memoryview, expect: type[T] | None = None) -> T:
    """Decode envelope bytes; raise `RemoteProtocolError` for anything but a valid message."""
    raw = bytes(data)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for malformed input
        raise RemoteProtocolError(f"malformed msgpack: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(obj, dict) or list(obj.keys()) != ["v", "type", "body"]:
        raise RemoteProtocolError("envelope must be a map with keys v, type, body in order")
    version = obj["v"]
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise RemoteProtocolError(f"unsupported envelope version {version!r}")
    name = obj["type"]
    if not isinstance(name, str):
        raise RemoteProtocolError("envelope type must be a string")
    entry = TYPES.by_name(name)
    if expect is not None and entry.cls is not expect:
        raise RemoteProtocolError(f"expected {expect.__name__}, got message type {name!r}")
    if len(raw) > entry.max_size:
        raise RemoteProtocolError(f"{name} of {len(raw)} bytes exceeds its cap {entry.max_size}")
    msg = _decode_struct(entry.cls, obj["body"], name)
    if encode_unchecked(msg) != raw:
        raise RemoteProtocolError(f"non-canonical encoding of {name}")
    result: T = msg
    return result


def encode_unchecked(msg: object) -> bytes:
    """Like `encode` without the size cap (used to check canonical form on decode)."""
    entry = TYPES.by_cls(type(msg))
    data: bytes = msgpack.packb(
        {"v": ENVELOPE_VERSION, "type": entry.name, "body": _encode_struct(msg)},
        use_bin_type=True,
        strict_types=True,
    )
    return data


# --------------------------------------------------------------------------- schema compile


def _schema(cls: type[Any]) -> _Schema:
    found = _SCHEMAS.get(cls)
    if found is not None:
        return found
    if not dataclasses.is_dataclass(cls):
        raise LocalProtocolError(f"{cls.__name__} must be a dataclass")
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        limits = f.metadata.get("sorap2p", {})
        enc, dec = _compile(hints[f.name], limits, f"{cls.__name__}.{f.name}")
        fields.append(_Field(f.name, enc, dec))
    schema = _Schema(cls, tuple(fields), frozenset(f.name for f in fields))
    _SCHEMAS[cls] = schema
    return schema


def _encode_struct(value: object) -> dict[str, Any]:
    schema = _schema(type(value))
    return {f.name: f.encode(getattr(value, f.name)) for f in schema.fields}


def _decode_struct(cls: type[T], obj: Any, where: str) -> T:
    schema = _schema(cls)
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{where}: expected a map")
    keys = set(obj)
    if keys != schema.names:
        unknown = sorted(str(k) for k in keys - schema.names)
        missing = sorted(schema.names - keys)
        raise RemoteProtocolError(f"{where}: unknown fields {unknown}, missing fields {missing}")
    kwargs = {f.name: f.decode(obj[f.name], f"{where}.{f.name}") for f in schema.fields}
    try:
        return cls(**kwargs)
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, LocalProtocolError) as exc:
        raise RemoteProtocolError(f"{where}: {exc}") from exc


def _check_len(n: int, limits: dict[str, Any], where: str, what: str) -> None:
    size = limits.get("size")
    if size is not None and n != size:
        raise RemoteProtocolError(f"{where}: {what} must be exactly {size}, got {n}")
    max_len = limits.get("max_len")
    if max_len is not None and n > max_len:
        raise RemoteProtocolError(f"{where}: {what} {n} exceeds {max_len}")


def _check_range(v: int | float, limits: dict[str, Any], where: str) -> None:
    lo = limits.get("min_value")
    hi = limits.get("max_value")
    if lo is not None and v < lo:
        raise RemoteProtocolError(f"{where}: {v} is below the minimum {lo}")
    if hi is not None and v > hi:
        raise RemoteProtocolError(f"{where}: {v} is above the maximum {hi}")


def _compile(tp: Any, limits: dict[str, Any], where: str) -> tuple[Encoder, Decoder]:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        return _compile_optional(tp, limits, where)
    if tp is bool:

        def dec_bool(v: Any, w: str) -> bool:
            if type(v) is not bool:
                raise RemoteProtocolError(f"{w}: expected a boolean")
            return v

        return _checked_encoder(dec_bool, where), dec_bool
    if tp is int:
        lo = limits.get("min_value", 0)
        lim = {**limits, "min_value": lo if lo is not None else 0}

        def dec_int(v: Any, w: str) -> int:
            if type(v) is not int:
                raise RemoteProtocolError(f"{w}: expected an integer")
            _check_range(v, lim, w)
            return v

        return _checked_encoder(dec_int, where), dec_int
    if tp is float:

        def dec_float(v: Any, w: str) -> float:
            if type(v) is not float:
                raise RemoteProtocolError(f"{w}: expected a float64")
            if not math.isfinite(v):
                raise RemoteProtocolError(f"{w}: float must be finite")
            _check_range(v, limits, w)
            return v

        return _checked_encoder(dec_float, where), dec_float
    if tp is str:
        lim = {"max_len": 256, **{k: v for k, v in limits.items() if v is not None}}

        def dec_str(v: Any, w: str) -> str:
            if type(v) is not str:
                raise RemoteProtocolError(f"{w}: expected a string")
            _check_len(len(v.encode()), lim, w, "string length")
            return v

        return _checked_encoder(dec_str, where), dec_str
    if tp is bytes:
        lim = {"max_len": 1024, **{k: v for k, v in limits.items() if v is not None}}

        def dec_bytes(v: Any, w: str) -> bytes:
            if type(v) is not bytes:
                raise RemoteProtocolError(f"{w}: expected bytes")
            _check_len(len(v), lim, w, "byte length")
            return v

        return _checked_encoder(dec_bytes, where), dec_bytes
    if tp is Cid:
        return _wrapped(lambda c: c.raw, lambda b: Cid.decode(b), bytes, where, "a binary CID")
    if tp is PeerId:
        return _wrapped(lambda p: p.raw, PeerId, bytes, where, "a binary peer id")
    if tp is SubnetId:
        return _wrapped(lambda s: s.name, SubnetId, str, where, "a subnet id string")
    if tp is RoundId:
        return _wrapped(lambda r: r.number, RoundId, int, where, "a round number")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_cls = tp

        def enc_enum(v: Any) -> Any:
            if not isinstance(v, enum_cls):
                raise LocalProtocolError(f"{where}: expected {enum_cls.__name__}")
            return v.value

        def dec_enum(v: Any, w: str) -> Any:
            try:
                if type(v) is not type(next(iter(enum_cls)).value):
                    raise ValueError
                return enum_cls(v)
            except ValueError:
                raise RemoteProtocolError(f"{w}: not a valid {enum_cls.__name__}") from None

        return enc_enum, dec_enum
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise LocalProtocolError(f"{where}: only tuple[X, ...] is supported")
        item_enc, item_dec = _compile(args[0], {}, where + "[]")
        max_items = limits.get("max_items") or 1024

        def enc_tuple(v: Any) -> Any:
            if not isinstance(v, tuple):
                raise LocalProtocolError(f"{where}: expected a tuple")
            if len(v) > max_items:
                raise LocalProtocolError(f"{where}: {len(v)} items exceed {max_items}")
            return [item_enc(x) for x in v]

        def dec_tuple(v: Any, w: str) -> Any:
            if type(v) is not list:
                raise RemoteProtocolError(f"{w}: expected an array")
            if len(v) > max_items:
                raise RemoteProtocolError(f"{w}: {len(v)} items exceed {max_items}")
            return tuple(item_dec(x, f"{w}[{i}]") for i, x in enumerate(v))

        return enc_tuple, dec_tuple
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if kt is not str:
            raise LocalProtocolError(f"{where}: dict keys must be str")
        key_enc, key_dec = _compile(str, {"max_len": 64}, where + "{}")
        val_enc, val_dec = _compile(vt, {}, where + "{}")
        max_items = limits.get("max_items") or 64

        def enc_dict(v: Any) -> Any:
            if not isinstance(v, dict) and not isinstance(v, types.MappingProxyType):
                raise LocalProtocolError(f"{where}: expected a dict")
            if len(v) > max_items:
                raise LocalProtocolError(f"{where}: {len(v)} entries exceed {max_items}")
            return {key_enc(k): val_enc(v[k]) for k in sorted(v)}

        def dec_dict(v: Any, w: str) -> Any:
            if type(v) is not dict:
                raise RemoteProtocolError(f"{w}: expected a map")
            if len(v) > max_items:
                raise RemoteProtocolError(f"{w}: {len(v)} entries exceed {max_items}")
            return {key_dec(k, w): val_dec(x, f"{w}[{k!r}]") for k, x in v.items()}

        return enc_dict, dec_dict
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        nested = tp

        def enc_struct(v: Any) -> Any:
            if type(v) is not nested:
                raise LocalProtocolError(f"{where}: expected {nested.__name__}")
            return _encode_struct(v)

        def dec_struct(v: Any, w: str) -> Any:
            return _decode_struct(nested, v, w)

        return enc_struct, dec_struct
    raise LocalProtocolError(f"{where}: unsupported field type {tp!r}")


def _compile_optional(tp: Any, limits: dict[str, Any], where: str) -> tuple[Encoder, Decoder]:
    """``X | None``: nil on the wire for None, else X's encoding (other unions: unsupported)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1 or len(typing.get_args(tp)) != 2:
        raise LocalProtocolError(f"{where}: only X | None unions are supported")
    inner_enc, inner_dec = _compile(args[0], limits, where)

    def enc_optional(v: Any) -> Any:
        return None if v is None else inner_enc(v)

    def dec_optional(v: Any, w: str) -> Any:
        return None if v is None else inner_dec(v, w)

    return enc_optional, dec_optional


def _checked_encoder(dec: Decoder, where: str) -> Encoder:
    """An encoder for a primitive: validates with the decoder (as a local error)."""

    def enc(v: Any) -> Any:
        try:
            return dec(v, where)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None

    return enc


def _wrapped(
    to_wire: Callable[[Any], Any],
    from_wire: Callable[[Any], Any],
    wire_type: type,
    where: str,
    what: str,
) -> tuple[Encoder, Decoder]:
    def enc(v: Any) -> Any:
        try:
            return to_wire(v)
        except AttributeError:
            raise LocalProtocolError(f"{where}: expected {what}") from None

    def dec(v: Any, w: str) -> Any:
        if type(v) is not wire_type:
            raise RemoteProtocolError(f"{w}: expected {what}")
        try:
            return from_wire(v)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"{w}: {exc}") from None

    return enc, dec
