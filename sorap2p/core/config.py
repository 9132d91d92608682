"""Node configuration: a tree of frozen dataclasses with defaults, loaded from TOML.

Precedence, lowest first: dataclass defaults < ``config.toml`` < ``SORAP2P_<SECTION>_<KEY>``
environment variables < command-line overrides (``section.key=value``). Every value is
checked against its field's type; a wrong value raises `ConfigError` naming the key and what
was expected. `Config.validate()` rejects contradictions between fields.

This module is pure: callers pass the TOML text and the environment mapping.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from sorap2p.core.errors import ConfigError, RemoteProtocolError
from sorap2p.core.ids import PeerId, Role, SubnetId

ENV_PREFIX: Final = "SORAP2P_"
BEHAVIOURS: Final = frozenset(
    {
        "honest",
        "sign_flip",
        "scale",
        "noise",
        "free_rider",
        "label_flip",
        "wrong_model",
        "drop_update",
        "fake_update",
        "fake_rankings",
        "approve_all",
    }
)
T = TypeVar("T")


def doc(text: str) -> dict[str, str]:
    """Field metadata holding the one-line description used by the config reference."""
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class NodeSection:
    role: str = field(
        default="trainer", metadata=doc("trainer, aggregator, validator or bootstrap")
    )
    subnet: str = field(default="digits", metadata=doc("subnet id to join ([a-z0-9-], 1-32)"))
    log_level: str = field(default="info", metadata=doc("debug, info, warning or error"))
    log_json: bool = field(default=False, metadata=doc("emit logs as JSON lines"))
    data: str = field(default="", metadata=doc("private data loader, 'pkg.module:loader'"))
    behaviour: str = field(
        default="honest",
        metadata=doc(
            "adversarial behaviour for tests and demos: honest; trainers: sign_flip, scale, "
            "noise, free_rider, label_flip; aggregators: wrong_model, drop_update, fake_update, "
            "fake_rankings; validators: approve_all"
        ),
    )
    shard: int = field(default=0, metadata=doc("which shard of the built-in demo data to use"))
    shards: int = field(default=1, metadata=doc("how many shards the demo data is cut into"))
    trace_gossip: bool = field(
        default=False,
        metadata=doc("debug: append every gossip message sent or received to gossip.trace"),
    )


@dataclass(frozen=True, slots=True)
class NetworkSection:
    listen: tuple[str, ...] = field(
        default=("/ip4/127.0.0.1/tcp/0",), metadata=doc("multiaddrs to listen on")
    )
    bootstrap: tuple[str, ...] = field(default=(), metadata=doc("bootstrap peer multiaddrs"))
    max_connections: int = field(default=64, metadata=doc("connection limit"))
    heartbeat_s: float = field(default=1.0, metadata=doc("GossipSub heartbeat interval"))
    provider_ttl_s: float = field(default=120.0, metadata=doc("DHT provider record lifetime"))
    provider_refresh_s: float = field(default=30.0, metadata=doc("re-announce interval"))
    request_timeout_s: float = field(default=10.0, metadata=doc("direct request timeout"))


@dataclass(frozen=True, slots=True)
class StoreSection:
    fsync: bool = field(default=False, metadata=doc("fsync every block write"))
    chunk_size: int = field(default=1 << 20, metadata=doc("model DAG chunk size in bytes"))
    profile: str = field(default="v1-2025", metadata=doc("UnixFS profile: v1-2025 or v0-256k"))


@dataclass(frozen=True, slots=True)
class ChainSection:
    url: str = field(default="", metadata=doc("JSON-RPC URL; empty: no chain"))
    deployment: str = field(default="", metadata=doc("deployment file written by chain deploy"))
    confirmations: int = field(default=1, metadata=doc("blocks before an event is final"))
    keystore: bool = field(default=False, metadata=doc("chain key is an encrypted keystore"))
    gas_limit: int = field(default=3_000_000, metadata=doc("gas limit per transaction"))


@dataclass(frozen=True, slots=True)
class LearnSection:
    model: str = field(default="digits_cnn", metadata=doc("model registry name or pkg.mod:fn"))
    dataset: str = field(default="digits", metadata=doc("built-in demo dataset"))
    epochs: int = field(default=3, metadata=doc("local epochs per round"))
    batch_size: int = field(default=16, metadata=doc("local batch size"))
    lr: float = field(default=0.1, metadata=doc("local learning rate"))
    momentum: float = field(default=0.5, metadata=doc("local SGD momentum"))
    prox_mu: float = field(default=0.0, metadata=doc("FedProx proximal term (0: FedAvg)"))
    num_threads: int = field(default=1, metadata=doc("torch intra-op threads"))
    seed: int = field(default=0, metadata=doc("seed for data partitioning and init"))
    dirichlet_alpha: float = field(default=0.5, metadata=doc("non-IID skew of demo shards"))


@dataclass(frozen=True, slots=True)
class RoundSection:
    duration_s: float = field(default=30.0, metadata=doc("time trainers get per round"))
    min_participants: int = field(default=1, metadata=doc("updates needed to aggregate"))
    strategy: str = field(default="fedavg", metadata=doc("aggregation strategy"))
    strategy_params: tuple[str, ...] = field(
        default=(), metadata=doc('strategy parameters as "name=number" (e.g. "trim_ratio=0.2")')
    )
    root_size: int = field(
        default=100,
        metadata=doc("root dataset samples of strategies with a reference delta (fltrust)"),
    )
    rounds: int = field(default=0, metadata=doc("the last round number to run (0: forever)"))
    expected_participants: int = field(
        default=0, metadata=doc("aggregate as soon as this many updates are in (0: at deadline)")
    )
    fetch_grace_s: float = field(default=10.0, metadata=doc("wait for in-flight fetches"))
    proof_timeout_s: float = field(default=120.0, metadata=doc("wait for the quorum proof"))
    pause_s: float = field(default=1.0, metadata=doc("pause between rounds"))
    start_peers: int = field(
        default=0, metadata=doc("peers on the rounds topic before the first round opens")
    )
    start_timeout_s: float = field(default=120.0, metadata=doc("longest wait for start_peers"))
    validators: tuple[str, ...] = field(
        default=(), metadata=doc("validator peer ids when no chain is configured")
    )
    quorum: int = field(default=1, metadata=doc("votes needed when no chain is configured"))
    backup_s: float = field(default=15.0, metadata=doc("backup submitter delay per position"))
    reannounce_s: float = field(
        default=5.0,
        metadata=doc(
            "RoundOpen and trainers' updates are re-published this often until the deadline"
        ),
    )

    def params(self) -> dict[str, float]:
        """``strategy_params`` as a map; a malformed entry raises `ConfigError`."""
        out: dict[str, float] = {}
        for item in self.strategy_params:
            name, sep, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not sep or not name.strip() or not math.isfinite(number):
                raise ConfigError(f'round.strategy_params: expected "name=number", got {item!r}')
            out[name.strip()] = number
        return out


STATUS_HOSTS: Final = frozenset({"127.0.0.1", "localhost"})


@dataclass(frozen=True, slots=True)
class StatusSection:
    listen: str = field(
        default="",
        metadata=doc("status API 127.0.0.1:PORT or localhost:PORT (0: any free); empty: off"),
    )

    def address(self) -> tuple[str, int] | None:
        """``("127.0.0.1", port)`` for the status API, None when it is off; a host other than
        the loopback names raises `ConfigError` (the API is never exposed beyond localhost)."""
        text = self.listen.strip()
        if not text:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or host not in STATUS_HOSTS:
            raise ConfigError(
                f"status.listen: expected 127.0.0.1:PORT or localhost:PORT, got {text!r}"
            )
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"status.listen: port must be 0..65535, got {port!r}")
        return "127.0.0.1", int(port)


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    store: StoreSection = field(default_factory=StoreSection)
    chain: ChainSection = field(default_factory=ChainSection)
    learn: LearnSection = field(default_factory=LearnSection)
    round: RoundSection = field(default_factory=RoundSection)
    status: StatusSection = field(default_factory=StatusSection)

    @property
    def role(self) -> Role:
        return Role.parse(self.node.role)

    @property
    def subnet(self) -> SubnetId:
        return SubnetId(self.node.subnet)

    def validate(self) -> Config:
        """Reject contradictions between fields; return self for chaining."""
        try:
            Role.parse(self.node.role)
        except RemoteProtocolError as exc:
            raise ConfigError(f"node.role: {exc}") from None
        try:
            SubnetId(self.node.subnet)
        except RemoteProtocolError as exc:
            raise ConfigError(f"node.subnet: {exc}") from None
        if self.node.log_level not in {"debug", "info", "warning", "error"}:
            raise ConfigError("node.log_level: expected debug, info, warning or error")
        if self.node.behaviour not in BEHAVIOURS:
            raise ConfigError(f"node.behaviour: expected one of {', '.join(sorted(BEHAVIOURS))}")
        if not 0 <= self.node.shard < max(self.node.shards, 1):
            raise ConfigError("node.shard: expected 0 <= shard < node.shards")
        if self.network.max_connections < 1:
            raise ConfigError("network.max_connections: expected a positive integer")
        if not self.network.listen:
            raise ConfigError("network.listen: expected at least one multiaddr")
        if self.network.heartbeat_s <= 0:
            raise ConfigError("network.heartbeat_s: expected a positive number")
        if self.network.provider_refresh_s >= self.network.provider_ttl_s:
            raise ConfigError("network.provider_refresh_s must be below network.provider_ttl_s")
        if self.store.profile not in {"v1-2025", "v0-256k"}:
            raise ConfigError("store.profile: expected v1-2025 or v0-256k")
        if self.store.chunk_size < 1024 or self.store.chunk_size > 4 << 20:
            raise ConfigError("store.chunk_size: expected 1 KiB .. 4 MiB")
        if not 0 <= self.learn.momentum < 1:
            raise ConfigError("learn.momentum: expected 0 <= momentum < 1")
        if self.learn.epochs < 1 or self.learn.batch_size < 1 or self.learn.lr <= 0:
            raise ConfigError("learn: epochs and batch_size must be >= 1 and lr > 0")
        if self.learn.num_threads < 1:
            raise ConfigError("learn.num_threads: expected a positive integer")
        if self.round.duration_s <= 0 or self.round.min_participants < 1:
            raise ConfigError("round: duration_s must be > 0 and min_participants >= 1")
        self.round.params()
        if not 1 <= self.round.root_size <= 10_000:
            raise ConfigError("round.root_size: expected 1 .. 10000 samples")
        if self.round.quorum < 1 or self.round.quorum > max(len(self.round.validators), 1):
            raise ConfigError("round.quorum: expected 1 <= quorum <= len(round.validators)")
        for peer in self.round.validators:
            try:
                PeerId.parse(peer)
            except RemoteProtocolError as exc:
                raise ConfigError(f"round.validators: {peer!r} is not a peer id ({exc})") from None
        if self.chain.confirmations < 0:
            raise ConfigError("chain.confirmations: expected a non-negative integer")
        self.status.address()
        return self


# --------------------------------------------------------------------------- loading


def load_config(
    toml_text: str = "",
    env: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """Build a validated `Config` from TOML text, environment and ``key=value`` overrides."""
    try:
        data = tomllib.loads(toml_text) if toml_text else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config.toml is not valid TOML: {exc}") from None
    cfg = _from_mapping(Config, data, "")
    changes: dict[str, dict[str, Any]] = {}
    for key, raw in _env_items(env or {}):
        _set_text(changes, key, raw, source=f"environment {ENV_PREFIX}{key.upper()}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        _set_text(changes, key.strip(), raw, source="command line")
    for section, values in changes.items():
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
        )
    return cfg.validate()


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return ``cfg`` with typed ``{"section.key": value}`` overrides applied and validated."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, fld = _split_key(key)
        changes.setdefault(section, {})[fld] = _coerce(_field_type(section, fld), value, key)
    for section, values in changes.items():
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
        )
    return cfg.validate()


def to_toml(cfg: Config) -> str:
    """Render a config as TOML (every key, with its doc as a comment)."""
    lines: list[str] = []
    for sec in dataclasses.fields(cfg):
        lines.append(f"[{sec.name}]")
        section = getattr(cfg, sec.name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.metadata.get("doc"):
                lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every config key: the generated reference."""
    rows = []
    for sec in dataclasses.fields(Config):
        sec_cls = _section_cls(sec.name)
        hints = typing.get_type_hints(sec_cls)
        default = sec_cls()
        for f in dataclasses.fields(sec_cls):
            rows.append(
                (
                    f"{sec.name}.{f.name}",
                    _type_label(hints[f.name]),
                    _toml_value(getattr(default, f.name)),
                    f.metadata.get("doc", ""),
                )
            )
    return rows


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot render {value!r} as TOML")


