"""Factories of keys and protocol messages for tests (deterministic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sorap2p.core import messages as m
from sorap2p.core.cid import DAG_CBOR, Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import Role, RoundId, SubnetId

SUBNET = SubnetId("test")


def key(n: int) -> IdentityKey:
    return IdentityKey(hashlib.sha256(b"sorap2p-test-key" + n.to_bytes(4, "big")).digest())


def eth_address(n: int) -> bytes:
    return hashlib.sha256(b"eth" + n.to_bytes(4, "big")).digest()[:20]


def cid(label: str) -> Cid:
    return Cid.hash(label.encode(), DAG_CBOR)


@dataclass(frozen=True, slots=True)
class Cast:
    """A subnet's cast: one aggregator, validators and trainers with deterministic keys."""

    aggregator: IdentityKey
    validators: tuple[IdentityKey, ...]
    trainers: tuple[IdentityKey, ...]

    @classmethod
    def make(cls, validators: int = 3, trainers: int = 5) -> Cast:
        return cls(
            key(0),
            tuple(key(100 + i) for i in range(validators)),
            tuple(key(200 + i) for i in range(trainers)),
        )

    def recipients(self) -> tuple[m.Recipient, ...]:
        out = [m.Recipient(self.aggregator.peer_id, Role.AGGREGATOR, self.aggregator.x25519_public)]
        out += [m.Recipient(v.peer_id, Role.VALIDATOR, v.x25519_public) for v in self.validators]
        return tuple(out)


def training() -> m.TrainingParams:
    return m.TrainingParams(epochs=1, batch_size=16, lr=0.05)


def round_open(
    agg: IdentityKey,
    round: int,
    recipients: tuple[m.Recipient, ...],
    *,
    opened_at: int = 0,
    duration: int = 30_000,
    model: Cid | None = None,
) -> m.RoundOpen:
    return m.sign(
        agg,
        m.RoundOpen(
            subnet=SUBNET,
            round=RoundId(round),
            global_model=model or cid(f"model-{round - 1}"),
            model="digits_cnn",
            opened_at=opened_at,
            deadline=opened_at + duration,
            min_participants=1,
            recipients=recipients,
            strategy="fedavg",
            strategy_params={},
            training=training(),
            signer=agg.peer_id,
        ),
    )


def announce(
    trainer: IdentityKey,
    ro: m.RoundOpen,
    *,
    at: int | None = None,
    label: str = "",
) -> m.UpdateAnnounce:
    ts = ro.opened_at + 1_000 if at is None else at
    return m.sign(
        trainer,
        m.UpdateAnnounce(
            subnet=ro.subnet,
            round=ro.round,
            update=cid(f"update-{ro.round}-{trainer.peer_id}{label}"),
            base_model=ro.global_model,
            device_hash=hashlib.sha256(trainer.seed).digest(),
            num_samples=100,
            update_size=1000,
            timestamp=ts,
            train_ms=max(0, ts - ro.opened_at - 10),
            encrypted_metrics=b"",
            signer=trainer.peer_id,
        ),
    )
