"""A typed, synchronous client of SubnetRegistry + RoundLedger over web3 (any backend).

Every method here may block: from trio call them through `sorap2p.chain.aio.AsyncChain`,
which runs them in `trio.to_thread`. Transactions are signed locally with explicit gas limits,
numbered by a `NonceManager` per account, pre-flighted with ``eth_call`` (so a revert raises
`TransactionRevertedError` naming the contract's custom error and costs no gas), sent, and
followed until they have ``confirmations`` blocks on top of them. A transaction that a reorg
drops is sent again (same bytes; re-signed with a fresh nonce if that one was taken meanwhile,
unless its effect is already on chain). Transport failures are retried with exponential backoff;
when the retries run out the RPC is reported down with `ChainError`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import requests
from eth_account import Account
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound

from sorap2p.chain.artifacts import decode_revert, load_artifact
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.nonces import NonceManager
from sorap2p.chain.proof import ChainKey, Domain, RoundProof, Verdict
from sorap2p.core.errors import ChainError, LocalProtocolError
from sorap2p.core.ids import PeerId, Role

log = logging.getLogger(__name__)
T = TypeVar("T")

# Explicit gas limits (measured by bench/bench_gas.py, with headroom).
GAS: Final[dict[str, int]] = {
    "setLedger": 80_000,
    "createSubnet": 700_000,
    "updateValidatorSet": 500_000,
    "join": 260_000,
    "addStake": 120_000,
    "leave": 80_000,
    "withdraw": 150_000,
    "fundRewards": 120_000,
    "creditRound": 120_000,
    "claim": 120_000,
    "openDispute": 260_000,
    "resolveDispute": 300_000,
    "withdrawBond": 80_000,
    "approve": 80_000,
    "mint": 120_000,
    "transfer": 60_000,
}
DEPLOY_GAS: Final = 6_000_000


def submit_round_gas(signatures: int, deltas: int) -> int:
    """Gas limit for ``submitRound``: first-time reputations cost ~25k each."""
    return 140_000 + 12_000 * signatures + 30_000 * deltas


class TransactionRevertedError(ChainError):
    """The contract refused the call; ``error`` is its custom error's name."""

    def __init__(self, what: str, error: str, args: tuple[Any, ...] = ()) -> None:
        super().__init__(f"{what} reverted: {error}{args if args else ''}")
        self.error = error
        self.error_args = args


_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6
    first_delay: float = 0.05
    max_delay: float = 2.0

    def delays(self) -> list[float]:
        return [min(self.max_delay, self.first_delay * 2**i) for i in range(self.attempts - 1)]


@dataclass(frozen=True, slots=True)
class ChainConfig:
    confirmations: int = 1
    poll_interval: float = 0.05
    confirm_timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    preflight: bool = True
    max_priority_fee: int = 10**9
    # a transaction still unmined this long after sending is checked for a nonce gap below it
    gap_grace: float = 2.0


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    gas_used: int
    status: int
    logs: tuple[Any, ...]
    contract_address: str | None = None


@dataclass(slots=True)
class SentTx:
    """A signed transaction in flight (mutable: a resubmission may re-sign it)."""

    what: str
    key: ChainKey
    to: str | None
    data: bytes
    value: int
    gas: int
    nonce: int
    raw: bytes
    tx_hash: bytes
    done: Callable[[], bool] | None = None
    resubmissions: int = 0


@dataclass(slots=True)
class ClientStatistics:
    sent: int = 0
    retries: int = 0
    resubmissions: int = 0
    reverted: int = 0
    gap_fills: int = 0


