"""Builds protocols/vectors/blockstore.json (run ``python -m tests.store.vectors_gen``).

Everything is deterministic except each envelope's sealed keys (``crypto_box_seal`` uses a
fresh ephemeral key): the test checks those by decrypting, the rest byte for byte.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from sorap2p.core.crypto import ChunkCipher, IdentityKey
from sorap2p.store import Blockstore, CarWriter, import_bytes
from sorap2p.store.blockstore import block_key
from sorap2p.store.encrypted import encrypt_update
from sorap2p.store.model import encode_state_dict, load_manifest
from sorap2p.store.unixfs import V0_2015, V1_2025, Profile

VECTORS = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / "blockstore.json"
KiB, MiB = 1 << 10, 1 << 20


def pattern(n: int) -> bytes:
    """The test input of ``n`` bytes: byte i is (7 * i + 3) mod 251."""
    block = bytes((7 * i + 3) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


UNIXFS_CASES: list[tuple[Profile, int]] = [
    (V1_2025, 0),
    (V1_2025, 1),
    (V1_2025, MiB - 1),
    (V1_2025, MiB),
    (V1_2025, MiB + 1),
    (V1_2025, 3 * MiB + 5),
    (V0_2015, 0),
    (V0_2015, 1),
    (V0_2015, 256 * KiB),
    (V0_2015, 256 * KiB + 1),
    (V0_2015, MiB + 7),
]


def model_state_dict() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float32),
        "fc.bias": torch.tensor([0.25, -0.75], dtype=torch.float32),
        "steps": torch.tensor(3, dtype=torch.int64),
    }


def build(store: Blockstore) -> dict[str, Any]:
    out: dict[str, Any] = {"pattern": "byte i of an n-byte input is (7 * i + 3) mod 251"}
    cid = store.put(b"hello")
    key = block_key(cid)
    out["flatfs"] = {
        "data_hex": b"hello".hex(),
        "cid": str(cid),
        "key": key,
        "path": f"blocks/{key[-3:-1]}/{key}.data",
        "sharding": "/repo/flatfs/shard/v1/next-to-last/2",
    }
    out["unixfs"] = [
        {"profile": p.name, "size": n, "root": str(import_bytes(store, pattern(n), p).root)}
        for p, n in UNIXFS_CASES
    ]
    root = encode_state_dict(store, model_state_dict(), chunk_size=32)
    manifest = load_manifest(store, root)
    out["model"] = {
        "state_dict": {
            "fc.weight": "float32 [[1, -2], [0.5, 4]]",
            "fc.bias": "float32 [0.25, -0.75]",
            "steps": "int64 3 (0-d)",
        },
        "chunk_size": 32,
        "root": str(root),
        "manifest_hex": store.get(root).hex(),
        "chunks": [{"cid": str(c), "data_hex": store.get(c).hex()} for c in manifest.chunks],
    }
    cipher = ChunkCipher(bytes(range(32)), b"vector/payload")
    plain = pattern(40)
    out["aead"] = {
        "key_hex": bytes(range(32)).hex(),
        "payload_id_hex": b"vector/payload".hex(),
        "chunk_size": 16,
        "plaintext_hex": plain.hex(),
        "chunks_hex": [
            cipher.encrypt(i, plain[i * 16 : (i + 1) * 16], i == 2).hex() for i in range(3)
        ],
    }
    recipient = IdentityKey(bytes([9]) * 32)
    flat = torch.arange(10, dtype=torch.float32)
    env = encrypt_update(
        store,
        flat,
        {recipient.peer_id: recipient.x25519_public},
        b"vector/update",
        chunk_size=16,
        random_bytes=lambda n: bytes(range(n)),
    )
    out["envelope"] = {
        "recipient_seed_hex": (bytes([9]) * 32).hex(),
        "recipient_peer_id": str(recipient.peer_id),
        "plaintext": "float32 [0, 1, ..., 9]",
        "data_key_hex": bytes(range(32)).hex(),
        "root": str(env),
        "envelope_hex": store.get(env).hex(),
        "note": "sealed keys (and so root and envelope bytes) differ on every run",
    }
    car = io.BytesIO()
    leaf = store.put(b"car block")
    writer = CarWriter(car.write, [leaf])
    writer.add(leaf, b"car block")
    out["car"] = {
        "root": str(leaf),
        "block_hex": b"car block".hex(),
        "car_hex": car.getvalue().hex(),
    }
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps(build(Blockstore(Path(d))), indent=1) + "\n")
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()
