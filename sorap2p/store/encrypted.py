"""Encrypted model updates: chunked AES-256-GCM (`ChunkCipher`) over a flat buffer, the
ciphertext chunks stored as raw blocks under a DAG-CBOR envelope that lists one sealed data
key per recipient (keyed by the recipient's peer id). Schema in protocols/blockstore.md::

    {"type": "sorap2p/encrypted-update", "version": 1, "cipher": "aes-256-gcm-chunked/v1",
     "payload_id": bytes, "chunk_size": int, "length": int, "dtype": str,
     "layout": [{"name": str, "shape": [int...]}...], "keys": {peer id: sealed key},
     "chunks": [CID...]}

``length`` is the plaintext size in bytes; every chunk but the last holds ``chunk_size``
plaintext bytes, and each ciphertext block is 16 bytes longer (the GCM tag). ``layout``
describes how the flat buffer splits into named tensors (empty for a bare flat tensor).
Decryption streams chunk by chunk straight into a caller-supplied buffer (the aggregator's
row of its stacked float32 matrix).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import torch

from sorap2p.core.cid import DAG_CBOR, RAW, Cid
from sorap2p.core.crypto import (
    MAX_PAYLOAD_ID,
    SEALED_KEY_BYTES,
    TAG_BYTES,
    ChunkCipher,
    IdentityKey,
    RandomBytes,
    seal,
    unseal,
)
from sorap2p.core.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId
from sorap2p.store import dagcbor
from sorap2p.store.blockstore import MAX_BLOCK_SIZE, Blockstore
from sorap2p.store.errors import CodecError
from sorap2p.store.model import DTYPE_NAMES, DTYPES, MAX_MODEL_BYTES, byte_view

ENVELOPE_TYPE: Final = "sorap2p/encrypted-update"
CIPHER_NAME: Final = "aes-256-gcm-chunked/v1"
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MAX_RECIPIENTS: Final = 1024


@dataclass(frozen=True, slots=True)
class LayoutEntry:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UpdateEnvelope:
    payload_id: bytes
    chunk_size: int
    length: int
    dtype: str
    layout: tuple[LayoutEntry, ...]
    keys: dict[str, bytes]  # peer id (base58 text) -> sealed data key
    chunks: tuple[Cid, ...]

    @property
    def numel(self) -> int:
        return self.length // torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    def to_value(self) -> dagcbor.Value:
        keys: dict[str, dagcbor.Value] = dict(self.keys.items())
        return {
            "type": ENVELOPE_TYPE,
            "version": 1,
            "cipher": CIPHER_NAME,
            "payload_id": self.payload_id,
            "chunk_size": self.chunk_size,
            "length": self.length,
            "dtype": self.dtype,
            "layout": [{"name": e.name, "shape": list(e.shape)} for e in self.layout],
            "keys": keys,
            "chunks": list(self.chunks),
        }

    @classmethod
    def from_value(cls, v: dagcbor.Value) -> UpdateEnvelope:
        fields = {"type", "version", "cipher", "payload_id", "chunk_size", "length", "dtype"}
        fields |= {"layout", "keys", "chunks"}
        if not isinstance(v, dict) or set(v) != fields or v["type"] != ENVELOPE_TYPE:
            raise CodecError("not a sorap2p encrypted-update envelope")
        if v["version"] != 1 or v["cipher"] != CIPHER_NAME:
            raise CodecError(f"unsupported envelope {v['version']!r} / {v['cipher']!r}")
        pid, cs, length, dtype = v["payload_id"], v["chunk_size"], v["length"], v["dtype"]
        if not isinstance(pid, bytes) or not 1 <= len(pid) <= MAX_PAYLOAD_ID:
            raise CodecError("bad payload_id")
        if not isinstance(cs, int) or not 1 <= cs <= MAX_BLOCK_SIZE - TAG_BYTES:
            raise CodecError(f"bad chunk_size {cs!r}")
        if not isinstance(length, int) or not 0 <= length <= MAX_MODEL_BYTES:
            raise CodecError(f"bad length {length!r}")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CodecError(f"bad dtype {dtype!r}")
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        if length % itemsize:
            raise CodecError("length is not a whole number of elements")
        chunks, keys, layout = v["chunks"], v["keys"], v["layout"]
        if not isinstance(chunks, list) or not all(
            isinstance(c, Cid) and c.codec == RAW for c in chunks
        ):
            raise CodecError("chunks must be a list of raw CIDs")
        if len(chunks) != max(1, math.ceil(length / cs)):
            raise CodecError(f"{len(chunks)} chunks do not match length {length}")
        if not isinstance(keys, dict) or not 1 <= len(keys) <= MAX_RECIPIENTS:
            raise CodecError("keys must be a non-empty map")
        sealed: dict[str, bytes] = {}
        for peer, key in keys.items():
            if not isinstance(key, bytes) or len(key) != SEALED_KEY_BYTES:
                raise CodecError(f"bad sealed key for {peer}")
            try:
                PeerId.parse(peer)
            except RemoteProtocolError as exc:
                raise CodecError(f"bad recipient peer id {peer!r}") from exc
            sealed[peer] = key
        if not isinstance(layout, list):
            raise CodecError("layout must be a list")
        entries = []
        total = 0
        for e in layout:
            if not isinstance(e, dict) or set(e) != {"name", "shape"}:
                raise CodecError("layout entries have exactly name and shape")
            name, shape = e["name"], e["shape"]
            if not isinstance(name, str) or not isinstance(shape, list):
                raise CodecError("bad layout entry")
            dims = tuple(d for d in shape if isinstance(d, int) and not isinstance(d, bool))
            if len(dims) != len(shape) or any(d < 0 for d in dims):
                raise CodecError(f"bad shape for {name!r}")
            total += math.prod(dims)
            entries.append(LayoutEntry(name, dims))
        if entries and total * itemsize != length:
            raise CodecError("layout does not add up to the length")
        cids = tuple(c for c in chunks if isinstance(c, Cid))
        return cls(pid, cs, length, dtype, tuple(entries), sealed, cids)


def flatten(
    sd: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, tuple[LayoutEntry, ...]]:
    """One contiguous 1-D tensor of ``sd``'s tensors (sorted by name) and its layout."""
    names = sorted(sd)
    layout = tuple(LayoutEntry(n, tuple(sd[n].shape)) for n in names)
    total = sum(sd[n].numel() for n in names)
    flat = torch.empty(total, dtype=dtype)
    pos = 0
    for n in names:
        t = sd[n].detach()
        flat[pos : pos + t.numel()] = t.reshape(-1).to(dtype)
        pos += t.numel()
    return flat, layout


