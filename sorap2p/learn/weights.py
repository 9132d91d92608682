"""Model weights as one contiguous float32 vector, and back.

A `ParamSpec` fixes the order, names, shapes, dtypes and offsets of a model's state_dict
entries. `flatten` writes a state_dict into one float32 vector (optionally into a caller's
preallocated row, e.g. a row of the aggregator's ``(n, d)`` matrix); `unflatten` returns a
state_dict whose float32 entries are zero-copy views into the vector. Non-float32 entries
(float16/float64 weights, integer buffers such as BatchNorm's ``num_batches_tracked``) are
stored as float32 values and cast back on `unflatten` (integers up to 2**24 round-trip exactly).

`describe()` / `ParamSpec.from_description()` give a plain, JSON-able form so that the
store layer can record the layout next to a model DAG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod

import torch

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in _DTYPES.items()}

Description = list[tuple[str, list[int], str]]


@dataclass(frozen=True, slots=True)
class ParamEntry:
    """One state_dict entry: its slice ``[offset, offset + numel)`` of the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """The ordered layout of a state_dict inside one float32 vector."""

    entries: tuple[ParamEntry, ...]

    # -- construction --------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> ParamSpec:
        """Layout of ``state`` in its own (insertion) order, as ``nn.Module.state_dict()`` gives."""
        entries: list[ParamEntry] = []
        offset = 0
        for name, tensor in state.items():
            if tensor.dtype not in _DTYPE_NAMES:
                raise LocalProtocolError(f"unsupported dtype {tensor.dtype} for {name!r}")
            shape = tuple(int(s) for s in tensor.shape)
            numel = prod(shape)
            entries.append(ParamEntry(name, shape, tensor.dtype, offset, numel))
            offset += numel
        return cls(tuple(entries))

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ParamSpec:
        return cls.from_state_dict(module.state_dict())

    @classmethod
    def from_description(
        cls, description: Sequence[Sequence[object]], *, max_size: int = 1 << 32
    ) -> ParamSpec:
        """Inverse of `describe`; malformed input (e.g. from a peer) raises RemoteProtocolError.

        Layouts of more than ``max_size`` scalars in total are rejected too.
        """
        entries: list[ParamEntry] = []
        offset = 0
        seen: set[str] = set()
        if isinstance(description, str | bytes) or not isinstance(description, Sequence):
            raise RemoteProtocolError("a param description is a list")
        for item in description:
            if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 3:
                raise RemoteProtocolError("a param description has (name, shape, dtype)")
            name, shape_obj, dtype_name = item
            if not isinstance(name, str) or name in seen:
                raise RemoteProtocolError(f"bad or duplicate param name {name!r}")
            if (
                isinstance(shape_obj, str | bytes)
                or not isinstance(shape_obj, Sequence)
                or not all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape_obj
                )
            ):
                raise RemoteProtocolError(f"bad shape for {name!r}")
            if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
                raise RemoteProtocolError(f"bad dtype for {name!r}: {dtype_name!r}")
            shape = tuple(int(s) for s in shape_obj)
            numel = prod(shape)
            entries.append(ParamEntry(name, shape, _DTYPES[dtype_name], offset, numel))
            seen.add(name)
            offset += numel
            if offset > max_size:
                raise RemoteProtocolError(f"layout exceeds {max_size} scalars")
        return cls(tuple(entries))

    def describe(self) -> Description:
        """Plain ``[(name, shape, dtype_name), ...]``; offsets follow from the order."""
        return [(e.name, list(e.shape), _DTYPE_NAMES[e.dtype]) for e in self.entries]

    # -- properties ------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Length of the flat vector (number of scalars)."""
        if not self.entries:
            return 0
        last = self.entries[-1]
        return last.offset + last.numel

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    # -- conversion ------------------------------------------------------------------
    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise LocalProtocolError unless ``state`` has exactly these names and shapes."""
        if len(state) != len(self.entries):
            raise LocalProtocolError(
                f"state_dict has {len(state)} entries, the spec {len(self.entries)}"
            )
        for e in self.entries:
            t = state.get(e.name)
            if t is None:
                raise LocalProtocolError(f"state_dict lacks {e.name!r}")
            if tuple(t.shape) != e.shape:
                raise LocalProtocolError(
                    f"{e.name!r} has shape {tuple(t.shape)}, the spec {e.shape}"
                )

    def flatten(
        self, state: Mapping[str, torch.Tensor], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Copy ``state`` into a float32 vector (``out`` if given: 1-D, float32, contiguous)."""
        self.check(state)
        if out is None:
            out = torch.empty(self.size, dtype=torch.float32)
        elif out.dtype != torch.float32 or out.shape != (self.size,) or not out.is_contiguous():
            raise LocalProtocolError(f"out must be a contiguous float32 vector of {self.size}")
        with torch.no_grad():
            for e in self.entries:
                out[e.offset : e.offset + e.numel].copy_(state[e.name].detach().reshape(-1))
        return out

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """A state_dict from ``vector``; float32 entries are views sharing its memory."""
        if vector.dtype != torch.float32 or vector.shape != (self.size,):
            raise LocalProtocolError(f"expected a float32 vector of {self.size}")
        out: dict[str, torch.Tensor] = {}
        for e in self.entries:
            view = vector[e.offset : e.offset + e.numel].view(e.shape)
            if e.dtype == torch.float32:
                out[e.name] = view
            elif e.dtype.is_floating_point:
                out[e.name] = view.to(e.dtype)
            else:
                out[e.name] = view.round().to(e.dtype)
        return out

    def load_into(self, module: torch.nn.Module, vector: torch.Tensor) -> None:
        """Copy ``vector`` into ``module``'s parameters and buffers (in place)."""
        module.load_state_dict(self.unflatten(vector), strict=True)

    def read_from(self, module: torch.nn.Module, out: torch.Tensor | None = None) -> torch.Tensor:
        """Flatten ``module``'s current state into a float32 vector."""
        return self.flatten(module.state_dict(), out=out)


def flatten_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[ParamSpec, torch.Tensor]:
    """Convenience: the spec of ``state`` and its flat float32 vector."""
    spec = ParamSpec.from_state_dict(state)
    return spec, spec.flatten(state)
