"""`run_node`: the top of a node process. It owns the nursery, the host and the signals."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

import trio

from sorap2p.core.config import Config
from sorap2p.net.host import HostConfig, open_host
from sorap2p.node.home import Home
from sorap2p.node.logs import bind, setup_logging

_log = logging.getLogger(__name__)


def _print_ready(addrs: list[str]) -> None:
    for addr in addrs:
        print(addr, flush=True)
    sys.stdout.flush()


async def run_node(
    config: Config,
    home: Home,
    ready: Callable[[list[str]], None] = _print_ready,
    *,
    stop: trio.Event | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); return the process exit code."""
    setup_logging(config.node.log_level, config.node.log_json)
    identity = home.identity_key()
    log = bind(_log, role=config.node.role, subnet=config.node.subnet, peer=str(identity.peer_id))
    host_cfg = HostConfig(max_connections=config.network.max_connections)
    stop = stop or trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_host(identity, config.network.listen, config=host_cfg) as host:
            addrs = host.listen_addrs()
            log.info("listening on %s", ", ".join(addrs))
            ready(addrs)
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for signum in signals:
                        log.info("received %s, shutting down", signal.Signals(signum).name)
                        stop.set()
                        return

                nursery.start_soon(watch_signals)
                await stop.wait()
                nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0
