"""Model DAGs (state_dict <-> DAG) and encrypted updates, on a real block store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sorap2p.core.cid import DAG_CBOR, RAW
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import IntegrityError, LocalProtocolError
from sorap2p.store import BlockNotFound, Blockstore, CorruptBlock, dagcbor, iter_dag
from sorap2p.store.encrypted import (
    decrypt_update,
    decrypt_update_into,
    encrypt_update,
    flatten,
    load_envelope,
    unflatten,
)
from sorap2p.store.errors import CodecError
from sorap2p.store.model import (
    DTYPES,
    decode_state_dict,
    encode_state_dict,
    iter_chunks,
    load_manifest,
    pack_state_dict,
)


def _model() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "conv.weight": torch.randn(8, 1, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g),
        "fc.weight": torch.randn(10, 300, generator=g).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(5),
        "mask": torch.rand(17, generator=g) > 0.5,
        "empty": torch.empty(0, 4),
        "bf": torch.randn(3, generator=g).to(torch.bfloat16),
    }


def test_round_trip_and_determinism(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    sd = _model()
    root = encode_state_dict(store, sd, chunk_size=1000)
    assert root.codec == DAG_CBOR
    reversed_sd = dict(reversed(list(sd.items())))
    assert (
        encode_state_dict(store, {k: v.clone() for k, v in reversed_sd.items()}, chunk_size=1000)
        == root
    )
    assert encode_state_dict(store, sd, chunk_size=1000, workers=2) == root
    out = decode_state_dict(store, root)
    assert list(out) == sorted(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t)
    changed = dict(sd)
    changed["conv.bias"] = sd["conv.bias"] + 1
    assert encode_state_dict(store, changed, chunk_size=1000) != root
    manifest = load_manifest(store, root)
    assert len(manifest.chunks) == math.ceil(manifest.length / 1000)
    assert all(c.codec == RAW for c in manifest.chunks)
    assert list(iter_dag(store, root))[1:] == list(dict.fromkeys(manifest.chunks))


def test_decode_is_zero_copy_views_of_one_buffer(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    root = encode_state_dict(store, _model())
    out = decode_state_dict(store, root)
    bases = {t.untyped_storage().data_ptr() for t in out.values() if t.numel()}
    assert len(bases) == 1  # every tensor is a view of the one verified buffer
    assert all(t.data_ptr() % 64 == 0 for t in out.values() if t.numel())


def test_corrupt_or_missing_chunk(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    root = encode_state_dict(store, {"w": torch.randn(1000)}, chunk_size=1024)
    chunks = load_manifest(store, root).chunks
    path = store.path_of(chunks[1])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptBlock):
        decode_state_dict(store, root)
    with pytest.raises(BlockNotFound):
        decode_state_dict(store, root)


def test_malformed_manifests_are_rejected(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    root = encode_state_dict(store, {"w": torch.randn(10)})
    value = dagcbor.decode(store.get(root))
    assert isinstance(value, dict)
    bad_values = []
    for key, bad in [("length", 10**12), ("chunk_size", 0), ("version", 2), ("extra", 1)]:
        bad_values.append({**value, key: bad})
    tensors = value["tensors"]
    assert isinstance(tensors, list) and isinstance(tensors[0], dict)
    bad_values.append({**value, "tensors": [{**tensors[0], "nbytes": 44}]})
    bad_values.append({**value, "tensors": [{**tensors[0], "dtype": "object"}]})
    bad_values.append({**value, "tensors": [tensors[0], tensors[0]]})
    for bad in bad_values:
        cid = store.put(dagcbor.encode(bad), DAG_CBOR)
        with pytest.raises(CodecError):
            decode_state_dict(store, cid)


dtype_st = st.sampled_from(sorted(DTYPES))
tensor_st = st.tuples(dtype_st, st.lists(st.integers(0, 5), max_size=3), st.integers(0, 2**31))


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=10), tensor_st, max_size=5), st.integers(1, 300)
)
def test_hypothesis_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    spec: dict[str, tuple[str, list[int], int]],
    chunk_size: int,
) -> None:
    store = Blockstore(tmp_path_factory.mktemp("m"))
    sd = {}
    for name, (dtype, shape, seed) in spec.items():
        g = torch.Generator().manual_seed(seed)
        t = torch.randint(0, 100, shape, generator=g)
        sd[name] = t.to(DTYPES[dtype])
    root = encode_state_dict(store, sd, chunk_size=chunk_size)
    flat, entries = pack_state_dict(sd)
    pieces = iter_chunks(sd, entries, chunk_size)
    assert b"".join(bytes(p) for p in pieces) == flat.numpy().tobytes()
    assert all(len(p) == chunk_size for p in pieces[:-1])
    out = decode_state_dict(store, root)
    assert set(out) == set(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and torch.equal(out[name], t)


# -- encrypted updates -------------------------------------------------------------------


def _keys(n: int) -> list[IdentityKey]:
    return [IdentityKey(bytes([i + 1]) * 32) for i in range(n)]


@pytest.mark.parametrize("chunk_size", [1 << 20, 1000, 4096 + 3])
def test_encrypted_update_streams_into_a_row(tmp_path: Path, chunk_size: int) -> None:
    store = Blockstore(tmp_path)
    alice, bob, eve = _keys(3)
    sd = {"w": torch.randn(70, 100), "b": torch.randn(3)}
    recipients = {k.peer_id: k.x25519_public for k in (alice, bob)}
    root = encrypt_update(store, sd, recipients, b"round-1/trainer-a", chunk_size=chunk_size)
    flat, layout = flatten(sd)
    matrix = torch.zeros(3, flat.numel())
    env = decrypt_update_into(store, root, bob, matrix[1], max_chunk_size=1 << 20)
    assert torch.equal(matrix[1], flat) and not matrix[0].any() and not matrix[2].any()
    assert env.layout == layout and set(env.keys) == {str(alice.peer_id), str(bob.peer_id)}
    assert all(torch.equal(unflatten(matrix[1], layout)[k], v) for k, v in sd.items())
    out = bytearray(flat.numel() * 4)
    decrypt_update_into(store, root, alice, memoryview(out), max_chunk_size=1 << 20)
    assert bytes(out) == flat.numpy().tobytes()
    with pytest.raises(IntegrityError, match="not encrypted for"):
        decrypt_update_into(store, root, eve, matrix[2])
    with pytest.raises(LocalProtocolError):
        decrypt_update_into(store, root, bob, torch.zeros(5))
    # ciphertext is what is stored: no chunk contains the plaintext
    env2 = load_envelope(store, root)
    assert all(store.get(c)[:64] not in flat.numpy().tobytes() for c in env2.chunks)


def test_encrypted_flat_tensor_and_tampering(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    (alice,) = _keys(1)
    flat = torch.arange(5000, dtype=torch.float32)
    root = encrypt_update(store, flat, {alice.peer_id: alice.x25519_public}, b"p", chunk_size=4096)
    out, env = decrypt_update(store, root, alice)
    assert torch.equal(out, flat) and env.layout == ()
    with pytest.raises(CodecError, match="limit"):
        decrypt_update_into(store, root, alice, torch.empty(5000), max_chunk_size=1024)
    # swap two ciphertext chunks in a forged envelope: authentication fails
    value = dagcbor.decode(store.get(root))
    assert isinstance(value, dict) and isinstance(value["chunks"], list)
    chunks = value["chunks"]
    forged = {**value, "chunks": [chunks[1], chunks[0], *chunks[2:]]}
    forged_root = store.put(dagcbor.encode(forged), DAG_CBOR)
    with pytest.raises(IntegrityError):
        decrypt_update_into(store, forged_root, alice, torch.empty(5000))
    empty = encrypt_update(store, torch.empty(0), {alice.peer_id: alice.x25519_public}, b"e")
    assert decrypt_update(store, empty, alice)[0].numel() == 0
