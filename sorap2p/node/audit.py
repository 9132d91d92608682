"""`audit verify`: anyone with the chain and the blocks re-checks a proven round.

Checks, each reported separately:
1. the round is recorded, and the `submitRound` transaction's record hashes to what the
   ledger stored (struct hash in the event, first 20 bytes in storage);
2. the proof's signatures recover to distinct members of the validator set, in ascending
   order, at least the quorum;
3. lineage: the record's parent model CID is the model CID recorded by the parent round;
4. the round metadata document (DAG-CBOR, addressed by the record's metadata hash) is in
   the blockstore and its updates rebuild the record's Merkle root, and its ranking rebuilds
   the record's trainers and reputation deltas;
5. with a recipient's identity (a validator's or the aggregator's home): every accepted
   update is decrypted and the aggregate recomputed; it must give the recorded model CID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sorap2p.chain.client import ChainClient
from sorap2p.chain.proof import MerkleTree, RoundRecord, UpdateLeaf, recover_signer, round_digest
from sorap2p.core import messages as m
from sorap2p.core.cid import DAG_CBOR, Cid
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.ids import PeerId, RoundId, SubnetId
from sorap2p.node import work
from sorap2p.store import dagcbor
from sorap2p.store.blockstore import Blockstore


@dataclass
class AuditReport:
    subnet: str
    round: int
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def render(self) -> str:
        lines = [f"audit of subnet {self.subnet} round {self.round}:"]
        for name, ok, detail in self.checks:
            lines.append(f"  [{'ok' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
        lines.append(f"verdict: {'VALID' if self.ok else 'INVALID'}")
        return "\n".join(lines)


def recorded_event(client: ChainClient, subnet: bytes, round: int) -> Any | None:
    """The ``RoundRecorded`` log of a round (the last one if a reorg repeated it), or None."""
    assert client.deployment is not None
    event = client.ledger.events.RoundRecorded()
    logs = event.get_logs(
        from_block=client.deployment.block,
        argument_filters={"subnet": subnet, "round": round},
    )
    return logs[-1] if logs else None


def record_from_tx(client: ChainClient, tx_hash: bytes) -> tuple[RoundRecord, bytes]:
    """The round record and packed signatures of a ``submitRound`` transaction's input."""
    tx = client.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    _fn, args = client.ledger.decode_function_input(tx["input"])
    raw = args["r"]
    names = (
        "subnet",
        "round",
        "validatorSetVersion",
        "parentCid",
        "modelCid",
        "updatesRoot",
        "metadataHash",
        "aggregator",
        "trainers",
        "deltas",
    )
    r = [raw[n] for n in names] if isinstance(raw, dict) else list(raw)
    record = RoundRecord(
        subnet=bytes(r[0]),
        round=int(r[1]),
        validator_set_version=int(r[2]),
        parent_cid=bytes(r[3]),
        model_cid=bytes(r[4]),
        updates_root=bytes(r[5]),
        metadata_hash=bytes(r[6]),
        aggregator=bytes(r[7]),
        trainers=tuple(bytes(t) for t in r[8]),
        deltas=tuple(int(d) for d in r[9]),
    )
    return record, bytes(args["signatures"])


