"""A node's home directory: configuration, keys and data.

Layout::

    HOME/config.toml          the node's configuration (see core/config.py)
    HOME/node.key             Ed25519 identity seed, hex (mode 0600): the libp2p key
    HOME/chain.key            secp256k1 chain key, hex (mode 0600), or instead
    HOME/chain.keystore.json  the same key in an encrypted Ethereum keystore (v3)
    HOME/blockstore/          kubo-compatible flatfs blockstore
    HOME/params/              parameter store index
    HOME/peers.json           cached peer addresses (discovery)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eth_account import Account

from sorap2p.core.config import Config, load_config, to_toml, with_overrides
from sorap2p.core.crypto import IdentityKey
from sorap2p.core.errors import ConfigError
from sorap2p.core.ids import PeerId

CONFIG_FILE: Final = "config.toml"
NODE_KEY_FILE: Final = "node.key"
CHAIN_KEY_FILE: Final = "chain.key"
KEYSTORE_FILE: Final = "chain.keystore.json"
PASSWORD_ENV: Final = "SORAP2P_KEYSTORE_PASSWORD"


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    peer_id: PeerId
    eth_address: str

    def as_json(self) -> dict[str, str]:
        return {"peer_id": str(self.peer_id), "eth_address": self.eth_address}


@dataclass(frozen=True, slots=True)
class Home:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def blockstore_path(self) -> Path:
        return self.path / "blockstore"

    @property
    def params_path(self) -> Path:
        return self.path / "params"

    @property
    def peers_path(self) -> Path:
        return self.path / "peers.json"

    @property
    def listen_path(self) -> Path:
        return self.path / "listen.json"

    def exists(self) -> bool:
        return (self.path / NODE_KEY_FILE).is_file()

    # -- a stable address across restarts ----------------------------------------------
    def stable_listen(self, listen: Sequence[str]) -> list[str]:
        """``listen`` with each ``.../tcp/0`` replaced by the port this node got last time
        (``listen.json``) when that port is free: peers, bootstrap lists and peer caches
        that know our address still reach us after a restart."""
        try:
            last = json.loads(self.listen_path.read_text())
        except (OSError, ValueError):
            last = {}
        out = []
        for addr in listen:
            port = last.get(addr) if isinstance(last, dict) else None
            parts = addr.split("/")
            if addr.endswith("/tcp/0") and isinstance(port, int) and _port_free(parts[2], port):
                out.append(addr[: -len("0")] + str(port))
            else:
                out.append(addr)
        return out

    def remember_listen(self, listen: Sequence[str], actual: Sequence[str]) -> None:
        """Record which port each ``.../tcp/0`` entry of ``listen`` got (``actual`` are the
        host's full listen multiaddrs)."""
        ports = {}
        for addr in listen:
            if not addr.endswith("/tcp/0"):
                continue
            prefix = addr[: -len("0")]
            for full in actual:
                if full.startswith(prefix):
                    ports[addr] = int(full[len(prefix) :].split("/")[0])
                    break
        if ports:
            write_atomic(self.listen_path, json.dumps(ports))

    # -- creation --------------------------------------------------------------------
    def init(
        self,
        config: Config,
        *,
        keystore_password: str | None = None,
        force: bool = False,
        node_seed: bytes | None = None,
        chain_key: bytes | None = None,
    ) -> NodeIdentity:
        """Create the home: config, identity key and chain key (files 0600)."""
        if self.exists() and not force:
            raise ConfigError(f"{self.path} already holds a node key (use --force to replace)")
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        seed = node_seed if node_seed is not None else secrets.token_bytes(32)
        eth_key = chain_key if chain_key is not None else secrets.token_bytes(32)
        _write_private(self.path / NODE_KEY_FILE, seed.hex() + "\n")
        for stale in (CHAIN_KEY_FILE, KEYSTORE_FILE):
            (self.path / stale).unlink(missing_ok=True)
        if keystore_password is not None:
            keystore = Account.encrypt(eth_key, keystore_password)
            _write_private(self.path / KEYSTORE_FILE, json.dumps(keystore, indent=2) + "\n")
            config = with_overrides(config, {"chain.keystore": True})
        else:
            _write_private(self.path / CHAIN_KEY_FILE, eth_key.hex() + "\n")
            config = with_overrides(config, {"chain.keystore": False})
        _write_private(self.config_path, to_toml(config))
        return NodeIdentity(IdentityKey(seed).peer_id, Account.from_key(eth_key).address)

    # -- loading ---------------------------------------------------------------------
    def load_config(
        self, env: Mapping[str, str] | None = None, overrides: tuple[str, ...] = ()
    ) -> Config:
        text = self.config_path.read_text() if self.config_path.is_file() else ""
        return load_config(text, env if env is not None else os.environ, overrides)

    def identity_key(self) -> IdentityKey:
        path = self.path / NODE_KEY_FILE
        try:
            seed = bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            raise ConfigError(
                f"no node key at {path}: run `sorap2p init --home {self.path}`"
            ) from None
        except ValueError:
            raise ConfigError(f"{path}: expected 64 hex characters") from None
        if len(seed) != 32:
            raise ConfigError(f"{path}: expected a 32-byte Ed25519 seed")
        return IdentityKey(seed)

    def chain_key(self, password: str | None = None) -> bytes:
        """The secp256k1 private key (keystore needs a password or $SORAP2P_KEYSTORE_PASSWORD)."""
        plain = self.path / CHAIN_KEY_FILE
        if plain.is_file():
            try:
                key = bytes.fromhex(plain.read_text().strip())
            except ValueError:
                raise ConfigError(f"{plain}: expected 64 hex characters") from None
            if len(key) != 32:
                raise ConfigError(f"{plain}: expected a 32-byte secp256k1 key")
            return key
        store = self.path / KEYSTORE_FILE
        if not store.is_file():
            raise ConfigError(f"no chain key in {self.path}")
        password = password if password is not None else os.environ.get(PASSWORD_ENV)
        if password is None:
            raise ConfigError(f"{store} is encrypted: set {PASSWORD_ENV} or pass a password file")
        try:
            data: Any = json.loads(store.read_text())
            return bytes(Account.decrypt(data, password))
        except ValueError as exc:
            raise ConfigError(f"{store}: cannot decrypt ({exc})") from None

    def identity(self, password: str | None = None) -> NodeIdentity:
        return NodeIdentity(
            self.identity_key().peer_id, Account.from_key(self.chain_key(password)).address
        )


def _port_free(host: str, port: int) -> bool:
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError:
        return False
    return True


def write_atomic(path: Path, text: str, *, private: bool = False, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` atomically (temp file + rename); ``private`` makes it
    mode 0600 from the start, ``durable`` fsyncs it before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    if private:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_private(path: Path, text: str) -> None:
    """Key material and config: owner-only and durable."""
    write_atomic(path, text, private=True, durable=True)
