"""Start, watch and stop a whole sorap2p network as separate processes on 127.0.0.1.

`Cluster` is used by the testnet command and by the multi-process end-to-end tests:
anvil is started and the contracts deployed, a subnet is created with its validator set,
every node gets a home (its chain key is one of anvil's funded accounts), then the
bootstrap, validators, trainers and the aggregator are started as `sorap2p node` processes.
Every process started is stopped by `stop()` (also on errors and Ctrl-C)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sorap2p.chain.client import ChainClient, SubnetParams
from sorap2p.chain.deploy import deploy
from sorap2p.chain.deployment import Deployment
from sorap2p.chain.devchain import Devchain
from sorap2p.chain.proof import ChainKey
from sorap2p.core.config import load_config
from sorap2p.core.ids import SubnetId
from sorap2p.node.home import Home


def wait_for(cond: Callable[[], object], limit_s: float, what: str) -> None:
    """Poll ``cond`` every half second until it is true; TimeoutError after ``limit_s``.
    (Multi-process tests wait on what the nodes write, never for a fixed time.)"""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass(frozen=True)
class ClusterSpec:
    root: Path
    validators: int = 3
    trainers: int = 5
    quorum: int = 2
    rounds: int = 10
    round_s: float = 60.0
    subnet: str = "digits"
    model: str = "digits_cnn"
    dataset: str = "digits"
    strategy: str = "fedavg"
    alpha: float = 0.5
    epochs: int = 3
    lr: float = 0.1
    log_level: str = "info"
    extra: tuple[str, ...] = ()  # more config overrides for every node
    per_node: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> overrides
    chain_state: bool = False  # anvil keeps its state in root/anvil-state.json (restartable)

    @property
    def accounts(self) -> int:
        return 2 + self.validators + self.trainers + 1


class Placement(Protocol):
    """Where node processes run (testnet/netns.py: one network namespace each): the
    command prefix and the config overrides (listen address, chain URL) of one node."""

    def command_prefix(self, name: str) -> list[str]: ...

    def overrides(self, name: str, chain_url: str) -> list[str]: ...


@dataclass
class NodeProc:
    name: str
    role: str
    home: Home
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    addrs: list[str] = field(default_factory=list)


class Cluster:
    def __init__(self, spec: ClusterSpec, placement: Placement | None = None) -> None:
        self.spec = spec
        self.placement = placement
        self.root = spec.root
        state = spec.root / "anvil-state.json" if spec.chain_state else None
        self.chain = Devchain(accounts=spec.accounts, state=state)
        self.nodes: dict[str, NodeProc] = {}
        self.deployment: Deployment | None = None
        self.client: ChainClient | None = None
        self.owner: ChainKey | None = None
        self.bootstrap_addr = ""
        self.rewards: dict[int, dict[str, int]] = {}
        self.claimed: dict[str, int] = {}

    # -- set-up ------------------------------------------------------------------------
    def start_chain(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.chain.start()
        keys = self.chain.keys
        self.owner = keys[0]
        client = self.chain.client()
        self.deployment = deploy(client, self.owner)
        self.deployment.save(self.root / "deployment.json")
        self.client = client

    def _key_of(self, index: int) -> ChainKey:
        return self.chain.keys[1 + index]

    def make_homes(self) -> None:
        s = self.spec
        names = ["boot"] + [f"validator-{i}" for i in range(s.validators)]
        names += [f"trainer-{i}" for i in range(s.trainers)] + ["aggregator"]
        for i, name in enumerate(names):
            role = name.split("-")[0].replace("boot", "bootstrap")
            overrides = [
                f"node.role={role}",
                f"node.subnet={s.subnet}",
                f"node.log_level={s.log_level}",
                "node.log_json=true",
                f"chain.url={self.chain.url}",
                f"chain.deployment={self.root / 'deployment.json'}",
                f"learn.model={s.model}",
                f"learn.dataset={s.dataset}",
                f"learn.dirichlet_alpha={s.alpha}",
                f"learn.epochs={s.epochs}",
                f"learn.lr={s.lr}",
                f"round.duration_s={s.round_s}",
                f"round.strategy={s.strategy}",
                f"round.expected_participants={s.trainers}",
                f"round.rounds={s.rounds}",
                f"round.start_peers={s.trainers + s.validators}",
                "round.proof_timeout_s=120",
                "round.backup_s=5",
                *s.extra,
            ]
            if role == "trainer":
                overrides += [f"node.shard={name.split('-')[1]}", f"node.shards={s.trainers}"]
            overrides += list(s.per_node.get(name, ()))
            if self.placement is not None:
                overrides += self.placement.overrides(name, self.chain.url)
            cfg = load_config("", {}, overrides)
            home = Home(self.root / name)
            if not home.exists():
                home.init(cfg, chain_key=self._key_of(i).private_key)
            self.nodes[name] = NodeProc(name, role, home)

    def create_subnet(self) -> None:
        assert self.client is not None and self.owner is not None
        s = self.spec
        validators = [self._key_of(1 + i).address for i in range(s.validators)]
        params = SubnetParams(
            round_length=int(s.round_s),
            challenge_window=3600,
            unbonding_delay=600,
            dispute_bond=10**16,
            min_stake=(10**15, 10**15, 10**15, 0),
        )
        self.client.create_subnet(self.owner, SubnetId(s.subnet).key, params, validators, s.quorum)
        self.client.fund_rewards(self.owner, SubnetId(s.subnet).key, 10**18)

    # -- processes -----------------------------------------------------------------------
    def _cmd(self, node: NodeProc) -> list[str]:
        cmd = [sys.executable, "-m", "sorap2p.cli", "node", "--home", str(node.home.path)]
        if node.role != "bootstrap" and self.bootstrap_addr:
            cmd += ["--bootstrap", self.bootstrap_addr]
        if self.placement is not None:
            cmd = [*self.placement.command_prefix(node.name), *cmd]
        return cmd

    def start_node(self, name: str, *, wait_addr: bool = True) -> NodeProc:
        node = self.nodes[name]
        node.log = node.home.path / "node.log"
        log = open(node.log, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        node.proc = subprocess.Popen(
            self._cmd(node),
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        if wait_addr:
            self.await_addr(name)
        return node

    def await_addr(self, name: str) -> None:
        """Read the listen address a started node prints first (it is up once it has)."""
        node = self.nodes[name]
        assert node.proc is not None and node.proc.stdout is not None
        line = node.proc.stdout.readline().decode().strip()
        if not line.startswith("/ip4/"):
            raise RuntimeError(f"{name} did not start: {line!r}; see {node.log}")
        node.addrs = [line]

    def start_all(self) -> None:
        """The bootstrap first, then validators and trainers side by side (each imports torch:
        starting them one after another dominated a small testnet's start), then the
        aggregator once they are all up."""
        boot = self.start_node("boot")
        self.bootstrap_addr = boot.addrs[0]
        others = [n for n in self.nodes if n.startswith(("validator", "trainer"))]
        for name in others:
            self.start_node(name, wait_addr=False)
        for name in others:
            self.await_addr(name)
        self.start_node("aggregator")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(timeout=60)

    def address_of(self, name: str) -> str:
        """The chain address node ``name`` joined with."""
        return self._key_of(list(self.nodes).index(name)).address

    def chain_down(self) -> None:
        """Stop anvil (SIGTERM: with ``chain_state`` it writes its state on the way out)."""
        self.chain.stop()

    def chain_up(self) -> None:
        """Start anvil again on the same port (from its saved state with ``chain_state``)."""
        self.chain.start()

    def wait_log(self, name: str, pattern: str, limit_s: float) -> None:
        """Wait until node ``name``'s log has a line matching ``pattern`` (the nodes' own
        record of reaching a phase; status files lag by up to a second)."""
        log = self.nodes[name].home.path / "node.log"
        regex = re.compile(pattern)
        wait_for(
            lambda: log.exists() and regex.search(log.read_text(errors="replace")) is not None,
            limit_s,
            f"{name} to log {pattern!r}",
        )

    def alive(self, name: str) -> bool:
        proc = self.nodes[name].proc
        return proc is not None and proc.poll() is None

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
            if node.proc.stdout:
                node.proc.stdout.close()
        self.chain.stop()

    # -- observation ---------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(
                (self.nodes[name].home.path / "status.json").read_text()
            )
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def recorded_rounds(self) -> list[int]:
        assert self.client is not None
        subnet = SubnetId(self.spec.subnet).key
        latest = self.client.latest_round(subnet)
        return [r for r in range(1, latest + 1) if self.client.round_recorded(subnet, r)]

    # -- rewards (the subnet owner's job) -----------------------------------------------
    REWARD_PER_DELTA: int = 10**9  # wei per reputation-delta unit (1e-6) of a round

    def trainer_accounts(self) -> dict[bytes, tuple[str, ChainKey]]:
        """sha256(peer id) -> (node name, chain key) of every trainer."""
        out = {}
        for i, name in enumerate(self.nodes):
            if name.startswith("trainer"):
                peer = self.nodes[name].home.identity_key().peer_id
                out[peer.hashed] = (name, self._key_of(i))
        return out

    def credit_round(self, round: int) -> dict[str, int]:
        """Credit each trainer of a proven round in proportion to its positive reputation delta."""
        from sorap2p.node.audit import record_from_tx, recorded_event

        assert self.client is not None and self.owner is not None
        subnet = SubnetId(self.spec.subnet).key
        ev = recorded_event(self.client, subnet, round)
        if ev is None:
            return {}
        record, _ = record_from_tx(self.client, bytes(ev["transactionHash"]))
        accounts = self.trainer_accounts()
        credits = []
        out: dict[str, int] = {}
        for trainer, delta in zip(record.trainers, record.deltas, strict=True):
            if delta > 0 and trainer in accounts:
                name, key = accounts[trainer]
                credits.append((key.address, delta * self.REWARD_PER_DELTA))
                out[name] = delta * self.REWARD_PER_DELTA
        if credits:
            self.client.credit_round(self.owner, subnet, round, credits)
        return out

    def claim_all(self) -> dict[str, int]:
        """Every trainer claims its credited rewards; returns what each received (wei)."""
        assert self.client is not None
        subnet = SubnetId(self.spec.subnet).key
        out = {}
        for name, key in self.trainer_accounts().values():
            amount = self.client.claimable(subnet, key.address)
            if amount:
                self.client.claim(key, subnet)
            out[name] = amount
        return out

    def __enter__(self) -> Cluster:
        try:
            self.start_chain()
            self.make_homes()
            self.create_subnet()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