def unflatten(flat: torch.Tensor, layout: tuple[LayoutEntry, ...]) -> dict[str, torch.Tensor]:
    """Views of ``flat`` shaped as ``layout`` (no copy)."""
    out = {}
    pos = 0
    for e in layout:
        n = math.prod(e.shape)
        out[e.name] = flat[pos : pos + n].view(e.shape)
        pos += n
    return out


def encrypt_update(
    store: Blockstore,
    flat_or_sd: torch.Tensor | Mapping[str, torch.Tensor],
    recipients: Mapping[PeerId, bytes],
    payload_id: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    random_bytes: RandomBytes = os.urandom,
) -> Cid:
    """Encrypt an update for ``recipients`` (peer id -> X25519 public key) and store it.

    A state dict is flattened to float32 first (``layout`` records its names and shapes);
    a tensor is encrypted as it is (contiguous, any supported dtype). Returns the envelope CID.
    `StoreFullError` when the disk fills up (no partial block or temporary file is left).
    """
    if not recipients or len(recipients) > MAX_RECIPIENTS:
        raise LocalProtocolError(f"an update needs 1..{MAX_RECIPIENTS} recipients")
    if not 1 <= chunk_size <= MAX_BLOCK_SIZE - TAG_BYTES:
        raise LocalProtocolError("chunk_size out of range")
    layout: tuple[LayoutEntry, ...] = ()
    if isinstance(flat_or_sd, torch.Tensor):
        flat = flat_or_sd.detach().to("cpu").contiguous().reshape(-1)
    else:
        flat, layout = flatten(flat_or_sd)
    dtype = DTYPE_NAMES.get(flat.dtype)
    if dtype is None:
        raise LocalProtocolError(f"unsupported dtype {flat.dtype}")
    data = byte_view(flat)
    key = ChunkCipher.new_key(random_bytes)
    cipher = ChunkCipher(key, payload_id)
    n = max(1, math.ceil(len(data) / chunk_size))
    sealed_chunks = (
        cipher.encrypt(i, data[i * chunk_size : (i + 1) * chunk_size], i == n - 1) for i in range(n)
    )
    # encrypted and written here, hashed by the store's helper threads meanwhile
    chunks = store.put_many(sealed_chunks, RAW)
    keys = {str(peer): seal(pub, key) for peer, pub in sorted(recipients.items())}
    env = UpdateEnvelope(payload_id, chunk_size, len(data), dtype, layout, keys, tuple(chunks))
    return store.put(dagcbor.encode(env.to_value()), DAG_CBOR)


