"""One service per process, as a hospital deploys Wardlink: `wardlink serve gateway|ingest|alerts|facilities|api`,
and `wardlink simulate` to play a scenario's devices for them.

Every service here needs an external broker (``--broker`` or ``broker.url``): the embedded one lives
only inside ``wardlink run``. Services that share the store across processes need a store that allows
it: SQLite (``store.engine = "sqlite"``), since DuckDB lets only one process open its file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from alerts.service import AlertService
from api.view import LiveView
from devices import bus, gcwatch
from devices.bus import BrokerAddress
from facilities.service import FacilitiesService, site_map_for
from gateway.service import Gateway
from ingest.service import Ingest
from simulators.scenario import load_scenario, start
from storage.base import TimeSeriesStore
from wardlink.config import Config, ConfigError
from wardlink.runner import api_server, build_api, listeners, open_relational, open_store

log = logging.getLogger(__name__)
SERVICES = ("gateway", "ingest", "alerts", "facilities", "api")


def _broker(config: Config) -> BrokerAddress:
    if not config.broker.url:
        raise ConfigError("serve: set the broker (--broker mqtt://HOST:PORT or broker.url); the embedded broker "
                          "runs only inside `wardlink run`")
    return config.broker.address()


async def _until_signal(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await work(stop)


async def _run_until(stop: asyncio.Event, *coroutines: Awaitable[Any]) -> None:
    """Run service coroutines until ``stop``, then cancel them."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    await stop.wait()
    await bus.cancel_all(tasks, what="the service")


async def serve(config: Config, service: str, gateway_id: str | None = None, instance: str = "ingest-1") -> None:
    """Run one service until SIGINT or SIGTERM (``instance`` names an ingest worker; its spool is its own)."""
    address = _broker(config)
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    site, _ = listeners(config.site, move_busy=False)

    async def work(stop: asyncio.Event) -> None:
        store: TimeSeriesStore | None = None
        try:
            if service == "gateway":
                ids = [g.id for g in site.gateways]
                if gateway_id not in ids:
                    raise ConfigError(f"serve gateway: --gateway must be one of {ids}")
                gateway = Gateway(site, gateway_id, data / f"outbox-{gateway_id}.db", address, config.gateway)
                await _run_until(stop, gateway.run())
            elif service == "ingest":
                store = open_store(config)
                ingest = Ingest(site, store, address, instance=instance, settings=config.ingest,
                                spool_path=data / f"spool-{instance}.db")
                gcwatch.settle()  # the store's key index and latest cache are loaded
                await _run_until(stop, ingest.run())
            elif service == "alerts":
                relational = await asyncio.to_thread(open_relational, config, site)
                try:
                    alerts = AlertService(site, relational, address, config.alerts)
                    gcwatch.settle()  # its rule indexes are built: out of the collector's way (devices/gcwatch.py)
                    await _run_until(stop, alerts.run())
                finally:
                    relational.close()
            elif service == "facilities":
                store = open_store(config, reader=True)  # the location history; ingest writes the rest
                relational = await asyncio.to_thread(open_relational, config, site)
                try:
                    await _run_until(stop, FacilitiesService(site, relational, address, config.facilities,
                                                             store=store).run())
                finally:
                    relational.close()
            elif service == "api":
                store = open_store(config, reader=True)
                view = LiveView(site.id, address)
                relational = await asyncio.to_thread(open_relational, config, site)
                site_map = site_map_for(site, config.facilities.site_map)
                server = api_server(config, build_api(config, site, store, view, relational, site_map))
                tasks = [asyncio.ensure_future(c) for c in (server.serve(), stop.wait(), view.run())]
                await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)  # stopped, or the API failed
                server.should_exit = True
                await asyncio.gather(tasks[0], return_exceptions=True)
                await bus.cancel_all(tasks[1:], what="the API's bus view")
                relational.close()
            else:
                raise ConfigError(f"serve: unknown service {service!r}; choose one of {', '.join(SERVICES)}")
        finally:
            if store is not None:
                store.close()

    gcwatch.WATCH.install()
    log.info("serving %s (broker %s, data in %s)", service, address.url, data.resolve())
    await _until_signal(work)


async def simulate(config: Config, write_config: Path | None) -> None:
    """Play the configured scenario's devices until SIGINT; write where each twin can be reached."""
    address = _broker(config)
    site, targets = listeners(config.site, move_busy=False)

    async def work(stop: asyncio.Event) -> None:
        running = await start(load_scenario(config.simulation.scenario), address, targets)
        try:
            devices = [msgspec.structs.replace(spec, connection={**spec.connection, **running.connections[spec.id]})
                       if spec.id in running.connections else spec for spec in site.devices]
            fragment = {"site": msgspec.to_builtins(msgspec.structs.replace(site, devices=devices))}
            text = json.dumps(fragment, indent=1)
            if write_config is not None:
                await asyncio.to_thread(write_config.write_text, text, encoding="utf-8")
                log.info("simulated devices: their connections are in %s (pass it with --config)", write_config)
            else:
                log.info("simulated devices' connections: %s", text)
            await stop.wait()
        finally:
            await running.stop()

    await _until_signal(work)
