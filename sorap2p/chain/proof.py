"""Quorum proofs of rounds, computed exactly as RoundLedger computes them (pure, no I/O).

The normative text is ``protocols/quorum-proof.md``; ``protocols/vectors/quorum-proof.json``
pins the bytes. A round record is signed by validators with EIP-712 (domain: name
``sorap2p RoundLedger``, version ``1``, the chain id and the ledger address); a proof carries at
least ``k`` 65-byte ``r || s || v`` signatures sorted by ascending signer address.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from eth_abi.abi import encode as abi_encode
from eth_keys.datatypes import PrivateKey, Signature
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from sorap2p.core.cid import Cid
from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.core.ids import PeerId, RoundId, SubnetId

LEDGER_NAME: Final = "sorap2p RoundLedger"
LEDGER_VERSION: Final = "1"

EIP712_DOMAIN_TYPE: Final = (
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
ROUND_TYPE: Final = (
    b"Round(bytes32 subnet,uint64 round,uint32 validatorSetVersion,bytes parentCid,"
    b"bytes modelCid,bytes32 updatesRoot,bytes32 metadataHash,bytes32 aggregator,"
    b"bytes32[] trainers,int32[] deltas)"
)
VERDICT_TYPE: Final = (
    b"Verdict(uint256 disputeId,bytes32 subnet,uint64 round,uint32 validatorSetVersion,"
    b"bool upheld,address offender,uint256 slashAmount)"
)
ROUND_TYPEHASH: Final = keccak(ROUND_TYPE)
VERDICT_TYPEHASH: Final = keccak(VERDICT_TYPE)
DOMAIN_TYPEHASH: Final = keccak(EIP712_DOMAIN_TYPE)

SIGNATURE_BYTES: Final = 65
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MAX_DELTAS: Final = 256
INT32_MIN: Final = -(1 << 31)
INT32_MAX: Final = (1 << 31) - 1

# The reputation rule (RoundLedger.nextReputation), fixed point with REP_ONE = 1.0.
REP_ONE: Final = 1_000_000
REP_DECAY: Final = 950_000
REP_MAX: Final = 1_000_000 * REP_ONE
REP_DECAY_HORIZON: Final = 64


def _b32(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise LocalProtocolError(f"{what} must be 32 bytes")
    return value


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain of one RoundLedger deployment."""

    chain_id: int
    verifying_contract: str
    name: str = LEDGER_NAME
    version: str = LEDGER_VERSION

    def separator(self) -> bytes:
        return keccak(
            abi_encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [
                    DOMAIN_TYPEHASH,
                    keccak(self.name.encode()),
                    keccak(self.version.encode()),
                    self.chain_id,
                    to_checksum_address(self.verifying_contract),
                ],
            )
        )

    def digest(self, struct_hash: bytes) -> bytes:
        return keccak(b"\x19\x01" + self.separator() + struct_hash)


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """What validators sign and RoundLedger stores for one round (field names as on chain)."""

    subnet: bytes
    round: int
    validator_set_version: int
    parent_cid: bytes
    model_cid: bytes
    updates_root: bytes
    metadata_hash: bytes
    aggregator: bytes
    trainers: tuple[bytes, ...] = ()
    deltas: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _b32(self.subnet, "subnet")
        _b32(self.updates_root, "updates_root")
        _b32(self.metadata_hash, "metadata_hash")
        _b32(self.aggregator, "aggregator")
        if not 1 <= self.round < 1 << 64:
            raise LocalProtocolError("round must be in [1, 2**64)")
        if not 0 < self.validator_set_version < 1 << 32:
            raise LocalProtocolError("validator_set_version must be a positive uint32")
        if not self.model_cid:
            raise LocalProtocolError("model_cid is empty")
        if len(self.trainers) != len(self.deltas) or len(self.trainers) > MAX_DELTAS:
            raise LocalProtocolError(f"trainers and deltas: equal lengths, at most {MAX_DELTAS}")
        for t in self.trainers:
            _b32(t, "trainer id hash")
        for d in self.deltas:
            if not INT32_MIN <= d <= INT32_MAX:
                raise LocalProtocolError(f"delta {d} does not fit int32")

    @classmethod
    def build(
        cls,
        *,
        subnet: SubnetId,
        round: RoundId,
        validator_set_version: int,
        parent: Cid,
        model: Cid,
        updates: Sequence[UpdateLeaf],
        metadata_hash: bytes,
        aggregator: PeerId,
        ranking: Sequence[tuple[PeerId, int]] = (),
    ) -> RoundRecord:
        """From core types: ``ranking`` is (trainer, reputation delta), best first."""
        return cls(
            subnet=subnet.key,
            round=round.number,
            validator_set_version=validator_set_version,
            parent_cid=parent.raw,
            model_cid=model.raw,
            updates_root=MerkleTree(updates).root,
            metadata_hash=metadata_hash,
            aggregator=aggregator.hashed,
            trainers=tuple(p.hashed for p, _ in ranking),
            deltas=tuple(d for _, d in ranking),
        )

    def struct_hash(self) -> bytes:
        return keccak(
            abi_encode(
                ["bytes32"] * 11,
                [
                    ROUND_TYPEHASH,
                    self.subnet,
                    self.round.to_bytes(32, "big"),
                    self.validator_set_version.to_bytes(32, "big"),
                    keccak(self.parent_cid),
                    keccak(self.model_cid),
                    self.updates_root,
                    self.metadata_hash,
                    self.aggregator,
                    keccak(b"".join(self.trainers)),
                    keccak(b"".join(d.to_bytes(32, "big", signed=True) for d in self.deltas)),
                ],
            )
        )

    def as_abi(self) -> tuple[object, ...]:
        """The tuple web3 passes for the Solidity ``RoundRecord`` struct."""
        return (
            self.subnet,
            self.round,
            self.validator_set_version,
            self.parent_cid,
            self.model_cid,
            self.updates_root,
            self.metadata_hash,
            self.aggregator,
            list(self.trainers),
            list(self.deltas),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """A quorum-signed decision on a dispute; ``offender`` is an Ethereum address."""

    dispute_id: int
    subnet: bytes
    round: int
    validator_set_version: int
    upheld: bool
    offender: str
    slash_amount: int

    def struct_hash(self) -> bytes:
        return keccak(
            abi_encode(
                ["bytes32", "uint256", "bytes32", "uint64", "uint32", "bool", "address", "uint256"],
                [
                    VERDICT_TYPEHASH,
                    self.dispute_id,
                    _b32(self.subnet, "subnet"),
                    self.round,
                    self.validator_set_version,
                    self.upheld,
                    to_checksum_address(self.offender),
                    self.slash_amount,
                ],
            )
        )

    def as_abi(self) -> tuple[object, ...]:
        return (
            self.dispute_id,
            self.subnet,
            self.round,
            self.validator_set_version,
            self.upheld,
            to_checksum_address(self.offender),
            self.slash_amount,
        )


def round_digest(domain: Domain, record: RoundRecord) -> bytes:
    """The 32-byte EIP-712 digest validators sign (equals ``RoundLedger.roundDigest``)."""
    return domain.digest(record.struct_hash())


def verdict_digest(domain: Domain, verdict: Verdict) -> bytes:
    return domain.digest(verdict.struct_hash())


# -- keys and signatures -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainKey:
    """A secp256k1 account key (never printed)."""

    private_key: bytes

    def __post_init__(self) -> None:
        if len(self.private_key) != 32 or not 0 < int.from_bytes(self.private_key) < SECP256K1_N:
            raise LocalProtocolError("a chain key is 32 bytes in [1, n)")

    @classmethod
    def from_hex(cls, text: str) -> ChainKey:
        try:
            return cls(bytes.fromhex(text.removeprefix("0x")))
        except ValueError:
            raise LocalProtocolError("chain key is not hex") from None

    @property
    def address(self) -> str:
        return str(PrivateKey(self.private_key).public_key.to_checksum_address())

    def sign_digest(self, digest: bytes) -> bytes:
        """65 bytes ``r || s || v`` with low s and v in {27, 28}."""
        sig = PrivateKey(self.private_key).sign_msg_hash(_b32(digest, "digest"))
        r, s, v = int(sig.r), int(sig.s), int(sig.v)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + v])

    def __repr__(self) -> str:
        return f"ChainKey({self.address})"


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The checksum address that signed ``digest``; rejects high-s and bad v like OpenZeppelin."""
    if len(signature) != SIGNATURE_BYTES:
        raise RemoteProtocolError("a signature is 65 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if s > SECP256K1_N // 2:
        raise RemoteProtocolError("high-s signature")
    if v not in (27, 28):
        raise RemoteProtocolError("signature v must be 27 or 28")
    try:
        sig = Signature(vrs=(v - 27, r, s))
        return str(sig.recover_public_key_from_msg_hash(digest).to_checksum_address())
    except Exception as exc:  # eth_keys raises several types for garbage
        raise RemoteProtocolError(f"unrecoverable signature: {exc}") from None


def sign_round(key: ChainKey, domain: Domain, record: RoundRecord) -> bytes:
    return key.sign_digest(round_digest(domain, record))


def sign_verdict(key: ChainKey, domain: Domain, verdict: Verdict) -> bytes:
    return key.sign_digest(verdict_digest(domain, verdict))


def order_signatures(digest: bytes, signatures: Iterable[bytes]) -> tuple[bytes, ...]:
    """Drop duplicate signers and sort by ascending signer address, as the ledger requires."""
    by_signer: dict[int, bytes] = {}
    for sig in signatures:
        by_signer.setdefault(int(recover_signer(digest, sig), 16), sig)
    return tuple(by_signer[a] for a in sorted(by_signer))


@dataclass(frozen=True, slots=True)
class RoundProof:
    """A record and its signatures, ready for ``RoundLedger.submitRound``."""

    record: RoundRecord
    signatures: tuple[bytes, ...]

    @classmethod
    def assemble(
        cls, domain: Domain, record: RoundRecord, signatures: Iterable[bytes]
    ) -> RoundProof:
        return cls(record, order_signatures(round_digest(domain, record), signatures))

    def signers(self, domain: Domain) -> tuple[str, ...]:
        digest = round_digest(domain, self.record)
        return tuple(recover_signer(digest, s) for s in self.signatures)

    @property
    def packed(self) -> bytes:
        return b"".join(self.signatures)


# -- the accepted-updates Merkle tree --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateLeaf:
    """An accepted update: its CID, the trainer (sha256 of its peer id), a unix timestamp."""

    update_cid: bytes
    trainer: bytes
    timestamp: int

    @classmethod
    def of(cls, update: Cid, trainer: PeerId, timestamp: int) -> UpdateLeaf:
        return cls(update.raw, trainer.hashed, timestamp)

    def hash(self) -> bytes:
        inner = keccak(
            abi_encode(
                ["bytes32", "bytes32", "uint64"],
                [keccak(self.update_cid), _b32(self.trainer, "trainer"), self.timestamp],
            )
        )
        return keccak(inner)


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    """Leaves sorted ascending, pairs hashed sorted (OpenZeppelin ``MerkleProof``), an odd last
    node carried up unchanged; the root of no leaves is 32 zero bytes."""

    __slots__ = ("_layers",)

    def __init__(self, leaves: Iterable[UpdateLeaf]) -> None:
        layer = sorted(leaf.hash() for leaf in leaves)
        self._layers = [layer]
        while len(layer) > 1:
            layer = [
                _pair(layer[i], layer[i + 1]) if i + 1 < len(layer) else layer[i]
                for i in range(0, len(layer), 2)
            ]
            self._layers.append(layer)

    @property
    def root(self) -> bytes:
        top = self._layers[-1]
        return top[0] if top else bytes(32)

    def proof(self, leaf: UpdateLeaf) -> list[bytes]:
        h = leaf.hash()
        try:
            index = self._layers[0].index(h)
        except ValueError:
            raise LocalProtocolError("leaf is not in the tree") from None
        out = []
        for layer in self._layers[:-1]:
            sibling = index ^ 1
            if sibling < len(layer):
                out.append(layer[sibling])
            index //= 2
        return out


def verify_inclusion(root: bytes, leaf: UpdateLeaf, proof: Sequence[bytes]) -> bool:
    h = leaf.hash()
    for p in proof:
        h = _pair(h, p)
    return h == root


def next_reputation(value: int, last_round: int, round: int, delta: int) -> int:
    """``RoundLedger.nextReputation``: decay per elapsed round (floor), add, clamp."""
    if value != 0 and round > last_round:
        elapsed = round - last_round
        if elapsed >= REP_DECAY_HORIZON:
            value = 0
        else:
            for _ in range(elapsed):
                value = value * REP_DECAY // REP_ONE
    return max(0, min(REP_MAX, value + delta))
