"""Contract events with confirmations: tentative until N blocks deep, retracted by reorgs.

`EventFollower.poll()` (blocking; call it from a worker thread) re-reads the unconfirmed tail of
the chain each time and returns what changed: ``TENTATIVE`` (seen in a block fewer than
``confirmations`` deep), ``CONFIRMED`` (now deep enough; never retracted afterwards, reorgs
deeper than ``confirmations`` being out of scope) and ``RETRACTED`` (a tentative event whose
block left the canonical chain).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from eth_utils.abi import event_abi_to_log_topic

from sorap2p.chain.client import ChainClient


class EventStatus(enum.StrEnum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    RETRACTED = "retracted"


@dataclass(frozen=True, slots=True)
class ChainEvent:
    name: str
    args: dict[str, Any]
    contract: str
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.block_hash, self.log_index)


@dataclass(frozen=True, slots=True)
class EventUpdate:
    status: EventStatus
    event: ChainEvent


class EventFollower:
    """Follows every event of the deployment's registry and ledger from ``from_block``."""

    def __init__(self, client: ChainClient, *, confirmations: int, from_block: int = 0) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be >= 1")
        self._client = client
        self.confirmations = confirmations
        self._confirmed_to = from_block - 1  # highest block whose events are all confirmed
        self._tentative: dict[tuple[bytes, int], ChainEvent] = {}
        self._decoders: dict[bytes, Any] = {}
        for contract in (client.registry, client.ledger):
            abi: list[dict[str, Any]] = list(contract.abi)  # type: ignore[arg-type]
            for item in abi:
                if item.get("type") == "event":
                    topic = bytes(event_abi_to_log_topic(item))  # type: ignore[arg-type]
                    self._decoders[topic] = getattr(contract.events, item["name"])()

    def poll(self) -> list[EventUpdate]:
        client = self._client
        head = client.block_number()
        start = self._confirmed_to + 1
        if head < start:
            return []
        logs = client._rpc(
            lambda: client.w3.eth.get_logs(
                {
                    "fromBlock": start,
                    "toBlock": head,
                    "address": [client.registry.address, client.ledger.address],
                }
            ),
            "get_logs",
        )
        current: dict[tuple[bytes, int], ChainEvent] = {}
        for entry in logs:
            event = self._decode(entry)
            if event is not None:
                current[event.key] = event
        updates = [
            EventUpdate(EventStatus.RETRACTED, ev)
            for key, ev in self._tentative.items()
            if key not in current
        ]
        confirmed_to = head - self.confirmations + 1
        tentative: dict[tuple[bytes, int], ChainEvent] = {}
        for key, ev in sorted(current.items(), key=lambda kv: (kv[1].block_number, kv[0][1])):
            if ev.block_number <= confirmed_to:
                updates.append(EventUpdate(EventStatus.CONFIRMED, ev))
            else:
                tentative[key] = ev
                if key not in self._tentative:
                    updates.append(EventUpdate(EventStatus.TENTATIVE, ev))
        self._tentative = tentative
        self._confirmed_to = max(self._confirmed_to, confirmed_to)
        return updates

    def _decode(self, entry: Any) -> ChainEvent | None:
        topics = entry["topics"]
        if not topics:
            return None
        decoder = self._decoders.get(bytes(topics[0]))
        if decoder is None:
            return None
        decoded = decoder.process_log(entry)
        return ChainEvent(
            name=str(decoded["event"]),
            args=dict(decoded["args"]),
            contract=str(entry["address"]),
            block_number=int(entry["blockNumber"]),
            block_hash=bytes(entry["blockHash"]),
            tx_hash=bytes(entry["transactionHash"]),
            log_index=int(entry["logIndex"]),
        )
