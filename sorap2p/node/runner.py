"""`run_node`: the top of a node process. It owns the nursery, the services and the signals,
and starts the role loop."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

import trio

from sorap2p.chain.proof import ChainKey
from sorap2p.core.config import Config
from sorap2p.core.ids import Role
from sorap2p.node.driver import wall_clock_ms
from sorap2p.node.home import Home
from sorap2p.node.http import serve_status
from sorap2p.node.logs import bind, setup_logging
from sorap2p.node.proofs import GossipOnlyProofs, ProofBackend
from sorap2p.node.services import Services, open_services
from sorap2p.node.status import STATUS_FILE, snapshot, write_status, write_status_forever

_log = logging.getLogger(__name__)


def _print_ready(addrs: list[str]) -> None:
    for addr in addrs:
        print(addr, flush=True)
    sys.stdout.flush()


async def run_role(services: Services, proofs: ProofBackend) -> None:
    """Run the role's loop (returns when the role is done, e.g. after ``round.rounds``)."""
    role = services.role
    if role is Role.TRAINER:
        from sorap2p.node.roles.trainer import run_trainer

        await run_trainer(services)
    elif role is Role.AGGREGATOR:
        from sorap2p.node.roles.aggregator import run_aggregator

        await run_aggregator(services, proofs)
    elif role is Role.VALIDATOR:
        from sorap2p.node.roles.validator import run_validator

        await run_validator(services, proofs)
    else:
        await trio.sleep_forever()  # a bootstrap only serves the DHT, gossip and blocks


async def run_node(
    config: Config,
    home: Home,
    ready: Callable[[list[str]], None] = _print_ready,
    *,
    stop: trio.Event | None = None,
    clock: Callable[[], int] = wall_clock_ms,
) -> int:
    """Run until SIGINT/SIGTERM, ``stop``, or the role's end; return the exit code."""
    setup_logging(config.node.log_level, config.node.log_json)
    identity = home.identity_key()
    log = bind(_log, role=config.node.role, subnet=config.node.subnet, peer=str(identity.peer_id))
    stop = stop if stop is not None else trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_services(config, home, clock=clock) as services:
            proofs: ProofBackend = GossipOnlyProofs(ChainKey(home.chain_key()))
            if config.chain.url:
                from sorap2p.node.chainlink import attach_chain

                proofs = await attach_chain(services)
            addrs = services.host.listen_addrs()
            log.info("listening on %s", ", ".join(addrs))
            ready(addrs)
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for signum in signals:
                        log.info("received %s, shutting down", signal.Signals(signum).name)
                        stop.set()
                        return

                async def role() -> None:
                    await run_role(services, proofs)
                    log.info("role finished")
                    stop.set()

                nursery.start_soon(watch_signals)
                nursery.start_soon(write_status_forever, services)
                if config.status.listen:
                    nursery.start_soon(serve_status, services)
                nursery.start_soon(role)
                await stop.wait()
                nursery.cancel_scope.cancel()
            write_status(home.path / STATUS_FILE, snapshot(services))
    log.info("stopped")
    return 0