def audit_round(
    client: ChainClient,
    store: Blockstore,
    subnet: SubnetId,
    round: RoundId,
    *,
    identity: IdentityKey | None = None,
    model_ref: str = "digits_cnn",
) -> AuditReport:
    report = AuditReport(subnet.name, round.number)
    key = subnet.key
    ev = recorded_event(client, key, round.number)
    if not report.add("recorded on chain", ev is not None, "" if ev else "no RoundRecorded"):
        return report
    assert ev is not None
    record, packed = record_from_tx(client, bytes(ev["transactionHash"]))
    stored = client.round_info(key, round.number)
    struct_hash = record.struct_hash()
    report.add(
        "record matches the ledger",
        struct_hash == bytes(ev["args"]["structHash"]) and struct_hash[:20] == stored.record_hash,
        f"struct hash {struct_hash.hex()[:16]}…",
    )
    # -- signatures
    digest = round_digest(client.domain, record)
    sigs = [packed[i : i + 65] for i in range(0, len(packed), 65)]
    version, quorum, validators = client.validator_set(key)
    try:
        signers = [recover_signer(digest, s).lower() for s in sigs]
    except Exception as exc:
        signers = []
        report.add("quorum signatures", False, f"unrecoverable signature: {exc}")
    else:
        vset = {v.lower() for v in validators}
        ordered = signers == sorted(signers, key=lambda a: int(a, 16)) and len(set(signers)) == len(
            signers
        )
        report.add(
            "quorum signatures",
            ordered
            and all(s in vset for s in signers)
            and len(signers) >= quorum
            and record.validator_set_version == version,
            f"{len(signers)} distinct validators of set v{version}, quorum {quorum}",
        )
    # -- lineage
    parent_round = int(ev["args"]["parentRound"])
    if parent_round:
        parent_ev = recorded_event(client, key, parent_round)
        parent_model = bytes(parent_ev["args"]["modelCid"]) if parent_ev else b""
        report.add(
            "lineage",
            parent_model == record.parent_cid,
            f"parent round {parent_round}, chain {client.lineage(key, round.number)}",
        )
    else:
        report.add("lineage", True, "first recorded round")
    # -- metadata, Merkle root, ranking
    meta_cid = Cid.from_digest(record.metadata_hash, DAG_CBOR)
    if not store.has(meta_cid):
        report.add("metadata document", False, f"{meta_cid} is not in the blockstore")
        return report
    doc: Any = dagcbor.decode(store.get(meta_cid))
    updates = doc["updates"]
    leaves = [
        UpdateLeaf.of(u["update"], PeerId(u["trainer"]), int(u["timestamp"])) for u in updates
    ]
    report.add(
        "updates Merkle root",
        MerkleTree(leaves).root == record.updates_root,
        f"{len(leaves)} accepted updates",
    )
    order = sorted(
        range(len(updates)), key=lambda i: (-updates[i]["score"], updates[i]["update"].raw)
    )
    trainers = tuple(PeerId(updates[i]["trainer"]).hashed for i in order)
    deltas = tuple(int(updates[i]["score"]) // work.REPUTATION_SCALE for i in order)
    report.add(
        "ranking and reputation deltas",
        trainers == record.trainers and deltas == record.deltas,
        f"best: {PeerId(updates[order[0]]['trainer']) if order else '-'}",
    )
    report.add(
        "model CID",
        Cid.decode(record.model_cid) == doc["model"]
        and Cid.decode(record.parent_cid) == doc["parent"],
        str(doc["model"]),
    )
    # -- recompute the aggregate
    if identity is None:
        return report
    try:
        ro = m.RoundOpen(
            subnet=subnet,
            round=round,
            global_model=doc["parent"],
            model=model_ref,
            opened_at=int(doc["opened_at"]),
            deadline=int(doc["deadline"]),
            min_participants=1,
            recipients=(),
            strategy=str(doc["strategy"]),
            strategy_params=dict(doc["strategy_params"]),
            training=m.TrainingParams(epochs=1, batch_size=1, lr=0.1),
            signer=identity.peer_id,
        )
        anns = [
            m.UpdateAnnounce(
                subnet=subnet,
                round=round,
                update=u["update"],
                base_model=doc["parent"],
                device_hash=bytes(u["device_hash"]),
                num_samples=int(u["num_samples"]),
                update_size=0,
                timestamp=int(u["timestamp"]),
                train_ms=int(u["train_ms"]),
                encrypted_metrics=b"",
                signer=PeerId(u["trainer"]),
            )
            for u in updates
        ]
        ctx = work.model_context(model_ref)
        rows = torch.empty(len(anns), ctx.spec.size, dtype=torch.float32)
        for i, a in enumerate(anns):
            work.open_update(store, identity, a.update, ctx, rows[i])
        global_vec = work.load_vector(store, ro.global_model, ctx)
        rejected = work.refused_updates(doc)
        res = work.aggregate_round(store, ro, anns, rows, global_vec, ctx, rejected)
        report.add(
            "recomputed aggregate",
            res.model == doc["model"] and res.metadata == meta_cid,
            f"recomputed {res.model}",
        )
    except Exception as exc:
        report.add("recomputed aggregate", False, f"{type(exc).__name__}: {exc}")
    return report
