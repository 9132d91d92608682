"""Whole rounds over real libp2p hosts on 127.0.0.1 (one process, one trio loop): a
bootstrap, an aggregator, two validators and three trainers with real torch training,
encrypted updates in real on-disk blockstores, CAR block exchange and GossipSub. No chain:
the proof is the gossiped QuorumProof (the chain is covered by the multi-process tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from sorap2p.chain.proof import ChainKey
from sorap2p.core.config import Config, load_config
from sorap2p.node.driver import wall_clock_ms
from sorap2p.node.home import Home
from sorap2p.node.proofs import GossipOnlyProofs
from sorap2p.node.runner import run_role
from sorap2p.node.services import Services, open_services

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


async def test_two_rounds_between_seven_nodes(tmp_path: Path) -> None:
    common = [
        "round.duration_s=60",
        "round.expected_participants=3",
        "round.pause_s=0.2",
        "round.proof_timeout_s=90",
        "round.start_peers=5",
        "learn.epochs=1",
        "node.log_level=warning",
    ]
    boot_home, boot_cfg = make_home(tmp_path, "boot", "bootstrap", common)
    async with trio.open_nursery() as nursery, node(boot_home, boot_cfg) as boot:
        boot_addr = boot.host.listen_addrs()[0]
        net = [f"network.bootstrap={boot_addr}"]
        v_homes = [make_home(tmp_path, f"v{i}", "validator", common + net) for i in range(2)]
        v_peers = [str(h.identity_key().peer_id) for h, _ in v_homes]
        vset = [f"round.validators={','.join(v_peers)}", "round.quorum=2"]
        a_home = make_home(tmp_path, "agg", "aggregator", common + net + vset + ["round.rounds=2"])
        t_homes = [
            make_home(
                tmp_path, f"t{i}", "trainer", common + net + [f"node.shard={i}", "node.shards=3"]
            )
            for i in range(2)
        ]
        # the third trainer brings its own private data through a user loader (--data)
        t_homes.append(
            make_home(
                tmp_path,
                "t2",
                "trainer",
                common + net + ["node.data=tests.learn.userplug:private_data"],
            )
        )
        v_homes = [(h, load_config(h.config_path.read_text(), {}, vset)) for h, _ in v_homes]
        services: dict[str, Services] = {}
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
            for i, (h, c) in enumerate(t_homes):
                await nursery.start(run, f"t{i}", h, c)
            # let the gossip mesh form before the first round opens
            await nursery.start(run, "agg", *a_home)
            await done.wait()
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
        nursery.cancel_scope.cancel()
