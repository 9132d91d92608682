"""Model DAGs: a torch ``state_dict`` as a DAG-CBOR manifest over raw chunk blocks.

The tensors (sorted by name) are laid end to end in one flat byte buffer, each starting at a
multiple of 64 bytes (zero padding between them); the buffer is cut into ``chunk_size``
pieces stored as raw blocks. The manifest (schema in protocols/blockstore.md)::

    {"type": "sorap2p/state-dict", "version": 1, "chunk_size": int, "length": int,
     "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}...], "chunks": [CID...],
     "meta": {...}}

Equal tensors give equal bytes, so equal root CIDs. Decoding reads every chunk, verified,
straight into one buffer and returns tensors that are views of it (no further copy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import torch

from sorap2p.core.cid import DAG_CBOR, RAW, Cid
from sorap2p.core.errors import LocalProtocolError
from sorap2p.store import dagcbor
from sorap2p.store.blockstore import MAX_BLOCK_SIZE, Blockstore
from sorap2p.store.errors import CodecError

MANIFEST_TYPE: Final = "sorap2p/state-dict"
DEFAULT_CHUNK_SIZE: Final = 1 << 20
ALIGN: Final = 64
MAX_TENSORS: Final = 100_000
MAX_MODEL_BYTES: Final = 1 << 36

DTYPES: Final[dict[str, torch.dtype]] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: Final[dict[torch.dtype, str]] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class ModelManifest:
    chunk_size: int
    length: int
    tensors: tuple[TensorEntry, ...]
    chunks: tuple[Cid, ...]
    meta: dict[str, dagcbor.Value]

    def to_value(self) -> dagcbor.Value:
        value: dict[str, dagcbor.Value] = {
            "type": MANIFEST_TYPE,
            "version": 1,
            "chunk_size": self.chunk_size,
            "length": self.length,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "offset": t.offset,
                    "nbytes": t.nbytes,
                }
                for t in self.tensors
            ],
            "chunks": list(self.chunks),
        }
        if self.meta:
            value["meta"] = self.meta
        return value

    @classmethod
    def from_value(cls, value: dagcbor.Value) -> ModelManifest:
        """Validate a decoded manifest; `CodecError` for anything inconsistent."""
        if not isinstance(value, dict) or value.get("type") != MANIFEST_TYPE:
            raise CodecError("not a sorap2p state-dict manifest")
        extra = set(value) - {
            "type",
            "version",
            "chunk_size",
            "length",
            "tensors",
            "chunks",
            "meta",
        }
        if extra or value.get("version") != 1:
            raise CodecError(f"unsupported manifest (version {value.get('version')!r}, {extra})")
        chunk_size, length = value.get("chunk_size"), value.get("length")
        tensors, chunks = value.get("tensors"), value.get("chunks")
        meta = value.get("meta", {})
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_BLOCK_SIZE:
            raise CodecError(f"bad chunk_size {chunk_size!r}")
        if not isinstance(length, int) or not 0 <= length <= MAX_MODEL_BYTES:
            raise CodecError(f"bad length {length!r}")
        if not isinstance(chunks, list) or not all(isinstance(c, Cid) for c in chunks):
            raise CodecError("chunks must be a list of CIDs")
        if len(chunks) != math.ceil(length / chunk_size):
            raise CodecError(f"{len(chunks)} chunks cannot hold {length} bytes")
        if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
            raise CodecError("tensors must be a list")
        if not isinstance(meta, dict):
            raise CodecError("meta must be a map")
        entries = []
        names: set[str] = set()
        end = 0
        for t in tensors:
            entry = _entry(t)
            if entry.name in names:
                raise CodecError(f"tensor {entry.name!r} listed twice")
            names.add(entry.name)
            if entry.offset < end or entry.offset % ALIGN or entry.offset + entry.nbytes > length:
                raise CodecError(f"tensor {entry.name!r} overlaps or lies outside the buffer")
            end = entry.offset + entry.nbytes
            entries.append(entry)
        cids = tuple(c for c in chunks if isinstance(c, Cid))
        if any(c.codec != RAW for c in cids):
            raise CodecError("model chunks must be raw blocks")
        return cls(chunk_size, length, tuple(entries), cids, meta)


def _entry(t: dagcbor.Value) -> TensorEntry:
    if not isinstance(t, dict) or set(t) != {"name", "dtype", "shape", "offset", "nbytes"}:
        raise CodecError("tensor entry must have exactly name, dtype, shape, offset, nbytes")
    name, dtype, shape, offset, nbytes = (
        t["name"],
        t["dtype"],
        t["shape"],
        t["offset"],
        t["nbytes"],
    )
    if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in DTYPES:
        raise CodecError(f"bad tensor name or dtype {name!r} {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape
    ):
        raise CodecError(f"bad shape for {name!r}")
    if not isinstance(offset, int) or not isinstance(nbytes, int) or offset < 0:
        raise CodecError(f"bad offset for {name!r}")
    dims = tuple(d for d in shape if isinstance(d, int))
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    if nbytes != math.prod(dims) * itemsize:
        raise CodecError(f"nbytes of {name!r} does not match its shape and dtype")
    return TensorEntry(name, dtype, dims, offset, nbytes)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def byte_view(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory (no copy)."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise LocalProtocolError("buffer tensor must be a contiguous CPU tensor")
    return t.reshape(-1).view(torch.uint8).numpy().data.cast("B")


def _tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def layout_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[TensorEntry, ...]:
    """The tensor table of ``sd``: sorted by name, each at a 64-byte aligned offset."""
    entries = []
    offset = 0
    for name in sorted(sd):
        t = sd[name]
        if not isinstance(t, torch.Tensor):
            raise LocalProtocolError(f"{name!r} is not a tensor")
        dtype = DTYPE_NAMES.get(t.dtype)
        if dtype is None:
            raise LocalProtocolError(f"{name!r}: unsupported dtype {t.dtype}")
        offset = _align(offset)
        nbytes = t.numel() * t.element_size()
        entries.append(TensorEntry(name, dtype, tuple(t.shape), offset, nbytes))
        offset += nbytes
    return tuple(entries)


def pack_state_dict(
    sd: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, tuple[TensorEntry, ...]]:
    """The flat byte buffer and the tensor table of ``sd`` (sorted by name, 64-byte aligned)."""
    entries = layout_state_dict(sd)
    total = entries[-1].offset + entries[-1].nbytes if entries else 0
    flat = torch.zeros(total, dtype=torch.uint8)
    for e in entries:
        if e.nbytes:
            flat[e.offset : e.offset + e.nbytes] = _tensor_bytes(sd[e.name])
    return flat, entries


def iter_chunks(
    sd: Mapping[str, torch.Tensor], entries: tuple[TensorEntry, ...], chunk_size: int
) -> list[memoryview | bytes]:
    """The packed buffer of ``sd`` cut into ``chunk_size`` pieces without building it: a chunk
    inside one tensor is a view of that tensor's memory; only chunks that straddle tensors
    (or padding) are assembled."""
    views = []
    keep = []
    for e in entries:
        if e.nbytes:
            t = _tensor_bytes(sd[e.name])
            keep.append(t)
            views.append((e.offset, e.offset + e.nbytes, byte_view(t)))
    total = entries[-1].offset + entries[-1].nbytes if entries else 0
    out: list[memoryview | bytes] = []
    k = 0
    for start in range(0, total, chunk_size):
        end = min(start + chunk_size, total)
        while k < len(views) and views[k][1] <= start:
            k += 1
        if k < len(views) and views[k][0] <= start and end <= views[k][1]:
            lo = views[k][0]
            out.append(views[k][2][start - lo : end - lo])
            continue
        piece = bytearray(end - start)
        j = k
        while j < len(views) and views[j][0] < end:
            lo, hi, v = views[j]
            a, b = max(lo, start), min(hi, end)
            piece[a - start : b - start] = v[a - lo : b - lo]
            j += 1
        out.append(bytes(piece))
    return out


def encode_state_dict(
    store: Blockstore,
    sd: Mapping[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    meta: Mapping[str, dagcbor.Value] | None = None,
    workers: int = 1,
) -> Cid:
    """Store ``sd`` as a model DAG; return the manifest's CID.

    Chunks are hashed once and written straight from the tensors' memory (no copy but the
    chunks that straddle tensors). With ``workers`` >= 1 the store's helper threads hash up
    to 2 x ``workers`` chunks ahead while this thread writes (`Blockstore.put_many`);
    ``workers=0`` hashes and writes in this thread only. `StoreFullError` when the disk
    fills up: the chunks written so far stay as unpinned blocks (garbage collection takes
    them), no partial block or temporary file is left.
    """
    if not 1 <= chunk_size <= MAX_BLOCK_SIZE:
        raise LocalProtocolError(f"chunk_size must be 1..{MAX_BLOCK_SIZE}")
    entries = layout_state_dict(sd)
    pieces = iter_chunks(sd, entries, chunk_size)
    total = entries[-1].offset + entries[-1].nbytes if entries else 0
    if workers > 0:
        chunks = tuple(store.put_many(pieces, RAW, ahead=2 * workers))
    else:
        chunks = tuple(store.put(p, RAW) for p in pieces)
    manifest = ModelManifest(chunk_size, total, entries, chunks, dict(meta or {}))
    return store.put(dagcbor.encode(manifest.to_value()), DAG_CBOR)


def load_manifest(store: Blockstore, root: Cid) -> ModelManifest:
    if root.codec != DAG_CBOR:
        raise CodecError(f"{root} is not a DAG-CBOR manifest")
    return ModelManifest.from_value(dagcbor.decode(store.get(root)))


def read_flat(store: Blockstore, manifest: ModelManifest) -> torch.Tensor:
    """All chunks of ``manifest``, verified, read into one new uint8 buffer."""
    flat = torch.empty(manifest.length, dtype=torch.uint8)
    view = byte_view(flat)
    cs = manifest.chunk_size
    for i, cid in enumerate(manifest.chunks):
        want = min(cs, manifest.length - i * cs)
        got = store.get_into(cid, view[i * cs : i * cs + want])
        if got != want:
            raise CodecError(f"chunk {i} ({cid}) has {got} bytes, expected {want}")
    return flat


def tensors_from_buffer(manifest: ModelManifest, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``flat`` (uint8, ``manifest.length`` bytes) as the manifest's tensors."""
    if flat.dtype != torch.uint8 or flat.numel() != manifest.length:
        raise LocalProtocolError("buffer does not match the manifest")
    out = {}
    for e in manifest.tensors:
        piece = flat[e.offset : e.offset + e.nbytes]
        out[e.name] = piece.view(DTYPES[e.dtype]).view(e.shape)
    return out


def decode_state_dict(store: Blockstore, root: Cid) -> dict[str, torch.Tensor]:
    """The tensors of the model DAG under ``root`` (views of one verified buffer)."""
    manifest = load_manifest(store, root)
    return tensors_from_buffer(manifest, read_flat(store, manifest))
