// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {SubnetRegistry} from "./SubnetRegistry.sol";

/// @title RoundLedger
/// @notice Records federated-learning rounds proven by >= k EIP-712 signatures of the subnet's
/// current validator set in one transaction, keeps the model lineage, updates trainer
/// reputations by a fixed-point decay + delta rule, and runs disputes.
/// Normative description and test vectors: protocols/quorum-proof.md.
contract RoundLedger is EIP712, ReentrancyGuard {
    bytes32 public constant ROUND_TYPEHASH = keccak256(
        "Round(bytes32 subnet,uint64 round,uint32 validatorSetVersion,bytes parentCid,bytes modelCid,"
        "bytes32 updatesRoot,bytes32 metadataHash,bytes32 aggregator,bytes32[] trainers,int32[] deltas)"
    );
    bytes32 public constant VERDICT_TYPEHASH = keccak256(
        "Verdict(uint256 disputeId,bytes32 subnet,uint64 round,uint32 validatorSetVersion,"
        "bool upheld,address offender,uint256 slashAmount)"
    );

    uint64 public constant REP_ONE = 1_000_000; // fixed point: 1.0
    uint64 public constant REP_DECAY = 950_000; // multiply per elapsed round (0.95)
    uint64 public constant REP_MAX = 1_000_000 * REP_ONE;
    uint64 public constant REP_DECAY_HORIZON = 64; // after this many rounds a reputation is 0
    uint256 public constant MAX_DELTAS = 256;
    uint256 private constant SIG_BYTES = 65;

    struct RoundRecord {
        bytes32 subnet;
        uint64 round;
        uint32 validatorSetVersion;
        bytes parentCid;
        bytes modelCid;
        bytes32 updatesRoot; // Merkle root over the accepted updates (see updateLeaf)
        bytes32 metadataHash;
        bytes32 aggregator; // sha256 of the aggregator's binary peer id
        bytes32[] trainers; // the ranking, best first (sha256 of binary peer ids)
        int32[] deltas; // reputation delta per trainer, fixed point (REP_ONE = 1.0)
    }

    /// One storage slot per round. `recordHash` is the first 20 bytes of the EIP-712 struct
    /// hash, which commits to every field of the record (CIDs, updates root, metadata, ranking,
    /// deltas); the RoundRecorded event and the transaction carry the fields themselves.
    struct RoundInfo {
        bytes20 recordHash;
        uint32 validatorSetVersion;
        uint64 recordedAt; // block timestamp; 0 = not recorded
    }

    /// The tip of a subnet's lineage: the next round's parentCid must hash to modelCidHash.
    struct Head {
        bytes32 modelCidHash; // keccak256 of the binary model CID
        uint64 round; // 0 = nothing recorded yet
        uint64 first; // the first recorded round (it has no parent)
    }

    struct Reputation {
        uint64 value;
        uint64 lastRound;
    }

    struct Verdict {
        uint256 disputeId;
        bytes32 subnet;
        uint64 round;
        uint32 validatorSetVersion;
        bool upheld;
        address offender;
        uint256 slashAmount;
    }

    enum DisputeStatus {
        None,
        Open,
        Upheld,
        Rejected
    }

    struct Dispute {
        bytes32 subnet;
        uint64 round;
        DisputeStatus status;
        address challenger;
        uint256 bond;
        bytes32 reason;
    }

    SubnetRegistry public immutable registry;

    mapping(bytes32 => Head) private _heads;
    mapping(bytes32 => mapping(uint64 => RoundInfo)) private _rounds;
    /// Parent of a round recorded after a gap (its parent is not round - 1); rare, so the
    /// common case costs no storage.
    mapping(bytes32 => mapping(uint64 => uint64)) private _parentAfterGap;
    mapping(bytes32 => mapping(bytes32 => Reputation)) private _reputation;
    mapping(uint256 => Dispute) public disputes;
    uint256 public disputeCount;
    /// The open dispute of a round, if any (at most one at a time: one bond, one verdict).
    mapping(bytes32 => mapping(uint64 => uint256)) public openDisputeOf;
    mapping(address => uint256) public withdrawable; // native ETH: returned or forfeited bonds

    event RoundRecorded(
        bytes32 indexed subnet,
        uint64 indexed round,
        uint64 parentRound,
        bytes modelCid,
        bytes32 updatesRoot,
        bytes32 metadataHash,
        bytes32 aggregator,
        bytes32 structHash,
        uint32 validatorSetVersion
    );
    event ReputationsUpdated(bytes32 indexed subnet, uint64 indexed round, bytes32[] trainers, uint64[] values);
    event DisputeOpened(
        uint256 indexed disputeId, bytes32 indexed subnet, uint64 indexed round, address challenger, uint256 bond, bytes32 reason
    );
    event DisputeResolved(uint256 indexed disputeId, bool upheld, address offender, uint256 slashed);
    event Withdrawal(address indexed to, uint256 amount);

    error RoundZero();
    error RoundAlreadyRecorded(uint64 round, uint64 latest);
    error ParentMismatch();
    error EmptyModelCid();
    error LengthMismatch();
    error TooManyDeltas();
    error BadSignatureLength();
    error DuplicateSigner(address signer);
    error UnorderedSigners(address signer, address previous);
    error BadSignature(uint256 index);
    error UnknownRound();
    error DisputeWindowClosed(uint64 closedAt);
    error NotStaked();
    error BondTooLow(uint256 required);
    error DisputeNotOpen();
    error DisputeExists(uint256 disputeId);
    error VerdictMismatch();
    error NothingToWithdraw();
    error TransferFailed();

    constructor(SubnetRegistry registry_) EIP712("sorap2p RoundLedger", "1") {
        registry = registry_;
    }

    // -- rounds -----------------------------------------------------------------------

    /// @notice Record a round. `signatures` is the concatenation of 65-byte (r, s, v)
    /// signatures over `roundDigest(record)`, sorted by ascending signer address.
    function submitRound(RoundRecord calldata r, bytes calldata signatures) external {
        bytes32 subnet = r.subnet;
        if (r.round == 0) revert RoundZero();
        if (r.modelCid.length == 0) revert EmptyModelCid();
        Head storage head = _heads[subnet];
        uint64 latest = head.round;
        if (latest != 0) {
            if (r.round <= latest) revert RoundAlreadyRecorded(r.round, latest);
            if (keccak256(r.parentCid) != head.modelCidHash) revert ParentMismatch();
        }
        uint256 nDeltas = r.trainers.length;
        if (nDeltas != r.deltas.length) revert LengthMismatch();
        if (nDeltas > MAX_DELTAS) revert TooManyDeltas();

        bytes32 structHash = hashRound(r);
        _checkSignatures(subnet, r.validatorSetVersion, _hashTypedDataV4(structHash), signatures);

        _rounds[subnet][r.round] = RoundInfo({
            recordHash: bytes20(structHash),
            validatorSetVersion: r.validatorSetVersion,
            recordedAt: uint64(block.timestamp)
        });
        if (latest == 0) head.first = r.round;
        else if (latest != r.round - 1) _parentAfterGap[subnet][r.round] = latest;
        head.modelCidHash = keccak256(r.modelCid);
        head.round = r.round;
        emit RoundRecorded(
            subnet,
            r.round,
            latest,
            r.modelCid,
            r.updatesRoot,
            r.metadataHash,
            r.aggregator,
            structHash,
            r.validatorSetVersion
        );
        if (nDeltas != 0) _applyReputation(subnet, r.round, r.trainers, r.deltas);
    }

    function _applyReputation(
        bytes32 subnet,
        uint64 round,
        bytes32[] calldata trainers,
        int32[] calldata deltas
    ) private {
        uint64[] memory values = new uint64[](trainers.length);
        mapping(bytes32 => Reputation) storage reps = _reputation[subnet];
        for (uint256 i = 0; i < trainers.length; ++i) {
            Reputation storage rep = reps[trainers[i]];
            uint64 v = nextReputation(rep.value, rep.lastRound, round, deltas[i]);
            rep.value = v;
            rep.lastRound = round;
            values[i] = v;
        }
        emit ReputationsUpdated(subnet, round, trainers, values);
    }

    /// @notice The reputation rule: decay by REP_DECAY/REP_ONE (floor) once per elapsed round
    /// since `lastRound` (none for a trainer never seen, whose value is 0), add `delta`, clamp
    /// to [0, REP_MAX].
    function nextReputation(uint64 value, uint64 lastRound, uint64 round, int32 delta)
        public
        pure
        returns (uint64)
    {
        if (value != 0 && round > lastRound) {
            uint64 elapsed = round - lastRound;
            if (elapsed >= REP_DECAY_HORIZON) {
                value = 0;
            } else {
                for (uint64 i = 0; i < elapsed; ++i) {
                    value = uint64((uint256(value) * REP_DECAY) / REP_ONE);
                }
            }
        }
        int256 next = int256(uint256(value)) + int256(delta);
        if (next < 0) return 0;
        if (next > int256(uint256(REP_MAX))) return REP_MAX;
        return uint64(uint256(next));
    }

    function _checkSignatures(
        bytes32 subnet,
        uint32 version,
        bytes32 digest,
        bytes calldata signatures
    ) private view {
        if (signatures.length % SIG_BYTES != 0) revert BadSignatureLength();
        uint256 n = signatures.length / SIG_BYTES;
        address[] memory signers = new address[](n);
        address previous = address(0);
        for (uint256 i = 0; i < n; ++i) {
            uint256 o = i * SIG_BYTES;
            bytes32 sr = bytes32(signatures[o:o + 32]);
            bytes32 ss = bytes32(signatures[o + 32:o + 64]);
            uint8 sv = uint8(signatures[o + 64]);
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, sv, sr, ss);
            if (err != ECDSA.RecoverError.NoError) revert BadSignature(i);
            if (signer == previous) revert DuplicateSigner(signer);
            if (signer < previous) revert UnorderedSigners(signer, previous);
            previous = signer;
            signers[i] = signer;
        }
        registry.checkQuorum(subnet, version, signers);
    }

    /// @notice The EIP-712 struct hash of a round record.
    function hashRound(RoundRecord calldata r) public pure returns (bytes32) {
        bytes memory head = abi.encode(
            ROUND_TYPEHASH,
            r.subnet,
            r.round,
            r.validatorSetVersion,
            keccak256(r.parentCid),
            keccak256(r.modelCid)
        );
        return keccak256(
            bytes.concat(
                head,
                abi.encode(
                    r.updatesRoot,
                    r.metadataHash,
                    r.aggregator,
                    keccak256(abi.encodePacked(r.trainers)),
                    keccak256(abi.encodePacked(r.deltas))
                )
            )
        );
    }

    /// @notice The digest validators sign for a round (EIP-712, this contract's domain).
    function roundDigest(RoundRecord calldata r) external view returns (bytes32) {
        return _hashTypedDataV4(hashRound(r));
    }

    function hashVerdict(Verdict calldata v) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                VERDICT_TYPEHASH,
                v.disputeId,
                v.subnet,
                v.round,
                v.validatorSetVersion,
                v.upheld,
                v.offender,
                v.slashAmount
            )
        );
    }

    function verdictDigest(Verdict calldata v) external view returns (bytes32) {
        return _hashTypedDataV4(hashVerdict(v));
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Leaf of the accepted-updates Merkle tree (double keccak, OpenZeppelin style).
    function updateLeaf(bytes calldata updateCid, bytes32 trainer, uint64 timestamp)
        public
        pure
        returns (bytes32)
    {
        return keccak256(bytes.concat(keccak256(abi.encode(keccak256(updateCid), trainer, timestamp))));
    }

    /// @notice True when `r` is exactly the record stored for its round.
    function isRecorded(RoundRecord calldata r) public view returns (bool) {
        RoundInfo storage info = _rounds[r.subnet][r.round];
        return info.recordedAt != 0 && info.recordHash == bytes20(hashRound(r));
    }

    /// @notice True when `r` is the stored record of its round and the update is in its tree.
    function isUpdateIncluded(
        RoundRecord calldata r,
        bytes calldata updateCid,
        bytes32 trainer,
        uint64 timestamp,
        bytes32[] calldata proof
    ) external view returns (bool) {
        if (!isRecorded(r)) return false;
        return MerkleProof.verifyCalldata(proof, r.updatesRoot, updateLeaf(updateCid, trainer, timestamp));
    }

    function latestRound(bytes32 subnet) external view returns (uint64) {
        return _heads[subnet].round;
    }

    /// @notice keccak256 of the latest recorded model CID (the next round's parent).
    function headModelCidHash(bytes32 subnet) external view returns (bytes32) {
        return _heads[subnet].modelCidHash;
    }

    // -- queries ----------------------------------------------------------------------

    function roundRecorded(bytes32 subnet, uint64 round) external view returns (bool) {
        return _rounds[subnet][round].recordedAt != 0;
    }

    function getRound(bytes32 subnet, uint64 round)
        external
        view
        returns (RoundInfo memory info, uint64 parentRound)
    {
        info = _recorded(subnet, round);
        parentRound = parentOf(subnet, round);
    }

    /// @notice The round whose model `round` was trained from; 0 for the first recorded round.
    function parentOf(bytes32 subnet, uint64 round) public view returns (uint64) {
        if (round == _heads[subnet].first) return 0;
        uint64 gapParent = _parentAfterGap[subnet][round];
        return gapParent != 0 ? gapParent : round - 1;
    }

    /// @notice Rounds from `round` back through its parents, at most `maxDepth` of them.
    function lineage(bytes32 subnet, uint64 round, uint256 maxDepth)
        external
        view
        returns (uint64[] memory rounds)
    {
        rounds = new uint64[](maxDepth);
        uint256 n = 0;
        uint64 cur = round;
        while (n < maxDepth && cur != 0 && _rounds[subnet][cur].recordedAt != 0) {
            rounds[n++] = cur;
            cur = parentOf(subnet, cur);
        }
        assembly {
            mstore(rounds, n)
        }
    }

    function reputation(bytes32 subnet, bytes32 trainer) external view returns (uint64 value, uint64 lastRound) {
        Reputation storage rep = _reputation[subnet][trainer];
        return (rep.value, rep.lastRound);
    }

    function _recorded(bytes32 subnet, uint64 round) private view returns (RoundInfo storage info) {
        info = _rounds[subnet][round];
        if (info.recordedAt == 0) revert UnknownRound();
    }

    // -- disputes ---------------------------------------------------------------------

    /// @notice A staked member of the subnet disputes a round, locking at least the subnet's
    /// dispute bond (native ETH). A recorded round can be disputed within the challenge window
    /// after its recording; a round that was never recorded (its aggregator published a model
    /// the validators refused to prove) can be disputed at any time, so that its offender can be
    /// slashed by a quorum-signed verdict. A round has at most one open dispute.
    function openDispute(bytes32 subnet, uint64 round, bytes32 reason)
        external
        payable
        returns (uint256 disputeId)
    {
        if (round == 0) revert RoundZero();
        RoundInfo storage info = _rounds[subnet][round];
        if (info.recordedAt != 0) {
            uint64 closesAt = info.recordedAt + registry.challengeWindow(subnet);
            if (block.timestamp > closesAt) revert DisputeWindowClosed(closesAt);
        }
        if (!registry.isActiveMember(subnet, msg.sender)) revert NotStaked();
        uint256 open = openDisputeOf[subnet][round];
        if (open != 0) revert DisputeExists(open);
        uint256 bond = registry.disputeBond(subnet);
        if (msg.value < bond) revert BondTooLow(bond);
        disputeId = ++disputeCount;
        disputes[disputeId] = Dispute({
            subnet: subnet,
            round: round,
            status: DisputeStatus.Open,
            challenger: msg.sender,
            bond: msg.value,
            reason: reason
        });
        openDisputeOf[subnet][round] = disputeId;
        emit DisputeOpened(disputeId, subnet, round, msg.sender, msg.value, reason);
    }

    /// @notice Apply a quorum-signed verdict. Upheld: the offender (aggregator or trainer
    /// address) is slashed, the slashed stake is credited to the challenger in the registry and
    /// the bond is returned. Rejected: the bond goes to the subnet owner.
    function resolveDispute(Verdict calldata v, bytes calldata signatures) external nonReentrant {
        Dispute storage d = disputes[v.disputeId];
        if (d.status != DisputeStatus.Open) revert DisputeNotOpen();
        if (d.subnet != v.subnet || d.round != v.round) revert VerdictMismatch();
        _checkSignatures(v.subnet, v.validatorSetVersion, _hashTypedDataV4(hashVerdict(v)), signatures);
        delete openDisputeOf[v.subnet][v.round];
        uint256 slashed = 0;
        if (v.upheld) {
            d.status = DisputeStatus.Upheld;
            slashed = registry.slash(v.subnet, v.offender, v.slashAmount, d.challenger);
            withdrawable[d.challenger] += d.bond;
        } else {
            d.status = DisputeStatus.Rejected;
            withdrawable[registry.subnetOwner(v.subnet)] += d.bond;
        }
        emit DisputeResolved(v.disputeId, v.upheld, v.offender, slashed);
    }

    function withdraw() external nonReentrant {
        uint256 amount = withdrawable[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        withdrawable[msg.sender] = 0;
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
        emit Withdrawal(msg.sender, amount);
    }
}