def _type_label(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return str(tp.__name__)


def _section_cls(name: str) -> type[Any]:
    hints = typing.get_type_hints(Config)
    if name not in hints:
        sections = ", ".join(f.name for f in dataclasses.fields(Config))
        raise ConfigError(f"unknown config section {name!r}: expected one of {sections}")
    cls: type[Any] = hints[name]
    return cls


def _split_key(key: str) -> tuple[str, str]:
    section, dot, fld = key.partition(".")
    if not dot or not fld:
        raise ConfigError(f"config key {key!r}: expected section.key")
    _field_type(section, fld)
    return section, fld


def _field_type(section: str, fld: str) -> Any:
    cls = _section_cls(section)
    hints = typing.get_type_hints(cls)
    if fld not in hints:
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"unknown config key {section}.{fld}: [{section}] has {keys}")
    return hints[fld]


def _env_items(env: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            yield f"{section}.{key}", value


def _set_text(changes: dict[str, dict[str, Any]], key: str, raw: str, source: str) -> None:
    section, fld = _split_key(key)
    tp = _field_type(section, fld)
    changes.setdefault(section, {})[fld] = _parse_text(tp, raw, f"{key} (from {source})")


def _parse_text(tp: Any, raw: str, where: str) -> Any:
    raw = raw.strip()
    if tp is str:
        return raw
    if typing.get_origin(tp) is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if tp is bool:
        low = raw.lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected a boolean (true/false), got {raw!r}")
    try:
        return tp(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {raw!r}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got a boolean")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{prefix}]" if prefix else "config.toml"
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_mapping(tp, value, key)  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(tp, value, key)
    return cls(**kwargs)
