"""Local chains: an anvil process the project starts itself, or an in-process eth-tester.

anvil comes from npm (``npm ci --ignore-scripts --prefix contracts`` installs
``@foundry-rs/anvil-linux-amd64``); `find_anvil` looks for it under ``contracts/node_modules``,
then ``$SORAP2P_ANVIL``, then ``PATH``. The binary is started directly (never via npx, whose
stop leaves anvil running) on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Final

import trio
from eth_account import Account

from sorap2p.chain.client import ChainClient, ChainConfig
from sorap2p.chain.proof import ChainKey
from sorap2p.core.errors import ChainError, ConfigError

ANVIL_MNEMONIC: Final = "test test test test test test test test test test test junk"
ANVIL_CHAIN_ID: Final = 31337
_NPM_BIN: Final = Path("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")


def find_anvil() -> Path | None:
    env = os.environ.get("SORAP2P_ANVIL")
    if env:
        return Path(env) if Path(env).is_file() else None
    roots = [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]
    for root in roots:
        candidate = root / _NPM_BIN
        if candidate.is_file():
            return candidate
    found = shutil.which("anvil")
    return Path(found) if found else None


@functools.cache
def mnemonic_keys(count: int, mnemonic: str = ANVIL_MNEMONIC) -> tuple[ChainKey, ...]:
    """The funded accounts anvil derives from its mnemonic (BIP-44 m/44'/60'/0'/0/i)."""
    Account.enable_unaudited_hdwallet_features()
    return tuple(
        ChainKey(bytes(Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}").key))
        for i in range(count)
    )


_LISTENING: Final = re.compile(r"Listening on 127\.0\.0\.1:(\d+)")


class Devchain:
    """An anvil process on 127.0.0.1: ``with Devchain() as dc`` or ``async with Devchain()``."""

    def __init__(
        self,
        *,
        port: int | None = None,
        accounts: int = 10,
        block_time: float | None = None,
        state: Path | None = None,
        binary: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.port = port or 0  # 0: anvil binds a free port; start() learns which
        self._log: Path | None = None
        self.accounts = accounts
        self.block_time = block_time
        self.state = state
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> tuple[ChainKey, ...]:
        return mnemonic_keys(self.accounts)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None:
            raise ChainError("devchain already started")
        binary = self.binary or find_anvil()
        if binary is None:
            raise ConfigError(
                "anvil not found: run `npm ci --ignore-scripts --prefix contracts` "
                "or set SORAP2P_ANVIL"
            )
        cmd = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--accounts",
            str(self.accounts),
            "--chain-id",
            str(ANVIL_CHAIN_ID),
        ]
        if self.block_time is not None:
            cmd += ["--block-time", str(self.block_time)]
        if self.state is not None:
            cmd += ["--state", str(self.state)]
        # anvil's own "Listening on 127.0.0.1:PORT" line is the proof that *this* process
        # bound the port (another anvil may answer on a port we asked for and lost)
        fd, name = tempfile.mkstemp(prefix="sorap2p-anvil-", suffix=".log")
        self._log = Path(name)
        with os.fdopen(fd, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            port = self._listening_port()
            if port is not None and (not self.port or port == self.port) and self._answers(port):
                self.port = port
                return
            if self._proc.poll() is not None:
                err = self._log.read_text(errors="replace")[-500:]
                self._log.unlink(missing_ok=True)
                self._proc, self._log = None, None
                raise ChainError(f"anvil exited at startup: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ChainError(f"anvil did not start listening on 127.0.0.1:{self.port or 'any'}")
            time.sleep(0.02)

    def _listening_port(self) -> int | None:
        assert self._log is not None
        match = _LISTENING.search(self._log.read_text(errors="replace"))
        return int(match.group(1)) if match else None

    def _answers(self, port: int) -> bool:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        url = f"http://127.0.0.1:{port}"
        req = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        """SIGTERM (anvil writes ``--state`` on the way out), then wait."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def client(self, config: ChainConfig | None = None) -> ChainClient:
        return ChainClient.connect(self.url, None, config)

    def __enter__(self) -> Devchain:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Devchain:
        await trio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.stop)


def in_process_chain(config: ChainConfig | None = None) -> tuple[ChainClient, tuple[ChainKey, ...]]:
    """A fresh in-process eth-tester (py-evm) chain and its 10 funded keys (needs the
    ``eth-tester[py-evm]`` package). Its chain id is not 31337."""
    try:
        from eth_tester import EthereumTester
        from web3 import EthereumTesterProvider, Web3
    except ImportError as exc:
        raise ConfigError(f"the in-process chain needs eth-tester[py-evm]: {exc}") from None
    tester = EthereumTester()
    keys = tuple(ChainKey(k.to_bytes()) for k in tester.backend.account_keys)
    return ChainClient(Web3(EthereumTesterProvider(tester)), None, config), keys
