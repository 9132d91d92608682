"""The validators' dispute loop: a thin shell over `core.rounds.disputes.DisputeBook`.

It opens the on-chain dispute of a round this validator refused (when its rotation turn comes
and nobody did yet), signs and gossips its `VerdictVote` on every open dispute of the subnet it
can judge, counts the equal verdicts it hears, and posts ``resolveDispute`` once k signatures
exist and its turn has come. Chain events (``DisputeOpened``/``DisputeResolved``) come from the
node's registry follower (node/chainlink.py)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from sorap2p.chain.proof import Verdict
from sorap2p.core import messages as m
from sorap2p.core.codec import decode
from sorap2p.core.errors import RemoteProtocolError
from sorap2p.core.rounds.disputes import DisputeBook, OpenDispute, SignVerdict, SubmitVerdict
from sorap2p.core.topics import TopicKind
from sorap2p.node.chainlink import RegistryView
from sorap2p.node.proofs import ChainProofs
from sorap2p.node.services import Services

_log = logging.getLogger(__name__)


async def run_disputes(
    services: Services,
    proofs: ChainProofs,
    book: DisputeBook,
    status: dict[str, Any],
    *,
    tick_s: float = 0.5,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    registry: RegistryView = services.extras["registry"]
    my_address = bytes.fromhex(proofs.key.address.removeprefix("0x"))
    mine: dict[int, Verdict] = {}
    disputes: list[dict[str, Any]] = status.setdefault("disputes", [])
    verdicts: list[dict[str, Any]] = status.setdefault("verdicts", [])
    sub = await services.subscribe(TopicKind.VERDICTS)

    async def hear() -> None:
        async for item in sub:
            try:
                vote = decode(item.data, m.VerdictVote)
            except RemoteProtocolError:  # validated already
                continue
            book.vote(vote.dispute_id, vote.verdict_digest, vote.eth_address, vote.eth_signature)

    async def open_dispute(action: OpenDispute) -> None:
        try:
            dispute_id = await proofs.dispute(services.subnet, action.round, action.reason)
        except Exception as exc:
            _log.warning("round %s: opening the on-chain dispute failed: %s", action.round, exc)
            return
        for entry in disputes:
            if entry["round"] == action.round.number and dispute_id is not None:
                entry["dispute_id"] = dispute_id
        if dispute_id is not None:
            _log.info("round %s: on-chain dispute %d opened", action.round, dispute_id)

    async def sign(action: SignVerdict) -> None:
        offender = registry.address_of(action.offender)
        if offender is None:
            _log.warning(
                "dispute %d: offender %s has no chain address", action.dispute_id, action.offender
            )
            return
        view = services.view.get()
        verdict = Verdict(
            dispute_id=action.dispute_id,
            subnet=services.subnet.key,
            round=action.round.number,
            validator_set_version=max(1, view.validator_set_version),
            upheld=action.upheld,
            offender="0x" + offender.hex(),
            slash_amount=proofs.slash_amount if action.upheld else 0,
        )
        digest = proofs.verdict_digest(verdict)
        signature = proofs.sign_verdict(verdict)
        mine[action.dispute_id] = verdict
        book.signed(action.dispute_id, digest, my_address, signature)
        verdicts.append(
            {
                "dispute_id": action.dispute_id,
                "round": action.round.number,
                "upheld": action.upheld,
                "offender": verdict.offender,
                "slash": verdict.slash_amount,
            }
        )
        _log.info(
            "dispute %d (round %s): verdict %s",
            action.dispute_id,
            action.round,
            "upheld" if action.upheld else "rejected",
        )
        await services.publish(
            m.VerdictVote(
                subnet=services.subnet,
                dispute_id=action.dispute_id,
                round=action.round,
                validator_set_version=verdict.validator_set_version,
                upheld=verdict.upheld,
                offender=offender,
                slash_amount=verdict.slash_amount.to_bytes(32, "big"),
                verdict_digest=digest,
                eth_address=my_address,
                eth_signature=signature,
                signer=services.identity.peer_id,
            )
        )

    async def resolve(action: SubmitVerdict) -> None:
        verdict = mine.get(action.dispute_id)
        if verdict is None:
            return
        try:
            tx = await proofs.resolve(verdict, action.signatures)
        except Exception as exc:
            _log.warning("dispute %d: resolveDispute failed: %s", action.dispute_id, exc)
            return
        if tx:
            status.setdefault("resolutions", []).append(
                {"dispute_id": action.dispute_id, "upheld": verdict.upheld, "tx": tx.hex()}
            )
            _log.info("dispute %d: verdict submitted (tx %s)", action.dispute_id, tx.hex())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hear)
        task_status.started()
        while True:
            now = services.now()
            for action in book.challenges_due(now):
                nursery.start_soon(open_dispute, action)
            for dispute_id, upheld in list(registry.resolutions.items()):
                if dispute_id not in book.resolved:
                    book.dispute_resolved(dispute_id, upheld)
                    for entry in verdicts:
                        if entry["dispute_id"] == dispute_id:
                            entry["resolved"] = upheld
            for dispute_id, round in list(registry.disputes.items()):
                if dispute_id in book.resolved:
                    continue
                sign_action = book.dispute_opened(dispute_id, round)
                if sign_action is not None:
                    nursery.start_soon(sign, sign_action)
            for submit in book.submissions_due(now):
                nursery.start_soon(resolve, submit)
            await trio.sleep(tick_s)
