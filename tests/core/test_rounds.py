"""Each round machine driven through its table, including the timeouts."""

from __future__ import annotations

import dataclasses

import pytest

from sorap2p.core import messages as m
from sorap2p.core.ids import RoundId
from sorap2p.core.rounds.aggregator import (
    AggregatorMachine,
    AggregatorParams,
    AggState,
)
from sorap2p.core.rounds.events import (
    Aggregate,
    Aggregated,
    AnnounceReceived,
    CancelWork,
    CastVote,
    CheckDone,
    CheckRound,
    FetchUpdate,
    ModelPublished,
    OpenRound,
    Persist,
    ProofObserved,
    Publish,
    RaiseDispute,
    RankingsPublished,
    RoundFinished,
    RoundOpened,
    SetTimer,
    SubmitProof,
    TimerFired,
    Train,
    TrainingDone,
    UpdateChecked,
    VoteSeen,
    WorkFailed,
)
from sorap2p.core.rounds.trainer import TrainerMachine, TrainerParams, TrainerState
from sorap2p.core.rounds.validator import ValidatorMachine, ValidatorParams, ValState
from sorap2p.testing.factories import SUBNET, Cast, announce, cid, eth_address, round_open, training

CAST = Cast.make()
R1 = RoundId(1)


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def agg_machine(**kw: object) -> AggregatorMachine:
    params = AggregatorParams(
        subnet=SUBNET,
        me=CAST.aggregator.peer_id,
        model="digits_cnn",
        round_ms=30_000,
        min_participants=2,
        strategy="fedavg",
        training=training(),
        fetch_grace_ms=5_000,
        proof_timeout_ms=60_000,
    )
    return AggregatorMachine(dataclasses.replace(params, **kw))  # type: ignore[arg-type]


def open_agg(machine: AggregatorMachine, now: int = 0) -> m.RoundOpen:
    actions = machine.handle(OpenRound(R1, cid("model-0"), CAST.recipients()), now)
    assert kinds(actions) == ["Publish", "SetTimer", "Persist"]
    ro = actions[0].message
    assert isinstance(ro, m.RoundOpen) and ro.deadline == now + 30_000
    assert actions[1] == SetTimer("deadline", R1, ro.deadline)
    return ro