class ChainClient:
    """SubnetRegistry + RoundLedger of one `Deployment`, through one web3 connection."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment | None = None,
        config: ChainConfig | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.w3 = w3
        self.config = config or ChainConfig()
        self._sleep = sleep
        self.nonces = NonceManager(
            lambda a: self._rpc(
                lambda: self.w3.eth.get_transaction_count(to_checksum_address(a), "pending"),
                "nonce",
            )
        )
        self.stats = ClientStatistics()
        self._chain_id: int | None = None
        self.deployment = deployment
        if deployment is not None:
            self.use(deployment)

    @classmethod
    def connect(
        cls, url: str, deployment: Deployment | None = None, config: ChainConfig | None = None
    ) -> ChainClient:
        provider = Web3.HTTPProvider(
            url, request_kwargs={"timeout": 10}, exception_retry_configuration=None
        )
        return cls(Web3(provider), deployment, config)

    def use(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.registry = self.w3.eth.contract(
            address=to_checksum_address(deployment.registry),
            abi=load_artifact("SubnetRegistry").abi,
        )
        self.ledger = self.w3.eth.contract(
            address=to_checksum_address(deployment.ledger), abi=load_artifact("RoundLedger").abi
        )
        chain_id = self.chain_id
        if chain_id != deployment.chain_id:
            raise ChainError(
                f"deployment is for chain {deployment.chain_id}, the RPC serves chain {chain_id}"
            )

    @property
    def domain(self) -> Domain:
        if self.deployment is None:
            raise LocalProtocolError("no deployment loaded")
        return Domain(self.deployment.chain_id, self.deployment.ledger)

    # -- transport --------------------------------------------------------------------

    def _rpc(self, fn: Callable[[], T], what: str) -> T:
        delays = self.config.retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                return fn()
            except _TRANSIENT as exc:
                if attempt == len(delays):
                    raise ChainError(
                        f"RPC unreachable during {what} after {attempt + 1} attempts: {exc}"
                    ) from exc
                self.stats.retries += 1
                log.debug("rpc %s failed (%s); retry in %.2fs", what, exc, delays[attempt])
                self._sleep(delays[attempt])
        raise AssertionError("unreachable")

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._rpc(lambda: self.w3.eth.chain_id, "chain id"))
        return self._chain_id

    def block_number(self) -> int:
        return int(self._rpc(lambda: self.w3.eth.block_number, "block number"))

    def rpc_request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """A raw JSON-RPC call (``evm_snapshot``, ``anvil_mine``...)."""
        resp = self._rpc(lambda: self.w3.provider.make_request(method, list(params)), method)  # type: ignore[arg-type]
        if "error" in resp:
            raise ChainError(f"{method}: {resp['error']}")
        return resp.get("result")

    # -- transactions -----------------------------------------------------------------

    def _fees(self) -> dict[str, int]:
        gas_price = int(self._rpc(lambda: self.w3.eth.gas_price, "gas price"))
        tip = min(self.config.max_priority_fee, gas_price)
        return {"maxFeePerGas": 2 * gas_price + tip, "maxPriorityFeePerGas": tip}

    def _sign(self, sent: SentTx) -> None:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": sent.nonce,
            "gas": sent.gas,
            "value": sent.value,
            "data": sent.data,
            **self._fees(),
        }
        if sent.to is not None:
            tx["to"] = sent.to
        signed = Account.sign_transaction(tx, sent.key.private_key)
        sent.raw = bytes(signed.raw_transaction)
        sent.tx_hash = bytes(signed.hash)

    def preflight(self, key: ChainKey, to: str | None, data: bytes, value: int, what: str) -> None:
        call: dict[str, Any] = {"from": key.address, "data": data, "value": value}
        if to is not None:
            call["to"] = to
        try:
            self._rpc(lambda: self.w3.eth.call(call), what)  # type: ignore[arg-type]
        except ContractLogicError as exc:
            self.stats.reverted += 1
            raw = exc.data if isinstance(exc.data, str) else ""
            data_bytes = bytes.fromhex(raw.removeprefix("0x")) if raw.startswith("0x") else b""
            name, args = decode_revert(data_bytes)
            raise TransactionRevertedError(what, name, args) from None

    def send(
        self,
        key: ChainKey,
        to: str | None,
        data: bytes,
        *,
        gas: int,
        value: int = 0,
        what: str = "transaction",
        done: Callable[[], bool] | None = None,
        preflight: bool | None = None,
    ) -> SentTx:
        """Sign and send; returns at once. ``done()`` tells a resubmission whether the
        transaction's effect is already on chain (then it is not sent again)."""
        if preflight if preflight is not None else self.config.preflight:
            self.preflight(key, to, data, value, what)
        sent = SentTx(what, key, to, data, value, gas, -1, b"", b"", done)
        sent.nonce = self.nonces.reserve(key.address)
        self._sign(sent)
        try:
            try:
                self._broadcast(sent)
            except _NonceTakenError:
                # another process sent from this account: re-read the nonce, sign again
                self.nonces.resync(key.address)
                sent.nonce = self.nonces.reserve(key.address)
                self._sign(sent)
                self._broadcast(sent)
        except Exception:
            self.nonces.resync(key.address)
            raise
        self.stats.sent += 1
        return sent

    def _broadcast(self, sent: SentTx) -> None:
        try:
            self._rpc(lambda: self.w3.eth.send_raw_transaction(sent.raw), sent.what)
        except ChainError:
            raise
        except Exception as exc:
            text = str(exc).lower()
            if "already known" in text or "already imported" in text:
                return
            if "nonce too low" in text or "nonce is too low" in text:
                raise _NonceTakenError(str(exc)) from exc
            raise ChainError(f"{sent.what}: the node refused the transaction: {exc}") from exc

    def _resubmit(self, sent: SentTx) -> bool:
        """Send a dropped transaction again; False if its effect is already on chain."""
        if sent.done is not None and sent.done():
            return False
        sent.resubmissions += 1
        self.stats.resubmissions += 1
        log.info("%s was dropped (reorg?); resubmitting", sent.what)
        try:
            self._broadcast(sent)
        except _NonceTakenError:
            self.nonces.resync(sent.key.address)
            sent.nonce = self.nonces.reserve(sent.key.address)
            self._sign(sent)
            self._broadcast(sent)
        return True

    def _fill_nonce_gap(self, sent: SentTx) -> None:
        """A pending transaction waits behind a nonce nobody will use (its transaction was
        dropped by a reorg after its sender stopped waiting): fill each missing nonce with a
        0-value self-transfer so the waiting transaction runs unchanged."""
        address = sent.key.address
        pending = int(
            self._rpc(
                lambda: self.w3.eth.get_transaction_count(to_checksum_address(address), "pending"),
                "nonce",
            )
        )
        for nonce in range(pending, sent.nonce):
            filler = SentTx("nonce-gap filler", sent.key, address, b"", 0, 21_000, nonce, b"", b"")
            self._sign(filler)
            try:
                self._broadcast(filler)
            except ChainError as exc:  # the nonce got used meanwhile: fine
                log.debug("gap filler for nonce %d not sent: %s", nonce, exc)
                continue
            self.stats.gap_fills += 1
            log.warning("filled nonce gap %d of %s", nonce, address)

    def _receipt(self, tx_hash: bytes) -> Any | None:
        try:
            return self._rpc(lambda: self.w3.eth.get_transaction_receipt(tx_hash), "receipt")  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def _known(self, tx_hash: bytes) -> bool:
        try:
            self._rpc(lambda: self.w3.eth.get_transaction(tx_hash), "transaction")  # type: ignore[arg-type]
            return True
        except TransactionNotFound:
            return False

    def wait(self, sent: SentTx, confirmations: int | None = None) -> Receipt | None:
        """Block until ``sent`` has ``confirmations`` blocks (its own included) on a canonical
        chain; resubmit it if it disappears. None: its effect landed in another transaction."""
        need = self.config.confirmations if confirmations is None else confirmations
        start = time.monotonic()
        deadline = start + self.config.confirm_timeout
        next_gap_check = start + self.config.gap_grace
        while True:
            rc = self._receipt(sent.tx_hash)
            if rc is not None and rc["blockNumber"] is not None:
                mined_in = int(rc["blockNumber"])
                if self.block_number() - mined_in + 1 >= need:
                    block = self._rpc(functools.partial(self.w3.eth.get_block, mined_in), "block")
                    if block is not None and bytes(block["hash"]) == bytes(rc["blockHash"]):
                        return self._finish(sent, rc)
            elif not self._known(sent.tx_hash):
                if not self._resubmit(sent):
                    return None
            elif time.monotonic() >= next_gap_check:
                self._fill_nonce_gap(sent)
                next_gap_check = time.monotonic() + self.config.gap_grace
            if time.monotonic() > deadline:
                timeout = self.config.confirm_timeout
                raise ChainError(f"{sent.what}: not confirmed within {timeout}s")
            self._sleep(self.config.poll_interval)

    def _finish(self, sent: SentTx, rc: Any) -> Receipt:
        receipt = Receipt(
            tx_hash=bytes(rc["transactionHash"]),
            block_number=int(rc["blockNumber"]),
            block_hash=bytes(rc["blockHash"]),
            gas_used=int(rc["gasUsed"]),
            status=int(rc["status"]),
            logs=tuple(rc["logs"]),
            contract_address=rc.get("contractAddress"),
        )
        if receipt.status != 1:
            self.stats.reverted += 1
            raise TransactionRevertedError(sent.what, f"status 0 (gas used {receipt.gas_used})")
        return receipt

    def transact(
        self,
        key: ChainKey,
        contract: Any,
        fn: str,
        args: Sequence[Any] = (),
        *,
        value: int = 0,
        gas: int | None = None,
        confirmations: int | None = None,
        done: Callable[[], bool] | None = None,
    ) -> Receipt | None:
        data = bytes.fromhex(contract.encode_abi(fn, list(args))[2:])
        sent = self.send(
            key,
            contract.address,
            data,
            gas=gas if gas is not None else GAS[fn],
            value=value,
            what=fn,
            done=done,
        )
        return self.wait(sent, confirmations)

    # -- registry ---------------------------------------------------------------------

    def create_subnet(
        self,
        key: ChainKey,
        subnet: bytes,
        params: SubnetParams,
        validators: Sequence[str],
        quorum: int,
    ) -> Receipt | None:
        ordered = sorted((to_checksum_address(v) for v in validators), key=lambda a: int(a, 16))
        gas = GAS["createSubnet"] + 30_000 * len(ordered)
        return self.transact(
            key, self.registry, "createSubnet", [subnet, params.as_abi(), ordered, quorum], gas=gas
        )

    def update_validator_set(
        self, key: ChainKey, subnet: bytes, validators: Sequence[str], quorum: int
    ) -> Receipt | None:
        ordered = sorted((to_checksum_address(v) for v in validators), key=lambda a: int(a, 16))
        gas = GAS["updateValidatorSet"] + 30_000 * len(ordered)
        return self.transact(
            key, self.registry, "updateValidatorSet", [subnet, ordered, quorum], gas=gas
        )

    def join(
        self, key: ChainKey, subnet: bytes, peer_id: PeerId, role: Role, stake: int
    ) -> Receipt | None:
        """Stake ``stake`` (wei, or token units after `approve`) and bind the peer id + role."""
        value, amount = self._stake_value(subnet, stake)
        return self.transact(
            key, self.registry, "join", [subnet, peer_id.raw, role.code, amount], value=value
        )

    def add_stake(self, key: ChainKey, subnet: bytes, stake: int) -> Receipt | None:
        value, amount = self._stake_value(subnet, stake)
        return self.transact(key, self.registry, "addStake", [subnet, amount], value=value)

    def leave(self, key: ChainKey, subnet: bytes) -> Receipt | None:
        return self.transact(key, self.registry, "leave", [subnet])

    def withdraw_stake(self, key: ChainKey, subnet: bytes) -> Receipt | None:
        return self.transact(key, self.registry, "withdraw", [subnet])

    def fund_rewards(self, key: ChainKey, subnet: bytes, amount: int) -> Receipt | None:
        value, amount = self._stake_value(subnet, amount)
        return self.transact(key, self.registry, "fundRewards", [subnet, amount], value=value)

    def credit_round(
        self, key: ChainKey, subnet: bytes, round: int, credits: Sequence[tuple[str, int]]
    ) -> Receipt | None:
        recipients = [to_checksum_address(a) for a, _ in credits]
        amounts = [n for _, n in credits]
        gas = GAS["creditRound"] + 30_000 * len(credits)
        return self.transact(
            key, self.registry, "creditRound", [subnet, round, recipients, amounts], gas=gas
        )

    def claim(self, key: ChainKey, subnet: bytes) -> Receipt | None:
        return self.transact(key, self.registry, "claim", [subnet])

    def _stake_value(self, subnet: bytes, amount: int) -> tuple[int, int]:
        token = self.subnet_params(subnet).token
        return (amount, 0) if int(token, 16) == 0 else (0, amount)

    def approve(self, key: ChainKey, token: str, amount: int) -> Receipt | None:
        erc20 = self.w3.eth.contract(
            address=to_checksum_address(token), abi=load_artifact("TestToken").abi
        )
        return self.transact(key, erc20, "approve", [self.registry.address, amount])

    # -- ledger -----------------------------------------------------------------------

    def submit_round(
        self, key: ChainKey, proof: RoundProof, confirmations: int | None = None
    ) -> Receipt | None:
        """Send a quorum proof and wait for it to be confirmed; resubmitted after a reorg
        unless the round is on chain by then. None: someone else's proof recorded it."""
        rec = proof.record
        gas = submit_round_gas(len(proof.signatures), len(rec.deltas))
        return self.transact(
            key,
            self.ledger,
            "submitRound",
            [rec.as_abi(), proof.packed],
            gas=gas,
            confirmations=confirmations,
            done=lambda: self.round_recorded(rec.subnet, rec.round),
        )

    def open_dispute(
        self, key: ChainKey, subnet: bytes, round: int, reason: bytes, bond: int
    ) -> int:
        """Returns the dispute id."""
        rc = self.transact(key, self.ledger, "openDispute", [subnet, round, reason], value=bond)
        assert rc is not None
        for ev in self.ledger.events.DisputeOpened().process_receipt({"logs": rc.logs}):
            return int(ev["args"]["disputeId"])
        raise ChainError("openDispute: no DisputeOpened event")

    def resolve_dispute(
        self, key: ChainKey, verdict: Verdict, signatures: Sequence[bytes]
    ) -> Receipt | None:
        gas = GAS["resolveDispute"] + 12_000 * len(signatures)
        return self.transact(
            key,
            self.ledger,
            "resolveDispute",
            [verdict.as_abi(), b"".join(signatures)],
            gas=gas,
        )

    def withdraw_bond(self, key: ChainKey) -> Receipt | None:
        return self.transact(key, self.ledger, "withdraw", [], gas=GAS["withdrawBond"])

    # -- reads ------------------------------------------------------------------------

    def _view(self, fn: Callable[[], T], what: str) -> T:
        try:
            return self._rpc(fn, what)
        except ContractLogicError as exc:
            raw = exc.data if isinstance(exc.data, str) else ""
            name, args = decode_revert(bytes.fromhex(raw.removeprefix("0x")) if raw else b"")
            raise TransactionRevertedError(what, name, args) from None

    def round_recorded(self, subnet: bytes, round: int) -> bool:
        return bool(
            self._view(lambda: self.ledger.functions.roundRecorded(subnet, round).call(), "round")
        )

    def latest_round(self, subnet: bytes) -> int:
        return int(self._view(lambda: self.ledger.functions.latestRound(subnet).call(), "latest"))

    def round_info(self, subnet: bytes, round: int) -> RoundInfo:
        raw = self._view(lambda: self.ledger.functions.getRound(subnet, round).call(), "getRound")
        info, parent = raw
        return RoundInfo(bytes(info[0]), int(info[1]), int(info[2]), int(parent))

    def lineage(self, subnet: bytes, round: int, max_depth: int = 64) -> list[int]:
        fn = self.ledger.functions.lineage(subnet, round, max_depth)
        return [int(r) for r in self._view(fn.call, "lineage")]

    def reputation(self, subnet: bytes, trainer: bytes) -> tuple[int, int]:
        fn = self.ledger.functions.reputation(subnet, trainer)
        value, last = self._view(fn.call, "reputation")
        return int(value), int(last)

    def validator_set(self, subnet: bytes) -> tuple[int, int, list[str]]:
        version, quorum, validators = self._view(
            self.registry.functions.validatorSet(subnet).call, "validatorSet"
        )
        return int(version), int(quorum), [str(v) for v in validators]

    def subnet_params(self, subnet: bytes) -> SubnetParams:
        info = self._view(self.registry.functions.subnetInfo(subnet).call, "subnetInfo")
        p = info[3]
        return SubnetParams(str(p[0]), int(p[1]), int(p[2]), int(p[3]), int(p[4]), tuple(p[5]))

    def member(self, subnet: bytes, address: str) -> Member:
        m = self._view(
            self.registry.functions.member(subnet, to_checksum_address(address)).call, "member"
        )
        return Member(bytes(m[0]), int(m[1]), int(m[2]), int(m[3]))

    def claimable(self, subnet: bytes, address: str) -> int:
        fn = self.registry.functions.claimable(subnet, to_checksum_address(address))
        return int(self._view(fn.call, "claimable"))

    def open_dispute_of(self, subnet: bytes, round: int) -> int:
        """The id of the round's open dispute, 0 when none is open."""
        fn = self.ledger.functions.openDisputeOf(subnet, round)
        return int(self._view(fn.call, "openDisputeOf"))

    def dispute_status(self, dispute_id: int) -> DisputeStatus:
        raw = self._view(self.ledger.functions.disputes(dispute_id).call, "disputes")
        return DisputeStatus(int(raw[2]))

    def disputes(self, subnet: bytes) -> list[DisputeEntry]:
        """Every dispute of a subnet from the ledger's events, oldest first."""
        assert self.deployment is not None
        start = self.deployment.block
        opened = self._rpc(
            lambda: self.ledger.events.DisputeOpened().get_logs(
                from_block=start, argument_filters={"subnet": subnet}
            ),
            "DisputeOpened logs",
        )
        out = {
            int(ev["args"]["disputeId"]): DisputeEntry(
                dispute_id=int(ev["args"]["disputeId"]),
                round=int(ev["args"]["round"]),
                challenger=str(ev["args"]["challenger"]),
                bond=int(ev["args"]["bond"]),
                reason=bytes(ev["args"]["reason"]).rstrip(b"\x00").decode(errors="replace"),
                status=DisputeStatus.OPEN,
            )
            for ev in opened
        }
        if out:
            resolved = self._rpc(
                lambda: self.ledger.events.DisputeResolved().get_logs(
                    from_block=start, argument_filters={"disputeId": list(out)}
                ),
                "DisputeResolved logs",
            )
            for ev in resolved:
                entry = out[int(ev["args"]["disputeId"])]
                out[entry.dispute_id] = dataclasses.replace(
                    entry,
                    status=DisputeStatus.UPHELD if ev["args"]["upheld"] else DisputeStatus.REJECTED,
                    offender=str(ev["args"]["offender"]),
                    slashed=int(ev["args"]["slashed"]),
                )
        return [out[k] for k in sorted(out)]

    def balance(self, address: str) -> int:
        return int(self._rpc(lambda: self.w3.eth.get_balance(address), "balance"))  # type: ignore[arg-type]


