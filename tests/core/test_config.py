from __future__ import annotations

import pytest

from sorap2p.core.config import Config, load_config, reference, to_toml, with_overrides
from sorap2p.core.errors import ConfigError
from sorap2p.core.ids import Role


def test_defaults_are_valid_and_round_trip_through_toml() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert load_config(to_toml(cfg)) == cfg


def test_precedence_toml_env_cli() -> None:
    toml = '[learn]\nlr = 0.2\nepochs = 3\n[network]\nlisten = ["/ip4/127.0.0.1/tcp/1"]\n'
    env = {"SORAP2P_LEARN_LR": "0.3", "SORAP2P_NODE_ROLE": "validator", "OTHER": "x"}
    cfg = load_config(toml, env, ["learn.lr=0.4", "network.bootstrap=/a,/b"])
    assert cfg.learn.lr == 0.4  # CLI beats env beats TOML
    assert cfg.learn.epochs == 3
    assert cfg.role is Role.VALIDATOR
    assert cfg.network.listen == ("/ip4/127.0.0.1/tcp/1",)
    assert cfg.network.bootstrap == ("/a", "/b")
    assert load_config("", {"SORAP2P_LEARN_LR": "0.3"}).learn.lr == 0.3


@pytest.mark.parametrize(
    ("toml", "env", "over", "match"),
    [
        ('[learn]\nlr = "fast"\n', {}, [], r"learn\.lr: expected float"),
        ("[learn]\nspeed = 1\n", {}, [], r"\[learn\]: unknown keys \['speed'\]"),
        ("[moon]\n", {}, [], "unknown keys"),
        ("learn = 3\n", {}, [], "expected a table"),
        ("not toml [", {}, [], "not valid TOML"),
        ("", {"SORAP2P_LEARN_EPOCHS": "two"}, [], r"learn\.epochs .*environment.*expected int"),
        ("", {}, ["store.fsync=maybe"], r"store\.fsync.*expected a boolean"),
        ("", {}, ["nokey"], "expected section.key=value"),
        ("", {}, ["learn.nope=1"], r"unknown config key learn\.nope"),
        ("", {}, ["node.role=king"], r"node\.role: unknown role"),
        ("", {}, ["node.subnet=Bad"], r"node\.subnet"),
        ("", {}, ["network.provider_refresh_s=500"], "provider_refresh_s must be below"),
        ("", {}, ["store.profile=v9"], r"store\.profile"),
        ('[network]\nlisten = "/ip4"\n', {}, [], r"network\.listen: expected a list"),
        ("[node]\nshard = true\n", {}, [], r"node\.shard: expected int, got a boolean"),
    ],
)
def test_errors_name_the_key(toml: str, env: dict[str, str], over: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(toml, env, over)


def test_with_overrides_and_reference() -> None:
    cfg = with_overrides(Config(), {"round.rounds": 10, "learn.lr": 1})
    assert cfg.round.rounds == 10 and cfg.learn.lr == 1.0
    with pytest.raises(ConfigError, match="expected int"):
        with_overrides(Config(), {"round.rounds": "ten"})
    keys = [row[0] for row in reference()]
    assert "network.listen" in keys and "learn.lr" in keys
    assert all(row[3] for row in reference()), "every key is documented"


def test_configuration_reference_is_current() -> None:
    from sorap2p.testing.config_doc import DOC, render

    assert DOC.read_text() == render(), "run: python -m sorap2p.testing.config_doc --write"


def test_strategy_params_and_root_size() -> None:
    cfg = load_config('[round]\nstrategy_params = ["trim_ratio=0.2", " clip = 2"]\n')
    assert cfg.round.params() == {"trim_ratio": 0.2, "clip": 2.0}
    for bad in ["trim_ratio", "=1", "x=nan", "x=abc"]:
        with pytest.raises(ConfigError, match="strategy_params"):
            load_config("", {}, [f"round.strategy_params={bad}"])
    with pytest.raises(ConfigError, match="root_size"):
        load_config("", {}, ["round.root_size=0"])