class TestAggregator:
    def test_happy_path_at_deadline(self) -> None:
        agg = agg_machine()
        ro = open_agg(agg)
        anns = [announce(t, ro) for t in CAST.trainers[:3]]
        for a in anns:
            acts = agg.handle(AnnounceReceived(a, 1_000), 1_000)
            assert acts == [FetchUpdate(a), Persist()]
        # duplicate trainer, wrong base model, too late: ignored
        assert agg.handle(AnnounceReceived(announce(CAST.trainers[0], ro, label="x"), 2), 2) == []
        wrong = dataclasses.replace(announce(CAST.trainers[3], ro), base_model=cid("other"))
        assert agg.handle(AnnounceReceived(wrong, 2), 2) == []
        late = announce(CAST.trainers[4], ro, at=ro.deadline + 1)
        assert agg.handle(AnnounceReceived(late, ro.deadline + 1), ro.deadline + 1) == []
        agg.handle(UpdateChecked(anns[0].update, True), 2_000)
        agg.handle(UpdateChecked(anns[1].update, False, "bad shape"), 2_000)
        agg.handle(UpdateChecked(anns[2].update, True), 2_000)
        acts = agg.handle(TimerFired("deadline", R1), ro.deadline)
        assert agg.state is AggState.AGGREGATING
        (aggregate, _) = acts
        assert isinstance(aggregate, Aggregate)
        assert [a.update for a in aggregate.updates] == sorted([anns[0].update, anns[2].update])
        gm, rk = self.outputs(ro)
        acts = agg.handle(Aggregated(gm, rk), ro.deadline + 10)
        assert kinds(acts) == ["Publish", "Publish", "SetTimer", "Persist"]
        assert agg.state is AggState.PUBLISHED
        acts = agg.handle(ProofObserved(R1, b"\x01" * 32), ro.deadline + 20)
        assert acts[0] == RoundFinished(R1, True)
        assert agg.state is AggState.IDLE and agg.last_finalized == R1

    @staticmethod
    def outputs(ro: m.RoundOpen) -> tuple[m.GlobalModel, m.Rankings]:
        gm = m.GlobalModel(
            subnet=SUBNET,
            round=R1,
            model=cid("model-1"),
            parent=ro.global_model,
            strategy="fedavg",
            updates=(),
            num_samples=0,
            metadata=cid("meta"),
            created_at=1,
            signer=CAST.aggregator.peer_id,
        )
        rk = m.Rankings(
            subnet=SUBNET,
            round=R1,
            model=cid("model-1"),
            entries=(),
            signer=CAST.aggregator.peer_id,
        )
        return gm, rk

    def test_early_aggregation_when_expected_updates_are_in(self) -> None:
        agg = agg_machine(expected_participants=2)
        ro = open_agg(agg)
        anns = [announce(t, ro) for t in CAST.trainers[:2]]
        for a in anns:
            agg.handle(AnnounceReceived(a, 5), 5)
        assert kinds(agg.handle(UpdateChecked(anns[0].update, True), 6)) == ["Persist"]
        assert kinds(agg.handle(UpdateChecked(anns[1].update, True), 7)) == ["Aggregate", "Persist"]

    def test_deadline_waits_for_in_flight_fetches_then_aggregates(self) -> None:
        agg = agg_machine()
        ro = open_agg(agg)
        anns = [announce(t, ro) for t in CAST.trainers[:3]]
        for a in anns:
            agg.handle(AnnounceReceived(a, 5), 5)
        agg.handle(UpdateChecked(anns[0].update, True), 6)
        agg.handle(UpdateChecked(anns[1].update, True), 6)
        acts = agg.handle(TimerFired("deadline", R1), ro.deadline)
        assert acts == [SetTimer("grace", R1, ro.deadline + 5_000)]
        assert agg.state is AggState.COLLECTING
        acts = agg.handle(TimerFired("grace", R1), ro.deadline + 5_000)
        assert isinstance(acts[0], Aggregate) and len(acts[0].updates) == 2

    def test_too_few_updates_fails_the_round(self) -> None:
        agg = agg_machine()
        ro = open_agg(agg)
        a = announce(CAST.trainers[0], ro)
        agg.handle(AnnounceReceived(a, 5), 5)
        agg.handle(UpdateChecked(a.update, True), 6)
        acts = agg.handle(TimerFired("deadline", R1), ro.deadline)
        assert agg.state is AggState.IDLE
        assert acts[0] == RoundFinished(R1, False, "1 valid updates, need 2")

    def test_stale_timer_is_ignored(self) -> None:
        agg = agg_machine()
        open_agg(agg)
        assert agg.handle(TimerFired("deadline", RoundId(0)), 1) == []
        assert agg.state is AggState.COLLECTING

    def test_aggregation_failure_and_proof_timeout(self) -> None:
        agg = agg_machine(min_participants=1)
        ro = open_agg(agg)
        a = announce(CAST.trainers[0], ro)
        agg.handle(AnnounceReceived(a, 5), 5)
        agg.handle(UpdateChecked(a.update, True), 6)
        agg.handle(TimerFired("deadline", R1), ro.deadline)
        acts = agg.handle(WorkFailed("out of memory"), ro.deadline + 1)
        assert agg.state is AggState.IDLE and acts[0] == RoundFinished(R1, False, "out of memory")
        # proof timeout
        agg2 = agg_machine(min_participants=1)
        ro = open_agg(agg2)
        agg2.handle(AnnounceReceived(a, 5), 5)
        agg2.handle(UpdateChecked(a.update, True), 6)
        agg2.handle(TimerFired("deadline", R1), ro.deadline)
        agg2.handle(Aggregated(*self.outputs(ro)), ro.deadline + 1)
        assert agg2.handle(ProofObserved(RoundId(7), b""), 1) == []
        assert agg2.handle(TimerFired("deadline", R1), 2) == []  # not the proof timer
        acts = agg2.handle(TimerFired("proof", R1), ro.deadline + 60_001)
        assert acts[0] == RoundFinished(R1, False, "no quorum proof")

    def test_snapshot_restore_resumes_work(self) -> None:
        agg = agg_machine()
        ro = open_agg(agg)
        anns = [announce(t, ro) for t in CAST.trainers[:3]]
        for a in anns:
            agg.handle(AnnounceReceived(a, 5), 5)
        agg.handle(UpdateChecked(anns[0].update, True), 6)
        snap = agg.snapshot()
        back = AggregatorMachine.restore(agg.params, snap)
        assert back.state is AggState.COLLECTING and back.round_open == ro
        resumed = back.resume(10)
        assert [type(a) for a in resumed] == [FetchUpdate, FetchUpdate, SetTimer]
        assert {a.announce.update for a in resumed[:2]} == {anns[1].update, anns[2].update}
        # a second announce by a restored trainer is still refused
        again = announce(CAST.trainers[0], ro, label="again")
        assert back.handle(AnnounceReceived(again, 11), 11) == []
        # published state re-publishes after restart
        back.handle(UpdateChecked(anns[1].update, True), 12)
        back.handle(UpdateChecked(anns[2].update, True), 12)
        back.handle(TimerFired("deadline", R1), ro.deadline)
        back.handle(Aggregated(*self.outputs(ro)), ro.deadline + 1)
        again2 = AggregatorMachine.restore(agg.params, back.snapshot())
        assert kinds(again2.resume(ro.deadline + 2)) == ["Publish", "Publish", "SetTimer"]

    def test_unexpected_events_are_ignored_and_counted(self) -> None:
        agg = agg_machine()
        assert agg.handle(UpdateChecked(cid("x"), True), 0) == []
        assert agg.statistics()["ignored"] == {"IDLE:UpdateChecked": 1}


