"""Golden test vectors for the core wire layer (protocols/vectors/core.json).

``python -m sorap2p.testing.vectors`` prints the vectors; ``--write`` rewrites the file.
The test suite recomputes them and compares byte for byte, so any change of the wire
format shows up as a diff of the committed vectors (and needs a new protocol version).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from sorap2p.core import messages as m
from sorap2p.core.cid import DAG_CBOR, RAW, Cid
from sorap2p.core.codec import encode
from sorap2p.core.crypto import ChunkCipher, IdentityKey, signing_input
from sorap2p.core.ids import PeerId, Role, RoundId, SubnetId
from sorap2p.core.topics import Topic, TopicKind

VECTORS_PATH = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / "core.json"

AGGREGATOR = IdentityKey(bytes(range(32)))
TRAINER = IdentityKey(bytes(range(32, 64)))
VALIDATOR = IdentityKey(bytes(range(64, 96)))
SUBNET = SubnetId("digits")
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def sample_messages() -> list[Any]:
    genesis = Cid.hash(b"genesis model", DAG_CBOR)
    update = Cid.hash(b"encrypted update", DAG_CBOR)
    model = Cid.hash(b"round 1 model", DAG_CBOR)
    meta = Cid.hash(b"round 1 metadata", DAG_CBOR)
    digest = hashlib.sha256(b"round record").digest()
    out: list[Any] = [
        m.sign(
            AGGREGATOR,
            m.RoundOpen(
                subnet=SUBNET,
                round=RoundId(1),
                global_model=genesis,
                model="digits_cnn",
                opened_at=T0,
                deadline=T0 + 30_000,
                min_participants=3,
                recipients=(
                    m.Recipient(AGGREGATOR.peer_id, Role.AGGREGATOR, AGGREGATOR.x25519_public),
                    m.Recipient(VALIDATOR.peer_id, Role.VALIDATOR, VALIDATOR.x25519_public),
                ),
                strategy="trimmed_mean",
                strategy_params={"trim_ratio": 0.1},
                training=m.TrainingParams(epochs=1, batch_size=32, lr=0.05, prox_mu=0.0),
                signer=AGGREGATOR.peer_id,
            ),
        ),
        m.sign(
            AGGREGATOR,
            m.RoundOpen(
                subnet=SUBNET,
                round=RoundId(2),
                global_model=model,
                model="digits_cnn",
                opened_at=T0 + 40_000,
                deadline=T0 + 70_000,
                min_participants=3,
                recipients=(
                    m.Recipient(AGGREGATOR.peer_id, Role.AGGREGATOR, AGGREGATOR.x25519_public),
                ),
                strategy="robust_fltrust",
                strategy_params={"reference_weight": 100.0},
                training=m.TrainingParams(epochs=2, batch_size=16, lr=0.05, momentum=0.9),
                signer=AGGREGATOR.peer_id,
                root_data=Cid.hash(b"root dataset", DAG_CBOR),
            ),
        ),
        m.sign(
            TRAINER,
            m.UpdateAnnounce(
                subnet=SUBNET,
                round=RoundId(1),
                update=update,
                base_model=genesis,
                device_hash=hashlib.sha256(b"device-salt|device-7").digest(),
                num_samples=180,
                update_size=151_872,
                timestamp=T0 + 4_200,
                train_ms=3_100,
                encrypted_metrics=bytes(range(44)),
                signer=TRAINER.peer_id,
            ),
        ),
        m.sign(
            AGGREGATOR,
            m.GlobalModel(
                subnet=SUBNET,
                round=RoundId(1),
                model=model,
                parent=genesis,
                strategy="fedavg",
                updates=(update,),
                num_samples=180,
                metadata=meta,
                created_at=T0 + 31_000,
                signer=AGGREGATOR.peer_id,
            ),
        ),
        m.sign(
            AGGREGATOR,
            m.Rankings(
                subnet=SUBNET,
                round=RoundId(1),
                model=model,
                entries=(m.RankEntry(TRAINER.peer_id, update, score=12_500, rank=1),),
                signer=AGGREGATOR.peer_id,
            ),
        ),
        m.sign(
            VALIDATOR,
            m.ValidationVote(
                subnet=SUBNET,
                round=RoundId(1),
                model=model,
                approve=True,
                record_digest=digest,
                eth_address=bytes(range(20)),
                eth_signature=bytes(range(65)),
                reason="",
                signer=VALIDATOR.peer_id,
            ),
        ),
        m.sign(
            VALIDATOR,
            m.QuorumProof(
                subnet=SUBNET,
                round=RoundId(1),
                record_digest=digest,
                signatures=(bytes(range(65)), bytes(range(1, 66))),
                tx_hash=b"",
                signer=VALIDATOR.peer_id,
            ),
        ),
        m.sign(
            VALIDATOR,
            m.Dispute(
                subnet=SUBNET,
                round=RoundId(1),
                accused=AGGREGATOR.peer_id,
                reason="wrong_aggregate",
                evidence=meta,
                tx_hash=b"",
                signer=VALIDATOR.peer_id,
            ),
        ),
        m.sign(
            VALIDATOR,
            m.VerdictVote(
                subnet=SUBNET,
                dispute_id=1,
                round=RoundId(1),
                validator_set_version=1,
                upheld=True,
                offender=bytes(range(100, 120)),
                slash_amount=(10**15).to_bytes(32, "big"),
                verdict_digest=digest,
                eth_address=bytes(range(20)),
                eth_signature=bytes(range(65)),
                signer=VALIDATOR.peer_id,
            ),
        ),
        m.sign(
            AGGREGATOR,
            m.SubnetRecord(
                subnet=SUBNET,
                version=1,
                aggregator=AGGREGATOR.peer_id,
                validator_set_version=1,
                validators=(VALIDATOR.peer_id,),
                round_length_ms=30_000,
                model="digits_cnn",
                updated_at=T0,
                signer=AGGREGATOR.peer_id,
            ),
        ),
    ]
    return out


def build() -> dict[str, Any]:
    msgs = []
    for msg in sample_messages():
        raw = encode(msg)
        msgs.append(
            {
                "type": type(msg).__name__,
                "context": m.signature_context(msg),
                "signer": str(msg.signer),
                "signing_input": signing_input(
                    m.signature_context(msg), m.signing_bytes(msg)
                ).hex(),
                "signature": msg.signature.hex(),
                "encoded": raw.hex(),
            }
        )
    cipher = ChunkCipher(bytes(range(100, 132)), b"payload-id")
    aead = [
        {
            "key": bytes(range(100, 132)).hex(),
            "payload_id": b"payload-id".hex(),
            "index": index,
            "last": last,
            "plaintext": plain.hex(),
            "aad": cipher.aad(index, last).hex(),
            "sealed": cipher.encrypt(index, plain, last).hex(),
        }
        for index, last, plain in [
            (0, False, b"chunk zero"),
            (1, True, b""),
            (7, True, b"\x00" * 33),
        ]
    ]
    keys = [
        {
            "seed": k.seed.hex(),
            "ed25519_public": k.public_key.hex(),
            "peer_id": str(k.peer_id),
            "peer_id_bytes": k.peer_id.raw.hex(),
            "x25519_public": k.x25519_public.hex(),
            "peer_id_sha256": k.peer_id.hashed.hex(),
        }
        for k in (AGGREGATOR, TRAINER, VALIDATOR)
    ]
    cids = [
        {"data": d.hex(), "codec": c, "cid": str(Cid.hash(d, c)), "bytes": Cid.hash(d, c).raw.hex()}
        for d, c in [(b"", RAW), (b"hello", RAW), (b"\xa0", DAG_CBOR)]
    ]
    topics = [str(Topic(SUBNET, k)) for k in TopicKind]
    return {
        "description": "sorap2p core wire vectors; see protocols/envelope.md and messages.md",
        "keys": keys,
        "cids": cids,
        "topics": topics,
        "aead": aead,
        "messages": msgs,
        "subnet_key": {"subnet": SUBNET.name, "key": SUBNET.key.hex()},
        "peer_text_example": str(PeerId.from_public_key(bytes(32))),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        VECTORS_PATH.write_text(render())
        print(f"wrote {VECTORS_PATH}")
    else:
        sys.stdout.write(render())
