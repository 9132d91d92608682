"""``sorap2p chain`` against the session anvil."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.chain.deployment import Deployment
from sorap2p.cli import main
from sorap2p.core.errors import ConfigError
from tests.chain.conftest import Env

pytestmark = pytest.mark.chain


def test_deploy_create_subnet_and_status(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deployment.json"
    rpc = ["--rpc", env.devchain.url]
    assert main(["chain", "deploy", *rpc, "--dev-account", "18", "--out", str(out)]) == 0
    deployment = Deployment.load(out)
    assert deployment.chain_id == 31337 and deployment.ledger != env.deployment.ledger
    validators = ",".join(k.address for k in env.keys[1:4])
    args = ["--deployment", str(out), "--subnet", "cli-subnet"]
    create = ["chain", "create-subnet", *rpc, *args, "--dev-account", "18"]
    assert main([*create, "--validators", validators, "--quorum", "2"]) == 0
    capsys.readouterr()
    assert main(["chain", "status", *rpc, *args]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["quorum"] == 2 and status["validatorSetVersion"] == 1
    assert sorted(status["validators"]) == sorted(k.address for k in env.keys[1:4])
    # a member disputes (an unproven) round 1: `chain disputes` lists it, still open
    from sorap2p.chain.client import ChainClient
    from sorap2p.core.ids import Role, SubnetId
    from tests.chain.conftest import peer

    client = ChainClient.connect(env.devchain.url, deployment)
    subnet = SubnetId("cli-subnet").key
    member = env.keys[17]
    client.join(
        member,
        subnet,
        peer(99),
        Role.VALIDATOR,
        client.subnet_params(subnet).min_stake[Role.VALIDATOR.code - 1],
    )
    dispute_id = client.open_dispute(member, subnet, 1, b"wrong aggregate".ljust(32, b"\0"), 10**16)
    capsys.readouterr()
    assert main(["chain", "disputes", *rpc, *args]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "dispute": dispute_id,
            "round": 1,
            "challenger": member.address,
            "bond": 10**16,
            "reason": "wrong aggregate",
            "status": "open",
            "offender": "",
            "slashed": 0,
        }
    ]


def test_deploy_without_a_key_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SORAP2P_CHAIN_KEY", raising=False)
    assert main(["chain", "deploy", "--rpc", "http://127.0.0.1:9", "--out", "x.json"]) == 2
    assert "SORAP2P_CHAIN_KEY" in capsys.readouterr().err


@given(st.text(max_size=300))
def test_deployment_parser_raises_only_config_errors(text: str) -> None:
    with contextlib.suppress(ConfigError):
        Deployment.from_json(text)