def trainer_machine(**kw: object) -> TrainerMachine:
    params = TrainerParams(SUBNET, CAST.trainers[0].peer_id, CAST.aggregator.peer_id)
    return TrainerMachine(dataclasses.replace(params, **kw))  # type: ignore[arg-type]


class TestTrainer:
    def test_train_and_announce(self) -> None:
        t = trainer_machine()
        ro = round_open(CAST.aggregator, 1, CAST.recipients())
        acts = t.handle(RoundOpened(ro), 0)
        assert acts == [Train(ro), SetTimer("deadline", R1, ro.deadline)]
        a = announce(CAST.trainers[0], ro)
        acts = t.handle(TrainingDone(a), 1_000)
        assert acts == [Publish(a), RoundFinished(R1, True)]
        assert t.state is TrainerState.ANNOUNCED
        # the same round again is ignored; the next one trains
        assert t.handle(RoundOpened(ro), 2_000) == []
        ro2 = round_open(CAST.aggregator, 2, CAST.recipients(), opened_at=40_000)
        assert isinstance(t.handle(RoundOpened(ro2), 40_000)[0], Train)

    def test_refuses_foreign_aggregator_and_late_rounds(self) -> None:
        t = trainer_machine()
        assert t.handle(RoundOpened(round_open(CAST.validators[0], 1, CAST.recipients())), 0) == []
        ro = round_open(CAST.aggregator, 1, CAST.recipients(), duration=500)
        assert t.handle(RoundOpened(ro), 0) == []  # less than min_time_left
        assert t.state is TrainerState.IDLE

    def test_deadline_abandons_training(self) -> None:
        t = trainer_machine()
        ro = round_open(CAST.aggregator, 1, CAST.recipients())
        t.handle(RoundOpened(ro), 0)
        assert t.handle(TimerFired("deadline", RoundId(0)), 1) == []
        acts = t.handle(TimerFired("deadline", R1), ro.deadline)
        assert acts == [CancelWork(R1), RoundFinished(R1, False, "deadline passed")]
        assert t.state is TrainerState.IDLE

    def test_done_after_deadline_is_not_announced(self) -> None:
        t = trainer_machine()
        ro = round_open(CAST.aggregator, 1, CAST.recipients())
        t.handle(RoundOpened(ro), 0)
        acts = t.handle(TrainingDone(announce(CAST.trainers[0], ro)), ro.deadline + 1)
        assert acts == [RoundFinished(R1, False, "finished after deadline")]

    def test_newer_round_supersedes_and_failure(self) -> None:
        t = trainer_machine()
        ro = round_open(CAST.aggregator, 1, CAST.recipients())
        t.handle(RoundOpened(ro), 0)
        ro2 = round_open(CAST.aggregator, 2, CAST.recipients(), opened_at=10)
        acts = t.handle(RoundOpened(ro2), 10)
        assert kinds(acts) == ["CancelWork", "RoundFinished", "Train", "SetTimer"]
        assert t.handle(TrainingDone(announce(CAST.trainers[0], ro)), 11) == []  # stale result
        acts = t.handle(WorkFailed("data loader crashed"), 12)
        assert acts == [RoundFinished(RoundId(2), False, "data loader crashed")]


