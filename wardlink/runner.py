"""Composition root of ``wardlink run``: wires broker, store, simulators and services in one process.

The services still meet only through the MQTT bus, exactly as they do when deployed apart; this
module is the only place that knows all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn

from alerts.service import AlertService
from api.app import create_app
from api.view import LiveView
from devices.bus import BrokerAddress
from devices.site import DeviceSpec, Site
from gateway.service import Gateway
from ingest.service import Ingest
from simulators.bedside.monitor import SimulatedMonitor
from simulators.bedside.patient import PatientModel
from storage.duckdb import DuckDbStore
from wardlink.broker import EmbeddedBroker
from wardlink.config import Config

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns Ctrl-C and stops everything in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class System:
    """Handles on a running system, for tests and the CLI."""

    config: Config
    site: Site
    broker: BrokerAddress
    api_url: str
    gateways: list[Gateway]
    ingest: Ingest
    alerts: AlertService
    view: LiveView
    monitors: dict[str, SimulatedMonitor] = field(default_factory=dict)


def _simulate(config: Config) -> tuple[Site, dict[str, SimulatedMonitor]]:
    """Start a pty per simulated monitor and point the device's connection at it."""
    site = config.site
    if not config.simulation.enabled:
        return site, {}
    specs = site.device_index()
    monitors: dict[str, SimulatedMonitor] = {}
    for sim in config.simulation.monitors:
        spec = specs[sim.device]
        patient = PatientModel(sim.profile, seed=sim.seed, onset_s=sim.onset_s, period_s=sim.period_s)
        monitors[sim.device] = SimulatedMonitor(serial_number=spec.serial_number or sim.device,
                                                model=spec.model or "WLB-100", firmware="1.4.2",
                                                patient=patient, interval_s=config.simulation.interval_s)
    devices: list[DeviceSpec] = []
    for spec in site.devices:
        monitor = monitors.get(spec.id)
        if monitor is not None:
            spec = msgspec.structs.replace(spec, connection={**spec.connection, "port": monitor.port})
        devices.append(spec)
    return msgspec.structs.replace(site, devices=devices), monitors


async def run_system(config: Config, stop: asyncio.Event,
                     on_ready: Callable[[System], Awaitable[None] | None] | None = None) -> None:
    """Run everything until ``stop`` is set, then shut down in order (API, gateways, services, broker)."""
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    embedded: EmbeddedBroker | None = None
    if config.broker.url:
        address = BrokerAddress.parse(config.broker.url)
        log.info("using external broker %s", address.url)
    else:
        embedded = EmbeddedBroker(config.broker.embedded_host, config.broker.embedded_port)
        address = await embedded.start()
    store = DuckDbStore(data / "timeseries.duckdb")  # chosen by measurement: docs/storage.md
    site, monitors = _simulate(config)
    try:
        gateways = [Gateway(site, g.id, data / f"outbox-{g.id}.db", address, config.gateway) for g in site.gateways]
        ingest = Ingest(site, store, address, settings=config.ingest)
        alerts = AlertService(site, data / "alerts.db", address, config.alerts)
        view = LiveView(site.id, address, embedded_broker=embedded is not None)
        server = _Server(uvicorn.Config(create_app(site, store, view), host=config.api.host, port=config.api.port,
                                        log_level="warning", lifespan="off", ws_max_size=64 * 1024))
        api_url = f"http://{config.api.host}:{config.api.port}"
        system = System(config, site, address, api_url, gateways, ingest, alerts, view, monitors)
        services: list[asyncio.Task[Any]] = []
        sims = [asyncio.create_task(m.run(), name=f"sim {d}") for d, m in monitors.items()]
        services += [asyncio.create_task(ingest.run(), name="ingest"),
                     asyncio.create_task(alerts.run(), name="alerts"),
                     asyncio.create_task(view.run(), name="api view")]
        gateway_tasks = [asyncio.create_task(g.run(), name=f"gateway {g.id}") for g in gateways]
        api = asyncio.create_task(server.serve(), name="api")
        while not server.started and not api.done():  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.05)
        if api.done():
            api.result()  # the API could not start (port taken?): raise why
            raise RuntimeError(f"API server on {api_url} stopped during start-up")
        log.info("Wardlink is running: API %s (docs %s/docs), broker %s%s, data in %s, %d beds simulated",
                 api_url, api_url, address.url, " (embedded)" if embedded else "", data.resolve(), len(monitors))
        if on_ready is not None:
            result = on_ready(system)
            if result is not None:
                await result
        await stop.wait()
        log.info("stopping: API, simulators, gateways, services, broker")
        server.should_exit = True
        await api
        for group in (sims, gateway_tasks, services):
            for task in group:
                task.cancel()
            await asyncio.gather(*group, return_exceptions=True)
    finally:
        for monitor in monitors.values():
            monitor.close()
        store.close()
        if embedded is not None:
            await embedded.stop()
        log.info("stopped")


async def main(config: Config) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_system(config, stop)
