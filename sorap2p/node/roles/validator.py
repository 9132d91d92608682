"""The validator role: watch the round, re-check the aggregator's work on the decrypted
updates, score it on held-out data, vote with an EIP-712 signature of the round record (or
dispute), and get the quorum proof on chain by rotation."""

from __future__ import annotations

import logging
from typing import Any

import torch
import trio

from sorap2p.chain.proof import RoundRecord, UpdateLeaf
from sorap2p.core import messages as m
from sorap2p.core.cid import Cid
from sorap2p.core.ids import PeerId, Role, RoundId
from sorap2p.core.rounds.disputes import DisputeBook, DisputeParams
from sorap2p.core.rounds.events import (
    AnnounceReceived,
    CastVote,
    CheckDone,
    CheckRound,
    ModelPublished,
    ProofObserved,
    RaiseDispute,
    RankingsPublished,
    RoundFinished,
    RoundOpened,
    SubmitProof,
    VoteSeen,
    WorkFailed,
)
from sorap2p.core.rounds.validator import ValidatorMachine, ValidatorParams
from sorap2p.core.topics import TopicKind
from sorap2p.learn.data import load_dataset
from sorap2p.node import work
from sorap2p.node.driver import Driver
from sorap2p.node.logs import bind
from sorap2p.node.proofs import ChainProofs, ProofBackend, digest_of, sign
from sorap2p.node.roles.common import (
    Tasks,
    pump,
    refetching,
    wait_for_validator_set,
    watch_for_proof,
)
from sorap2p.node.roles.disputes import run_disputes
from sorap2p.node.services import Services

_log = logging.getLogger(__name__)


def eth_address_bytes(address: str) -> bytes:
    return bytes.fromhex(address.removeprefix("0x"))