def val_machine(i: int = 0, n: int = 3, k: int = 2) -> ValidatorMachine:
    return ValidatorMachine(
        ValidatorParams(
            subnet=SUBNET,
            me=CAST.validators[i].peer_id,
            validators=tuple(CAST.validators[j].peer_id for j in range(n)),
            quorum=k,
            aggregator=CAST.aggregator.peer_id,
            model_grace_ms=10_000,
            backup_ms=5_000,
            vote_timeout_ms=100_000,
        )
    )


def vote(i: int, ro: m.RoundOpen, digest: bytes, approve: bool = True) -> m.ValidationVote:
    return m.sign(
        CAST.validators[i],
        m.ValidationVote(
            subnet=SUBNET,
            round=ro.round,
            model=cid("model-1"),
            approve=approve,
            record_digest=digest,
            eth_address=eth_address(i),
            eth_signature=bytes([i]) * 65 if approve else b"",
            reason="",
            signer=CAST.validators[i].peer_id,
        ),
    )


def drive_to_check(v: ValidatorMachine) -> m.RoundOpen:
    ro = round_open(CAST.aggregator, 1, CAST.recipients())
    assert v.handle(RoundOpened(ro), 0) == [SetTimer("model", R1, ro.deadline + 10_000)]
    a = announce(CAST.trainers[0], ro)
    v.handle(AnnounceReceived(a, 1_000), 1_000)
    gm, rk = TestAggregator.outputs(ro)
    assert v.handle(ModelPublished(m.sign(CAST.aggregator, gm)), 31_000) == []
    acts = v.handle(RankingsPublished(m.sign(CAST.aggregator, rk)), 31_001)
    assert v.state is ValState.CHECKING
    (check,) = acts
    assert isinstance(check, CheckRound) and len(check.announces) == 1
    return ro


