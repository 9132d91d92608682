"""Hypothesis strategies for every wire type, derived from the message schemas.

`messages()` draws any registered message; `message_of(cls)` one type. Values respect each
field's limits and each message's invariants, so they always encode; tests then check
``decode(encode(m)) == m`` and feed mutated bytes to the decoders.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from hypothesis import strategies as st

from sorap2p.core import messages as m
from sorap2p.core.cid import DAG_CBOR, DAG_PB, RAW, Cid
from sorap2p.core.codec import TYPES
from sorap2p.core.ids import PeerId, Role, RoundId, SubnetId

cids = st.builds(Cid.hash, st.binary(max_size=64), st.sampled_from([RAW, DAG_CBOR, DAG_PB]))
peer_ids = st.builds(PeerId.from_public_key, st.binary(min_size=32, max_size=32))
subnet_ids = st.builds(SubnetId, st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,31}\Z"))
round_ids = st.builds(RoundId, st.integers(0, (1 << 63) - 1))
roles = st.sampled_from(list(Role))


def _limits(f: dataclasses.Field[Any]) -> dict[str, Any]:
    raw = f.metadata.get("sorap2p", {})
    return {k: v for k, v in raw.items() if v is not None}


def _for_type(tp: Any, limits: dict[str, Any]) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:  # X | None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | _for_type(inner, limits)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(limits.get("min_value", 0), limits.get("max_value", (1 << 63) - 1))
    if tp is float:
        return st.floats(
            limits.get("min_value", -1e300),
            limits.get("max_value", 1e300),
            allow_nan=False,
            allow_infinity=False,
        )
    if tp is str:
        max_len = limits.get("max_len", 256)
        return st.text(max_size=max_len // 4)
    if tp is bytes:
        if "size" in limits:
            return st.binary(min_size=limits["size"], max_size=limits["size"])
        return st.binary(max_size=min(limits.get("max_len", 1024), 128))
    if tp is Cid:
        return cids
    if tp is PeerId:
        return peer_ids
    if tp is SubnetId:
        return subnet_ids
    if tp is RoundId:
        return round_ids
    if tp is Role:
        return roles
    if origin is tuple:
        return st.lists(_for_type(typing.get_args(tp)[0], {}), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(
            st.text(max_size=16), _for_type(typing.get_args(tp)[1], {}), max_size=4
        )
    if dataclasses.is_dataclass(tp):
        return structs(tp)  # type: ignore[arg-type]
    raise TypeError(f"no strategy for {tp!r}")


def _fix(cls: type[Any], kw: dict[str, Any]) -> dict[str, Any]:
    """Adjust drawn fields so the message invariants hold."""
    if cls is m.RoundOpen:
        kw["opened_at"] = min(kw["opened_at"], (1 << 53) - 1)
        kw["deadline"] = max(kw["deadline"], kw["opened_at"] + 1)
        seen: set[PeerId] = set()
        kw["recipients"] = tuple(
            r
            for r in kw["recipients"]
            if not (r.peer in seen or seen.add(r.peer))  # type: ignore[func-returns-value]
        )
    elif cls is m.GlobalModel:
        kw["updates"] = tuple(sorted(set(kw["updates"])))
    elif cls is m.Rankings:
        kw["entries"] = tuple(
            dataclasses.replace(e, rank=i + 1) for i, e in enumerate(kw["entries"])
        )
    elif cls is m.ValidationVote:
        if kw["approve"]:
            kw["eth_signature"] = (kw["eth_signature"] * 65 + b"\x01" * 65)[:65]
    elif cls is m.VerdictVote:
        if not kw["upheld"]:
            kw["slash_amount"] = bytes(32)
    elif cls is m.QuorumProof:
        kw["signatures"] = tuple((s * 65 + b"\x02" * 65)[:65] for s in kw["signatures"])
    return kw


def structs(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _for_type(hints[f.name], _limits(f)) for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**_fix(cls, kw)))


def message_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    return structs(cls)


def messages() -> st.SearchStrategy[Any]:
    return st.one_of([message_of(t.cls) for t in TYPES])
