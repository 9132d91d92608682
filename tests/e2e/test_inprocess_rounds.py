"""Whole rounds over real libp2p hosts on 127.0.0.1 (one process, one trio loop): a
bootstrap, an aggregator, two validators and three trainers with real torch training,
encrypted updates in real on-disk blockstores, CAR block exchange and GossipSub. No chain:
the proof is the gossiped QuorumProof (the chain is covered by the multi-process tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from sorap2p.chain.proof import ChainKey
from sorap2p.core.config import Config, load_config
from sorap2p.core.ids import PeerId
from sorap2p.node import work
from sorap2p.node.driver import wall_clock_ms
from sorap2p.node.home import Home
from sorap2p.node.proofs import GossipOnlyProofs
from sorap2p.node.runner import run_role
from sorap2p.node.services import Services, open_services
from sorap2p.node.work import read_metadata

pytestmark = [pytest.mark.net, pytest.mark.slow]


def make_home(tmp: Path, name: str, role: str, overrides: list[str]) -> tuple[Home, Config]:
    home = Home(tmp / name)
    cfg = load_config("", {}, [f"node.role={role}", "node.subnet=e2e", *overrides])
    home.init(cfg)
    return home, home.load_config({})


@asynccontextmanager
async def node(home: Home, cfg: Config) -> AsyncIterator[Services]:
    async with open_services(cfg, home, clock=wall_clock_ms) as svc:
        yield svc


COMMON = [
    "round.duration_s=60",
    "round.pause_s=0.2",
    "round.proof_timeout_s=90",
    "learn.epochs=1",
    "node.log_level=warning",
]


async def run_subnet(
    tmp: Path,
    trainers: list[list[str]],
    *,
    aggregator: Sequence[str] = (),
    rounds: int,
    common: list[str] = COMMON,
    late: Sequence[list[str]] = (),
) -> dict[str, Services]:
    """A bootstrap, two validators (quorum 2), an aggregator and one trainer per entry of
    ``trainers`` (its extra overrides), all in this trio loop; returns their services once
    the aggregator has run ``rounds`` rounds (their states stay readable). The ``late``
    trainers start only once the first round is open."""
    n = len(trainers)
    common = [
        *common,
        f"round.expected_participants={n + len(late)}",
        f"round.start_peers={n + 2}",
    ]
    boot_home, boot_cfg = make_home(tmp, "boot", "bootstrap", common)
    services: dict[str, Services] = {}
    async with trio.open_nursery() as nursery, node(boot_home, boot_cfg) as boot:
        net = [f"network.bootstrap={boot.host.listen_addrs()[0]}"]
        v_homes = [make_home(tmp, f"v{i}", "validator", common + net) for i in range(2)]
        v_peers = [str(h.identity_key().peer_id) for h, _ in v_homes]
        vset = [f"round.validators={','.join(v_peers)}", "round.quorum=2"]
        agg_overrides = [*common, *net, *vset, f"round.rounds={rounds}", *aggregator]
        a_home = make_home(tmp, "agg", "aggregator", agg_overrides)
        t_homes = [
            make_home(tmp, f"t{i}", "trainer", common + net + extra)
            for i, extra in enumerate([*trainers, *late])
        ]
        v_homes = [(h, load_config(h.config_path.read_text(), {}, vset)) for h, _ in v_homes]
        done = trio.Event()

        async def run(
            name: str, home: Home, cfg: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED
        ) -> None:
            async with node(home, cfg) as svc:
                services[name] = svc
                task_status.started()
                await run_role(svc, GossipOnlyProofs(ChainKey(home.chain_key())))
                if name == "agg":
                    done.set()
                await trio.sleep_forever()

        with trio.fail_after(600):
            for i, (h, c) in enumerate(v_homes):
                await nursery.start(run, f"v{i}", h, c)
            for i, (h, c) in enumerate(t_homes[:n]):
                await nursery.start(run, f"t{i}", h, c)
            await nursery.start(run, "agg", *a_home)
            if late:
                extras = services["agg"].extras

                def opened() -> bool:
                    """The first RoundOpen went out 8 s ago: past GossipSub's IHAVE window
                    (3 heartbeats), so only a re-published copy can reach a new peer."""
                    ro = extras["driver"].machine.round_open if "driver" in extras else None
                    return ro is not None and wall_clock_ms() >= ro.opened_at + 8_000

                while not opened():  # noqa: ASYNC110 (polls the aggregator's machine)
                    await trio.sleep(0.05)
                for i, (h, c) in enumerate(t_homes[n:], start=n):
                    await nursery.start(run, f"t{i}", h, c)
            await done.wait()
        nursery.cancel_scope.cancel()
    return services


async def test_two_rounds_between_seven_nodes(tmp_path: Path) -> None:
    shards = [[f"node.shard={i}", "node.shards=3"] for i in range(2)]
    # the third trainer brings its own private data through a user loader (--data)
    services = await run_subnet(
        tmp_path, [*shards, ["node.data=tests.learn.userplug:private_data"]], rounds=2
    )
    agg = services["agg"].extras["status"]
    assert [r["ok"] for r in agg["rounds"]] == [True, True], agg["rounds"]
    for i in range(2):
        st = services[f"v{i}"].extras["status"]
        assert st["last_check"]["ok"], st
        assert [v["approve"] for v in st["votes"]] == [True, True]
    for i in range(3):
        assert services[f"t{i}"].extras["status"]["rounds_trained"] == 2
    head = services["agg"].params.head()
    assert head is not None and head.round == 2


ROBUST = ["round.strategy=robust_fltrust", "round.strategy_params=reference_weight=100"]


async def test_robust_fltrust_round_leaves_out_a_sign_flipper(tmp_path: Path) -> None:
    """The aggregator trains the round's reference delta on the subnet's root dataset (named
    in RoundOpen); both validators derive the same root set, recompute the reference and
    the aggregate bit for bit and prove the round; the sign-flipped update is left out
    (negative cosine with the aggregate, ranked last)."""
    trainers = [[f"node.shard={i}", "node.shards=3"] for i in range(3)]
    trainers.append(["node.shard=0", "node.shards=3", "node.behaviour=sign_flip"])
    services = await run_subnet(
        tmp_path, trainers, aggregator=ROBUST, rounds=1, common=[*COMMON, *ROBUST]
    )
    agg = services["agg"].extras["status"]
    assert [r["ok"] for r in agg["rounds"]] == [True], agg["rounds"]
    for i in range(2):
        assert [v["approve"] for v in services[f"v{i}"].extras["status"]["votes"]] == [True]
    result = services["agg"].extras["last_result"]
    flipper = services["t3"].identity.peer_id
    assert result.ranking[-1].trainer == flipper and result.ranking[-1].score < 0
    assert all(e.score > 0 for e in result.ranking[:-1]), result.ranking
    doc = read_metadata(services["v0"].blocks, result.metadata)
    kept = {PeerId(u["trainer"]): u["kept"] for u in doc["updates"]}
    # an honest non-IID update may also fall inside the noise margin in a round
    assert kept.pop(flipper) is False and any(kept.values()), doc["updates"]
    subnet_root = work.store_root_data(services["v0"].blocks, work.root_dataset("digits", 100, 0))
    assert doc["root_data"] == subnet_root, doc


async def test_a_foreign_root_dataset_is_refused(tmp_path: Path) -> None:
    """An aggregator that trains its reference on another root set than the subnet's (here:
    60 samples instead of 100) gets no proof: both validators refuse the round."""
    services = await run_subnet(
        tmp_path,
        [["node.shard=0", "node.shards=2"], ["node.shard=1", "node.shards=2"]],
        aggregator=["round.root_size=60"],
        rounds=1,
        common=[*COMMON, *ROBUST, "round.proof_timeout_s=20"],
    )
    agg = services["agg"].extras["status"]
    assert [r["ok"] for r in agg["rounds"]] == [False], agg["rounds"]
    for i in range(2):
        check = services[f"v{i}"].extras["status"]["last_check"]
        assert not check["ok"] and check["reason"] == "root dataset not the subnet's", check


async def test_a_trainer_that_joins_an_open_round_hears_of_it(tmp_path: Path) -> None:
    """The aggregator re-publishes RoundOpen until the deadline: a trainer that starts after
    the first copy went out still trains and gets into the round."""
    services = await run_subnet(
        tmp_path,
        [["node.shard=0", "node.shards=2"]],
        late=[["node.shard=1", "node.shards=2"]],
        rounds=1,
        common=[*COMMON, "round.reannounce_s=1"],
    )
    agg = services["agg"].extras["status"]
    assert [r["ok"] for r in agg["rounds"]] == [True], agg["rounds"]
    assert services["t1"].extras["status"]["rounds_trained"] == 1
    doc = read_metadata(services["agg"].blocks, services["agg"].extras["last_result"].metadata)
    assert len(doc["updates"]) == 2, doc