async def run_validator(services: Services, proofs: ProofBackend) -> None:
    log = bind(
        _log, role="validator", subnet=str(services.subnet), peer=str(services.identity.peer_id)
    )
    cfg = services.config
    await wait_for_validator_set(services, cfg.round.start_timeout_s)
    view = services.view.get()
    validators = view.validators or tuple(
        sorted({services.identity.peer_id, *(PeerId.parse(p) for p in cfg.round.validators)})
    )
    quorum = view.quorum if view.validators else cfg.round.quorum
    machine = ValidatorMachine(
        ValidatorParams(
            subnet=services.subnet,
            me=services.identity.peer_id,
            validators=validators,
            quorum=quorum,
            aggregator=view.aggregator,
            model_grace_ms=int(cfg.round.fetch_grace_s * 1000) + 60_000,
            backup_ms=int(cfg.round.backup_s * 1000),
            vote_timeout_ms=int(cfg.round.proof_timeout_s * 1000),
        )
    )
    held_out = (await trio.to_thread.run_sync(load_dataset, cfg.learn.dataset)).test
    my_address = eth_address_bytes(proofs.key.address)
    records: dict[RoundId, RoundRecord] = {}
    status: dict[str, Any] = services.extras.setdefault("status", {})
    status.update(role=Role.VALIDATOR.value, votes=[], proofs=[], checks=[])
    # disputes go on chain, judged by quorum-signed verdicts (no chain: gossip only)
    book = (
        DisputeBook(
            DisputeParams(
                services.identity.peer_id,
                validators,
                quorum,
                backup_ms=int(cfg.round.backup_s * 1000),
            )
        )
        if isinstance(proofs, ChainProofs) and "registry" in services.extras
        else None
    )

    subnet_root: list[tuple[Cid, tuple[torch.Tensor, torch.Tensor]]] = []

    async def root_of_subnet() -> tuple[Cid, tuple[torch.Tensor, torch.Tensor]]:
        """The root dataset this subnet's config names (derived once, stored, cached)."""
        if not subnet_root:
            data = await trio.to_thread.run_sync(
                work.root_dataset, cfg.learn.dataset, cfg.round.root_size, cfg.learn.seed
            )
            cid = await trio.to_thread.run_sync(work.store_root_data, services.blocks, data)
            subnet_root.append((cid, data))
        return subnet_root[0]

    async with trio.open_nursery() as nursery:
        tasks = Tasks(nursery)

        async def check_round(action: CheckRound) -> None:
            ro, gm, rk = action.round_open, action.model, action.rankings
            try:
                ctx = work.model_context(ro.model, cfg.learn.seed)
                await services.fetch_dag(gm.metadata, [gm.signer])
                refused = work.refused_updates(work.read_metadata(services.blocks, gm.metadata))
                seen = [(a.message, a.received_at) for a in action.announces]
                problem = work.inclusion_problem(ro, gm, refused, seen)
                if problem is not None:
                    await refuse(ro, problem, gm.signer)
                    return
                root = None
                if work.strategy_needs_reference(ro.strategy, ro.strategy_params):
                    expected, root = await root_of_subnet()
                    if ro.root_data != expected:
                        what = "not the subnet's" if ro.root_data else "missing"
                        await refuse(ro, f"root dataset {what}", gm.signer)
                        return
                by_cid = {a.message.update: a for a in action.announces}
                updates = [by_cid[c].message for c in gm.updates]
                await services.fetch_dag(ro.global_model, [ro.signer])
                await services.fetch_dag(gm.model, [gm.signer])
                rows = torch.empty(len(updates), ctx.spec.size, dtype=torch.float32)
                for i, a in enumerate(updates):

                    async def get(a: m.UpdateAnnounce = a) -> None:
                        await services.fetch_dag(a.update, [a.signer, gm.signer])

                    async def open_it(a: m.UpdateAnnounce = a, i: int = i) -> None:
                        await trio.to_thread.run_sync(
                            work.open_update,
                            services.blocks,
                            services.identity,
                            a.update,
                            ctx,
                            rows[i],
                        )

                    await refetching(get, open_it, f"update {a.update}", log)
                recheck = await trio.to_thread.run_sync(
                    work.recheck_round,
                    services.blocks,
                    ro,
                    gm,
                    rk,
                    updates,
                    rows,
                    ctx,
                    held_out,
                    root,
                )
            except Exception as exc:
                log.warning("round %s: cannot check: %s", ro.round, exc)
                await driver.feed(WorkFailed(str(exc)[:200]))
                return
            late = [a for a in updates if a.timestamp > ro.deadline + 30_000]
            ok, reason = recheck.ok, recheck.reason
            if cfg.node.behaviour == "approve_all":  # a colluding validator (tests, demos)
                ok, reason, late = True, "", []
            if ok and late:
                ok, reason = False, f"{len(late)} updates outside the round window"
            assert recheck.result is not None
            v = services.view.get()
            record = RoundRecord.build(
                subnet=ro.subnet,
                round=ro.round,
                validator_set_version=max(1, v.validator_set_version),
                parent=ro.global_model,
                model=gm.model,
                updates=[UpdateLeaf.of(a.update, a.signer, a.timestamp) for a in updates],
                metadata_hash=recheck.result.metadata_hash,
                aggregator=gm.signer,
                ranking=recheck.result.reputation,
            )
            records[ro.round] = record
            acc = recheck.evaluation.accuracy if recheck.evaluation else float("nan")
            status["last_check"] = {
                "round": ro.round.number,
                "ok": ok,
                "reason": reason,
                "accuracy": acc,
            }
            status["checks"].append(status["last_check"])
            if book is not None:
                book.round_checked(ro.round, ok, gm.signer, reason, services.now())
            log.info(
                "round %s: %s (held-out accuracy %.4f)",
                ro.round,
                "approve" if ok else f"reject: {reason}",
                acc,
            )
            await driver.feed(
                CheckDone(ok, digest_of(proofs, record), reason, None if ok else gm.signer)
            )

        async def refuse(ro: m.RoundOpen, reason: str, accused: PeerId) -> None:
            """Refuse a round before any recomputation (its update set is wrong)."""
            entry = {"round": ro.round.number, "ok": False, "reason": reason, "accuracy": None}
            status["last_check"] = entry
            status["checks"].append(entry)
            if book is not None:
                book.round_checked(ro.round, False, accused, reason, services.now())
            log.info("round %s: reject: %s", ro.round, reason)
            await driver.feed(CheckDone(False, bytes(32), reason, accused))

        async def check(action: CheckRound) -> None:
            try:
                await check_round(action)
            except Exception as exc:  # a failed check abstains; it never kills the role
                log.exception("round %s: check failed", action.round_open.round)
                await driver.feed(WorkFailed(f"check failed: {exc}"[:200]))

        async def submit(action: SubmitProof) -> None:
            record = records.get(action.round)
            if record is None:
                return
            try:
                tx = await proofs.submit(record, action.signatures)
            except Exception as exc:
                log.warning("round %s: proof submission failed: %s", action.round, exc)
                return
            proof = m.QuorumProof(
                subnet=services.subnet,
                round=action.round,
                record_digest=action.record_digest,
                signatures=action.signatures,
                tx_hash=tx,
                signer=services.identity.peer_id,
            )
            status["proofs"].append({"round": action.round.number, "tx": tx.hex()})
            log.info("round %s: proof submitted (tx %s)", action.round, tx.hex() or "gossip")
            await services.publish(proof)
            await driver.feed(ProofObserved(action.round, tx))

        async def perform(action: Any) -> None:
            if isinstance(action, CheckRound):
                tasks.start(("check", action.round_open.round), lambda: check(action))
            elif isinstance(action, CastVote):
                record = records.get(action.round)
                sig = sign(proofs, record) if action.approve and record is not None else b""
                vote = m.ValidationVote(
                    subnet=services.subnet,
                    round=action.round,
                    model=action.model,
                    approve=action.approve and bool(sig),
                    record_digest=action.record_digest,
                    eth_address=my_address,
                    eth_signature=sig,
                    reason=action.reason,
                    signer=services.identity.peer_id,
                )
                signed = m.sign(services.identity, vote)
                status["votes"].append({"round": action.round.number, "approve": vote.approve})
                await services.publish(vote)
                await driver.feed(VoteSeen(signed))
                tasks.start(
                    ("watch", action.round),
                    lambda: watch_for_proof(services, proofs, action.round, driver),
                )
            elif isinstance(action, SubmitProof):
                tasks.start(("submit", action.round), lambda: submit(action))
            elif isinstance(action, RaiseDispute):
                await services.publish(
                    m.Dispute(
                        subnet=services.subnet,
                        round=action.round,
                        accused=action.accused,
                        reason=action.reason[:64],
                        evidence=records_evidence(action.round),
                        tx_hash=b"",
                        signer=services.identity.peer_id,
                    )
                )
                # the on-chain dispute is opened by rotation (roles/disputes.py)
                status.setdefault("disputes", []).append(
                    {
                        "round": action.round.number,
                        "accused": str(action.accused),
                        "reason": action.reason,
                    }
                )
            elif isinstance(action, RoundFinished):
                tasks.cancel(("watch", action.round))
                status["last_round"] = {
                    "round": action.round.number,
                    "ok": action.ok,
                    "reason": action.reason,
                }

        def records_evidence(round: RoundId) -> Cid:
            gm = machine.model
            return gm.metadata if gm is not None else Cid.hash(b"")

        driver = Driver(machine, perform, services.clock)
        services.extras["driver"] = driver
        await nursery.start(driver.run)
        await nursery.start(
            pump, services, TopicKind.ROUNDS, driver, lambda msg, now: RoundOpened(msg)
        )
        await nursery.start(
            pump, services, TopicKind.UPDATES, driver, lambda msg, now: AnnounceReceived(msg, now)
        )
        await nursery.start(
            pump, services, TopicKind.MODELS, driver, lambda msg, now: ModelPublished(msg)
        )
        await nursery.start(
            pump, services, TopicKind.RANKINGS, driver, lambda msg, now: RankingsPublished(msg)
        )
        await nursery.start(pump, services, TopicKind.VOTES, driver, lambda msg, now: VoteSeen(msg))
        await nursery.start(
            pump,
            services,
            TopicKind.PROOFS,
            driver,
            lambda msg, now: ProofObserved(msg.round, msg.tx_hash),
        )
        if book is not None:
            assert isinstance(proofs, ChainProofs)
            await nursery.start(run_disputes, services, proofs, book, status)
        log.info("validator ready (%d validators, quorum %d)", len(validators), quorum)
