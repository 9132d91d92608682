"""RegistryView: registry and ledger events folded into a node's view of its subnet."""

from __future__ import annotations

from sorap2p.core.crypto import IdentityKey
from sorap2p.core.gossip_rules import SubnetView
from sorap2p.core.ids import Role, RoundId, SubnetId
from sorap2p.node.chainlink import RegistryView

SUBNET = SubnetId("view")
OTHER = SubnetId("other")
AGG, VAL, TRAINER = (IdentityKey.generate() for _ in range(3))
A_AGG, A_VAL, A_TRAINER = ("0x" + f"{i:02x}" * 20 for i in (1, 2, 3))


def joined(subnet: SubnetId, address: str, key: IdentityKey, role: Role, stake: int) -> dict:
    return {
        "subnet": subnet.key,
        "member": address,
        "peerId": key.peer_id.raw,
        "role": role.code,
        "stake": stake,
    }


def registry() -> RegistryView:
    view = RegistryView(SubnetView(SUBNET))
    view.apply("Joined", joined(SUBNET, A_AGG, AGG, Role.AGGREGATOR, 100))
    view.apply("Joined", joined(SUBNET, A_VAL, VAL, Role.VALIDATOR, 100))
    view.apply("Joined", joined(SUBNET, A_TRAINER, TRAINER, Role.TRAINER, 100))
    view.apply("Joined", joined(OTHER, "0x" + "09" * 20, IdentityKey.generate(), Role.TRAINER, 1))
    view.apply(
        "ValidatorSetUpdated",
        {"subnet": SUBNET.key, "version": 3, "quorum": 1, "validators": [A_VAL]},
    )
    return view


def test_members_validators_and_addresses() -> None:
    r = registry()
    v = r.view()
    assert v.aggregator == AGG.peer_id
    assert dict(v.members) == {
        AGG.peer_id: Role.AGGREGATOR,
        VAL.peer_id: Role.VALIDATOR,
        TRAINER.peer_id: Role.TRAINER,
    }
    assert v.validators == (VAL.peer_id,) and v.validator_set_version == 3
    assert r.address_of(AGG.peer_id) == bytes.fromhex(A_AGG[2:])
    assert r.address_of(IdentityKey.generate().peer_id) is None


def test_a_member_slashed_to_zero_is_no_longer_active() -> None:
    r = registry()
    r.apply("Slashed", {"subnet": SUBNET.key, "member": A_AGG, "amount": 40, "beneficiary": A_VAL})
    assert r.view().aggregator == AGG.peer_id  # 60 left: still active
    r.apply("Slashed", {"subnet": SUBNET.key, "member": A_AGG, "amount": 60, "beneficiary": A_VAL})
    v = r.view()
    assert v.aggregator is None and AGG.peer_id not in v.members
    assert not v.has_role(AGG.peer_id, Role.AGGREGATOR)  # its gossip is refused
    r.apply("StakeAdded", {"subnet": SUBNET.key, "member": A_AGG, "amount": 100, "stake": 100})
    assert r.view().aggregator == AGG.peer_id  # staked again
    # a slashed validator leaves the validator set's address map too
    r.apply("Slashed", {"subnet": SUBNET.key, "member": A_VAL, "amount": 500, "beneficiary": A_AGG})
    assert r.view().validators == () and not r.view().validator_addresses


def test_disputes_of_this_subnet_only() -> None:
    r = registry()
    r.apply("DisputeOpened", {"disputeId": 4, "subnet": SUBNET.key, "round": 2})
    r.apply("DisputeOpened", {"disputeId": 5, "subnet": OTHER.key, "round": 2})
    r.apply("DisputeResolved", {"disputeId": 4, "upheld": True})
    r.apply("DisputeResolved", {"disputeId": 5, "upheld": False})
    assert r.disputes == {4: RoundId(2)} and r.resolutions == {4: True}