class TestValidator:
    def test_primary_submits_on_quorum(self) -> None:
        # pick the validator that is primary for round 1
        primary = next(i for i in range(3) if val_machine(i).params.position(R1) == 0)
        v = val_machine(primary)
        ro = drive_to_check(v)
        other = next(i for i in range(3) if i != primary)
        v.handle(VoteSeen(vote(other, ro, b"d" * 32)), 31_500)  # early vote is kept
        acts = v.handle(CheckDone(True, b"d" * 32), 32_000)
        assert isinstance(acts[0], CastVote) and acts[0].approve
        assert v.state is ValState.VOTED
        # our own vote arrives back through gossip: quorum of 2 reached, primary submits
        acts = v.handle(VoteSeen(vote(primary, ro, b"d" * 32)), 32_100)
        (proof,) = acts
        assert isinstance(proof, SubmitProof)
        expected = sorted([primary, other], key=lambda i: CAST.validators[i].peer_id)
        assert proof.signatures == tuple(bytes([i]) * 65 for i in expected)
        assert v.handle(VoteSeen(vote(3 - primary - other, ro, b"d" * 32)), 32_200) == []
        acts = v.handle(ProofObserved(R1, b"\x02" * 32), 33_000)
        assert acts == [RoundFinished(R1, True)] and v.state is ValState.FINALIZED

    def test_backup_submits_after_its_delay(self) -> None:
        backup = next(i for i in range(3) if val_machine(i).params.position(R1) == 1)
        v = val_machine(backup)
        ro = drive_to_check(v)
        v.handle(CheckDone(True, b"d" * 32), 32_000)
        acts = v.handle(VoteSeen(vote(backup, ro, b"d" * 32)), 32_100)
        assert acts == []
        other = next(i for i in range(3) if i != backup)
        acts = v.handle(VoteSeen(vote(other, ro, b"d" * 32)), 32_200)
        assert acts == [SetTimer("submit", R1, 32_200 + 5_000)]
        assert v.handle(VoteSeen(vote(3 - backup - other, ro, b"d" * 32)), 32_300) == []
        (proof,) = v.handle(TimerFired("submit", R1), 37_200)
        assert isinstance(proof, SubmitProof) and len(proof.signatures) == 2
        assert v.handle(TimerFired("submit", R1), 37_300) == []  # only once

    def test_mismatched_digests_and_rejections_do_not_count(self) -> None:
        v = val_machine(0)
        ro = drive_to_check(v)
        v.handle(CheckDone(True, b"d" * 32), 32_000)
        v.handle(VoteSeen(vote(0, ro, b"d" * 32)), 1)
        assert v.handle(VoteSeen(vote(1, ro, b"e" * 32)), 2) == []  # other digest
        assert v.handle(VoteSeen(vote(2, ro, b"d" * 32, approve=False)), 3) == []
        acts = v.handle(TimerFired("votes", R1), 132_000)
        assert acts == [RoundFinished(R1, False, "no quorum proof in time")]

    def test_disapproval_raises_a_dispute(self) -> None:
        v = val_machine(0)
        drive_to_check(v)
        acts = v.handle(
            CheckDone(False, b"d" * 32, "wrong aggregate", CAST.aggregator.peer_id), 32_000
        )
        assert kinds(acts) == ["CastVote", "SetTimer", "RaiseDispute"]
        assert acts[2] == RaiseDispute(R1, CAST.aggregator.peer_id, "wrong aggregate")

    def test_model_timeout_and_check_failure(self) -> None:
        v = val_machine(0)
        ro = round_open(CAST.aggregator, 1, CAST.recipients())
        v.handle(RoundOpened(ro), 0)
        acts = v.handle(TimerFired("model", R1), ro.deadline + 10_000)
        assert acts == [RoundFinished(R1, False, "no global model in time")]
        v2 = val_machine(0)
        drive_to_check(v2)
        acts = v2.handle(WorkFailed("cannot fetch update"), 40_000)
        assert v2.state is ValState.IDLE

    def test_foreign_models_are_ignored(self) -> None:
        v = val_machine(0)
        ro = round_open(CAST.aggregator, 1, CAST.recipients())
        v.handle(RoundOpened(ro), 0)
        gm, rk = TestAggregator.outputs(ro)
        forged = m.sign(CAST.trainers[0], gm)  # not the round's aggregator
        v.handle(ModelPublished(forged), 1)
        v.handle(RankingsPublished(m.sign(CAST.aggregator, rk)), 2)
        assert v.state is ValState.OBSERVING and v.model is None

    def test_new_round_resets(self) -> None:
        v = val_machine(0)
        drive_to_check(v)
        ro2 = round_open(CAST.aggregator, 2, CAST.recipients(), opened_at=50_000)
        v.handle(RoundOpened(ro2), 50_000)
        assert v.state is ValState.OBSERVING and v.round == RoundId(2) and v.model is None
        assert v.handle(RoundOpened(round_open(CAST.aggregator, 1, CAST.recipients())), 1) == []


@pytest.mark.parametrize("machine", [AggregatorMachine, TrainerMachine, ValidatorMachine])
def test_tables_render(machine: type) -> None:
    table = machine.TABLE
    assert table.mermaid().startswith("stateDiagram-v2")
    assert table.markdown().count("\n") == len(table.rules) + 1


def test_rounds_doc_is_generated_from_the_tables() -> None:
    from sorap2p.testing.rounds_doc import DOC, render

    current = DOC.read_text()
    assert render(current) == current, "run: python -m sorap2p.testing.rounds_doc --write"
