// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @notice What SubnetRegistry asks of the ledger (to credit only recorded rounds).
interface IRoundRecorded {
    function roundRecorded(bytes32 subnet, uint64 round) external view returns (bool);
}

/// @title SubnetRegistry
/// @notice Subnets of sorap2p: parameters, staked members (an Ethereum address bound to a
/// libp2p peer id and a role), a versioned validator set with its quorum, rewards credited per
/// round and claimed by the recipient, and slashing (only by the RoundLedger, after a
/// quorum-signed dispute verdict). Stakes, rewards and slashed amounts are all held in the
/// subnet's token: native ETH when `token == address(0)`, otherwise an ERC-20.
/// See protocols/quorum-proof.md.
contract SubnetRegistry is ReentrancyGuard {
    using SafeERC20 for IERC20;

    uint8 public constant ROLE_TRAINER = 1;
    uint8 public constant ROLE_AGGREGATOR = 2;
    uint8 public constant ROLE_VALIDATOR = 3;
    uint8 public constant ROLE_BOOTSTRAP = 4;
    uint256 public constant MAX_VALIDATORS = 64;

    struct SubnetParams {
        address token; // reward and stake token; address(0) = native ETH
        uint64 roundLength; // seconds, the schedule nodes follow
        uint64 challengeWindow; // seconds after a round is recorded during which it can be disputed
        uint64 unbondingDelay; // seconds between leave() and withdraw()
        uint256 disputeBond; // wei of native ETH a challenger locks in the ledger
        uint256[4] minStake; // per role code 1..4 (index role-1)
    }

    struct Subnet {
        address owner;
        uint32 validatorSetVersion;
        uint16 quorum;
        bool exists;
        SubnetParams params;
        uint256 rewardPool;
    }

    struct Member {
        bytes32 peerIdHash; // sha256 of the 38-byte binary libp2p peer id
        uint8 role;
        uint64 unbondingEnds; // 0 while active
        uint256 stake;
    }

    address public immutable deployer;
    address public ledger;

    mapping(bytes32 => Subnet) private _subnets;
    mapping(bytes32 => address[]) private _validators;
    /// subnet => validator => the validator-set version it belongs to (0 = never)
    mapping(bytes32 => mapping(address => uint32)) private _validatorVersion;
    mapping(bytes32 => mapping(address => Member)) private _members;
    /// subnet => peer id hash => member address
    mapping(bytes32 => mapping(bytes32 => address)) public memberOfPeer;
    /// subnet => recipient => claimable amount in the subnet's token
    mapping(bytes32 => mapping(address => uint256)) public claimable;
    mapping(bytes32 => mapping(uint64 => bool)) public roundCredited;

    event LedgerSet(address ledger);
    event SubnetCreated(bytes32 indexed subnet, address indexed owner, address token, uint16 quorum);
    event ValidatorSetUpdated(bytes32 indexed subnet, uint32 version, uint16 quorum, address[] validators);
    event Joined(bytes32 indexed subnet, address indexed member, bytes peerId, uint8 role, uint256 stake);
    event StakeAdded(bytes32 indexed subnet, address indexed member, uint256 amount, uint256 stake);
    event Left(bytes32 indexed subnet, address indexed member, uint64 unbondingEnds);
    event Withdrawn(bytes32 indexed subnet, address indexed member, uint256 amount);
    event Slashed(bytes32 indexed subnet, address indexed member, uint256 amount, address beneficiary);
    event RewardsFunded(bytes32 indexed subnet, address indexed from, uint256 amount);
    event RewardCredited(bytes32 indexed subnet, uint64 indexed round, address indexed recipient, uint256 amount);
    event Claimed(bytes32 indexed subnet, address indexed recipient, uint256 amount);

    error NotDeployer();
    error LedgerAlreadySet();
    error NotLedger();
    error NotSubnetOwner();
    error SubnetExists();
    error UnknownSubnet();
    error BadQuorum();
    error ValidatorsNotAscending();
    error TooManyValidators();
    error BadRole();
    error BadPeerId();
    error PeerIdTaken();
    error AlreadyMember();
    error NotMember();
    error StakeTooLow(uint256 required, uint256 given);
    error WrongValue();
    error NotUnbonding();
    error AlreadyUnbonding();
    error UnbondingNotOver(uint64 endsAt);
    error RoundNotRecorded();
    error RoundAlreadyCredited();
    error LengthMismatch();
    error PoolTooSmall();
    error NothingToClaim();
    error TransferFailed();

    constructor() {
        deployer = msg.sender;
    }

    /// @notice Set once, right after deployment: the RoundLedger allowed to slash.
    function setLedger(address ledger_) external {
        if (msg.sender != deployer) revert NotDeployer();
        if (ledger != address(0)) revert LedgerAlreadySet();
        ledger = ledger_;
        emit LedgerSet(ledger_);
    }

    // -- subnets ----------------------------------------------------------------------

    function createSubnet(
        bytes32 subnet,
        SubnetParams calldata params,
        address[] calldata validators,
        uint16 quorum
    ) external {
        Subnet storage s = _subnets[subnet];
        if (s.exists) revert SubnetExists();
        s.exists = true;
        s.owner = msg.sender;
        s.params = params;
        emit SubnetCreated(subnet, msg.sender, params.token, quorum);
        _setValidators(subnet, s, validators, quorum);
    }

    /// @notice Replace the validator set; bumps its version so old signatures stop counting.
    function updateValidatorSet(bytes32 subnet, address[] calldata validators, uint16 quorum)
        external
    {
        Subnet storage s = _existing(subnet);
        if (msg.sender != s.owner) revert NotSubnetOwner();
        _setValidators(subnet, s, validators, quorum);
    }

    function _setValidators(
        bytes32 subnet,
        Subnet storage s,
        address[] calldata validators,
        uint16 quorum
    ) private {
        uint256 n = validators.length;
        if (n > MAX_VALIDATORS) revert TooManyValidators();
        if (quorum == 0 || quorum > n) revert BadQuorum();
        uint32 version = s.validatorSetVersion + 1;
        address previous = address(0);
        for (uint256 i = 0; i < n; ++i) {
            address v = validators[i];
            if (v <= previous) revert ValidatorsNotAscending();
            previous = v;
            _validatorVersion[subnet][v] = version;
        }
        s.validatorSetVersion = version;
        s.quorum = quorum;
        _validators[subnet] = validators;
        emit ValidatorSetUpdated(subnet, version, quorum, validators);
    }

    /// @notice Reverts unless `signers` (ascending, checked by the caller) are at least
    /// `quorum` members of the subnet's *current* validator set and `version` is current.
    function checkQuorum(bytes32 subnet, uint32 version, address[] calldata signers)
        external
        view
    {
        Subnet storage s = _existing(subnet);
        if (version != s.validatorSetVersion) revert StaleValidatorSet(version, s.validatorSetVersion);
        if (signers.length < s.quorum) revert TooFewSignatures(signers.length, s.quorum);
        mapping(address => uint32) storage vv = _validatorVersion[subnet];
        for (uint256 i = 0; i < signers.length; ++i) {
            if (vv[signers[i]] != version) revert NotAValidator(signers[i]);
        }
    }

    error StaleValidatorSet(uint32 given, uint32 current);
    error TooFewSignatures(uint256 given, uint256 required);
    error NotAValidator(address signer);

    // -- membership -------------------------------------------------------------------

    /// @notice Stake and bind `msg.sender` to a libp2p peer id (38-byte identity multihash of
    /// an Ed25519 key) and a role. `amount` is ignored for native ETH (msg.value counts).
    function join(bytes32 subnet, bytes calldata peerId, uint8 role, uint256 amount)
        external
        payable
        nonReentrant
    {
        Subnet storage s = _existing(subnet);
        if (role < ROLE_TRAINER || role > ROLE_BOOTSTRAP) revert BadRole();
        if (peerId.length != 38 || bytes6(peerId[0:6]) != bytes6(0x002408011220)) {
            revert BadPeerId();
        }
        Member storage m = _members[subnet][msg.sender];
        if (m.role != 0) revert AlreadyMember();
        bytes32 peerHash = sha256(peerId);
        if (memberOfPeer[subnet][peerHash] != address(0)) revert PeerIdTaken();
        uint256 staked = _pull(s.params.token, amount);
        uint256 required = s.params.minStake[role - 1];
        if (staked < required) revert StakeTooLow(required, staked);
        m.peerIdHash = peerHash;
        m.role = role;
        m.stake = staked;
        memberOfPeer[subnet][peerHash] = msg.sender;
        emit Joined(subnet, msg.sender, peerId, role, staked);
    }

    function addStake(bytes32 subnet, uint256 amount) external payable nonReentrant {
        Subnet storage s = _existing(subnet);
        Member storage m = _members[subnet][msg.sender];
        if (m.role == 0) revert NotMember();
        if (m.unbondingEnds != 0) revert AlreadyUnbonding();
        uint256 added = _pull(s.params.token, amount);
        m.stake += added;
        emit StakeAdded(subnet, msg.sender, added, m.stake);
    }

    /// @notice Start unbonding: the member stops counting as staked at once; its stake can be
    /// slashed until `withdraw` after `unbondingDelay`.
    function leave(bytes32 subnet) external {
        Subnet storage s = _existing(subnet);
        Member storage m = _members[subnet][msg.sender];
        if (m.role == 0) revert NotMember();
        if (m.unbondingEnds != 0) revert AlreadyUnbonding();
        uint64 ends = uint64(block.timestamp) + s.params.unbondingDelay;
        m.unbondingEnds = ends;
        emit Left(subnet, msg.sender, ends);
    }

    function withdraw(bytes32 subnet) external nonReentrant {
        Subnet storage s = _existing(subnet);
        Member storage m = _members[subnet][msg.sender];
        if (m.role == 0) revert NotMember();
        if (m.unbondingEnds == 0) revert NotUnbonding();
        if (block.timestamp < m.unbondingEnds) revert UnbondingNotOver(m.unbondingEnds);
        uint256 amount = m.stake;
        delete memberOfPeer[subnet][m.peerIdHash];
        delete _members[subnet][msg.sender];
        _push(s.params.token, msg.sender, amount);
        emit Withdrawn(subnet, msg.sender, amount);
    }

    /// @notice Only the ledger, carrying out a quorum-signed verdict. The slashed amount is
    /// credited to `beneficiary` (claimable).
    function slash(bytes32 subnet, address offender, uint256 amount, address beneficiary)
        external
        returns (uint256 slashed)
    {
        if (msg.sender != ledger) revert NotLedger();
        _existing(subnet);
        Member storage m = _members[subnet][offender];
        if (m.role == 0) revert NotMember();
        slashed = amount < m.stake ? amount : m.stake;
        m.stake -= slashed;
        claimable[subnet][beneficiary] += slashed;
        emit Slashed(subnet, offender, slashed, beneficiary);
    }

    // -- rewards ----------------------------------------------------------------------

    function fundRewards(bytes32 subnet, uint256 amount) external payable nonReentrant {
        Subnet storage s = _existing(subnet);
        uint256 funded = _pull(s.params.token, amount);
        s.rewardPool += funded;
        emit RewardsFunded(subnet, msg.sender, funded);
    }

    /// @notice The subnet owner credits the rewards of one recorded round from the pool, once.
    function creditRound(
        bytes32 subnet,
        uint64 round,
        address[] calldata recipients,
        uint256[] calldata amounts
    ) external {
        Subnet storage s = _existing(subnet);
        if (msg.sender != s.owner) revert NotSubnetOwner();
        if (recipients.length != amounts.length) revert LengthMismatch();
        if (!IRoundRecorded(ledger).roundRecorded(subnet, round)) revert RoundNotRecorded();
        if (roundCredited[subnet][round]) revert RoundAlreadyCredited();
        roundCredited[subnet][round] = true;
        uint256 total = 0;
        for (uint256 i = 0; i < recipients.length; ++i) {
            total += amounts[i];
            claimable[subnet][recipients[i]] += amounts[i];
            emit RewardCredited(subnet, round, recipients[i], amounts[i]);
        }
        if (total > s.rewardPool) revert PoolTooSmall();
        s.rewardPool -= total;
    }

    function claim(bytes32 subnet) external nonReentrant returns (uint256 amount) {
        Subnet storage s = _existing(subnet);
        amount = claimable[subnet][msg.sender];
        if (amount == 0) revert NothingToClaim();
        claimable[subnet][msg.sender] = 0;
        _push(s.params.token, msg.sender, amount);
        emit Claimed(subnet, msg.sender, amount);
    }

    // -- views ------------------------------------------------------------------------

    function subnetInfo(bytes32 subnet)
        external
        view
        returns (
            address owner,
            uint32 validatorSetVersion,
            uint16 quorum,
            SubnetParams memory params,
            uint256 rewardPool
        )
    {
        Subnet storage s = _existing(subnet);
        return (s.owner, s.validatorSetVersion, s.quorum, s.params, s.rewardPool);
    }

    function validatorSet(bytes32 subnet)
        external
        view
        returns (uint32 version, uint16 quorum, address[] memory validators)
    {
        Subnet storage s = _existing(subnet);
        return (s.validatorSetVersion, s.quorum, _validators[subnet]);
    }

    function member(bytes32 subnet, address who) external view returns (Member memory) {
        return _members[subnet][who];
    }

    /// @notice Staked with a live (not unbonding) membership.
    function isActiveMember(bytes32 subnet, address who) external view returns (bool) {
        Member storage m = _members[subnet][who];
        return m.role != 0 && m.unbondingEnds == 0 && m.stake > 0;
    }

    function challengeWindow(bytes32 subnet) external view returns (uint64) {
        return _existing(subnet).params.challengeWindow;
    }

    function disputeBond(bytes32 subnet) external view returns (uint256) {
        return _existing(subnet).params.disputeBond;
    }

    function subnetOwner(bytes32 subnet) external view returns (address) {
        return _existing(subnet).owner;
    }

    // -- internals --------------------------------------------------------------------

    function _existing(bytes32 subnet) private view returns (Subnet storage s) {
        s = _subnets[subnet];
        if (!s.exists) revert UnknownSubnet();
    }

    function _pull(address token, uint256 amount) private returns (uint256) {
        if (token == address(0)) return msg.value;
        if (msg.value != 0) revert WrongValue();
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        return amount;
    }

    function _push(address token, address to, uint256 amount) private {
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert TransferFailed();
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }
}