def load_envelope(store: Blockstore, root: Cid) -> UpdateEnvelope:
    if root.codec != DAG_CBOR:
        raise CodecError(f"{root} is not a DAG-CBOR envelope")
    return UpdateEnvelope.from_value(dagcbor.decode(store.get(root)))


def decrypt_update_into(
    store: Blockstore,
    root: Cid,
    identity: IdentityKey,
    out: torch.Tensor | memoryview | bytearray,
    *,
    max_chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> UpdateEnvelope:
    """Decrypt the update under ``root`` into ``out`` (exactly ``length`` bytes: a tensor,
    e.g. one row of the aggregator's matrix, or a writable buffer); return its envelope.

    Raises `IntegrityError` when the update is not sealed to ``identity`` or any chunk fails
    authentication (``out`` then holds garbage), `CodecError` for a malformed envelope or a
    chunk larger than ``max_chunk_size``, `BlockNotFound` when a chunk is missing.
    """
    env = load_envelope(store, root)
    if env.chunk_size > max_chunk_size:
        raise CodecError(f"chunk size {env.chunk_size} exceeds the limit {max_chunk_size}")
    target = byte_view(out) if isinstance(out, torch.Tensor) else memoryview(out).cast("B")
    if len(target) != env.length:
        raise LocalProtocolError(f"buffer holds {len(target)} bytes, the update {env.length}")
    if target.readonly:
        raise LocalProtocolError("output buffer is read-only")
    sealed = env.keys.get(str(identity.peer_id))
    if sealed is None:
        raise IntegrityError(f"update {root} is not encrypted for {identity.peer_id}")
    cipher = ChunkCipher(unseal(identity, sealed), env.payload_id)
    n = len(env.chunks)
    cs = env.chunk_size
    # chunk i is decrypted while the store reads ahead and verifies chunk i + 1 (helper thread)
    for i, block in enumerate(store.get_many(env.chunks)):
        want = min(cs, env.length - i * cs)
        if len(block) != want + TAG_BYTES:
            raise CodecError(f"chunk {i} is {len(block)} bytes, expected {want + TAG_BYTES}")
        cipher.decrypt_into(i, block, target[i * cs :], i == n - 1)
    return env


def decrypt_update(
    store: Blockstore, root: Cid, identity: IdentityKey
) -> tuple[torch.Tensor, UpdateEnvelope]:
    """Decrypt into a new flat tensor of the envelope's dtype."""
    env = load_envelope(store, root)
    flat = torch.empty(env.numel, dtype=DTYPES[env.dtype])
    decrypt_update_into(store, root, identity, flat, max_chunk_size=max(env.chunk_size, 1))
    return flat, env