class DisputeStatus(enum.IntEnum):
    """RoundLedger.DisputeStatus."""

    NONE = 0
    OPEN = 1
    UPHELD = 2
    REJECTED = 3


@dataclass(frozen=True, slots=True)
class DisputeEntry:
    """A dispute as the ledger's events tell it."""

    dispute_id: int
    round: int
    challenger: str
    bond: int
    reason: str
    status: DisputeStatus
    offender: str = ""
    slashed: int = 0


class _NonceTakenError(ChainError):
    pass


@dataclass(frozen=True, slots=True)
class SubnetParams:
    token: str = "0x0000000000000000000000000000000000000000"
    round_length: int = 60
    challenge_window: int = 3600
    unbonding_delay: int = 86_400
    dispute_bond: int = 10**16
    # per role: trainer, aggregator, validator, bootstrap
    min_stake: tuple[int, ...] = (10**15, 10**15, 10**15, 0)

    def as_abi(self) -> tuple[object, ...]:
        if len(self.min_stake) != 4:
            raise LocalProtocolError("min_stake has one entry per role (4)")
        return (
            to_checksum_address(self.token),
            self.round_length,
            self.challenge_window,
            self.unbonding_delay,
            self.dispute_bond,
            list(self.min_stake),
        )


@dataclass(frozen=True, slots=True)
class RoundInfo:
    record_hash: bytes  # the first 20 bytes of the record's EIP-712 struct hash
    validator_set_version: int
    recorded_at: int
    parent_round: int


@dataclass(frozen=True, slots=True)
class Member:
    peer_id_hash: bytes
    role: int
    unbonding_ends: int
    stake: int
