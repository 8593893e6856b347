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
from dataclasses import dataclass
from typing import Any

import msgspec
import uvicorn
from fastapi import FastAPI

from alerts.ruleset import catalogue
from alerts.service import AlertService
from api.app import ApiParts, create_app
from api.limits import LimitSettings
from api.security import Authenticator, LocalTokens, OidcTokens
from api.view import LiveView
from devices import bus, gcwatch
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.site import DeviceSpec, Site
from facilities.service import FacilitiesService
from facilities.sitemap import SiteMap
from gateway.service import Gateway
from ingest.service import Ingest
from simulators.scenario import Running, load_scenario, start
from state.db import State, default_url, open_state
from storage.base import TimeSeriesStore
from storage.duckdb import DuckDbStore
from storage.sqlite import SqliteStore
from storage.victoria import VictoriaStore
from wardlink.broker import EmbeddedBroker, pick_port
from wardlink.config import Config, ConfigError
from wardlink.demo import seed_demo_assets
from wardlink.users import DEMO_FILE, seed_demo_users

log = logging.getLogger(__name__)


class ApiServer(uvicorn.Server):
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
    scenario: Running | None = None
    facilities: FacilitiesService | None = None


def open_store(config: Config, *, reader: bool = False) -> TimeSeriesStore:
    """The configured time-series store in the data directory (``reader``: a second process beside ingest)."""
    data = config.data_path
    if config.store.engine == "sqlite":
        return SqliteStore(data / "timeseries.db")
    if config.store.engine == "victoria":
        # Events and quarantine (JSON bodies) stay in a SQLite side file, which several processes may open.
        return VictoriaStore(config.store.url, data / "events.db",
                             retention_ms=config.store.retention_days * 86_400_000)
    if reader:
        raise ConfigError('store.engine "duckdb" lets one process open the store; a separate API or facilities '
                          'process needs store.engine = "sqlite" or "victoria"')
    # Chosen by measurement: docs/storage.md.
    return DuckDbStore(data / "timeseries.duckdb", memory_limit_mb=config.store.memory_limit_mb)


def open_relational(config: Config, site: Site) -> State:
    """The relational state (migrated to the newest schema), with the site's units, beds and devices loaded."""
    state = open_state(config.state.url or default_url(config.data_path))
    state.registry.seed_from_site(site, now_ms())
    return state


def build_api(config: Config, site: Site, store: TimeSeriesStore, view: LiveView, relational: State,
              site_map: SiteMap | None) -> FastAPI:
    """The API application with its identity providers, rule catalogue, site map and limits."""
    auth = config.auth
    local = LocalTokens.from_data_dir(config.data_path, auth.token_ttl_s) if auth.local else None
    oidc = None
    if auth.oidc_issuer:
        if not auth.oidc_jwks_url:
            raise ConfigError("auth.oidc_issuer is set: set auth.oidc_jwks_url (the provider's jwks_uri) too")
        try:
            oidc = OidcTokens(auth.oidc_issuer, auth.oidc_audience, auth.oidc_jwks_url, auth.oidc_algorithms,
                              auth.oidc_subject_claim)
        except ValueError as exc:
            raise ConfigError(f"auth: {exc}") from exc
    if local is None and oidc is None:
        raise ConfigError("auth: enable local sign-in (auth.local) or configure OIDC (auth.oidc_issuer)")
    limits = LimitSettings(max_body=config.api.max_body_bytes, rate_per_s=config.api.rate_per_s,
                           burst=config.api.burst, ws_max_frame=config.api.ws_max_frame_bytes)
    return create_app(ApiParts(site=site, store=store, view=view, state=relational,
                               auth=Authenticator(relational, local, oidc), catalogue=catalogue(),
                               default_ruleset=config.alerts.ruleset, site_map=site_map,
                               waste=config.facilities.waste, limits=limits,
                               ladders={priority: [(step.target, step.timeout_s) for step in steps]
                                        for priority, steps in config.alerts.delivery.routing.schedules.items()}))


def api_server(config: Config, app: FastAPI) -> ApiServer:
    """uvicorn for the API, with the WebSocket frame limit."""
    return ApiServer(uvicorn.Config(app, host=config.api.host, port=config.api.port, log_level="warning",
                                    lifespan="off", ws_max_size=config.api.ws_max_frame_bytes))


def listeners(site: Site, *, move_busy: bool = True) -> tuple[Site, dict[str, tuple[str, int]]]:
    """Where each HL7 listener will listen; with ``move_busy`` a port already taken is swapped for a free one."""
    targets: dict[str, tuple[str, int]] = {}
    devices: list[DeviceSpec] = []
    for spec in site.devices:
        listen = spec.connection.get("listen") if spec.kind == "hl7_pcd" else None
        if listen:
            host, _, port_text = str(listen).rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            port = int(port_text)
            if move_busy:
                port = pick_port(host if host != "0.0.0.0" else "127.0.0.1", port)  # noqa: S104
            targets[spec.id] = ("127.0.0.1" if host == "0.0.0.0" else host, port)  # noqa: S104
            spec = msgspec.structs.replace(spec, connection={**spec.connection, "listen": f"{host}:{port}"})
        devices.append(spec)
    return msgspec.structs.replace(site, devices=devices), targets


async def _simulate(config: Config, site: Site, broker: BrokerAddress) -> tuple[Site, Running | None]:
    """Start the scenario's twins and point each simulated device's connection at its twin."""
    site, targets = listeners(site)
    if not config.simulation.enabled:
        return site, None
    running = await start(load_scenario(config.simulation.scenario), broker, targets)
    devices = [msgspec.structs.replace(spec, connection={**spec.connection, **running.connections[spec.id]})
               if spec.id in running.connections else spec for spec in site.devices]
    return msgspec.structs.replace(site, devices=devices), running


async def run_system(config: Config, stop: asyncio.Event,
                     on_ready: Callable[[System], Awaitable[None] | None] | None = None, *,
                     settle_gc: bool = False) -> None:
    """Run everything until ``stop`` is set, then shut down in order (API, gateways, services, broker).

    ``settle_gc`` (the process is ours alone: ``wardlink run``) freezes what the start-up built out of the
    garbage collector's way (devices/gcwatch.py).
    """
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    embedded: EmbeddedBroker | None = None
    if config.broker.url:
        address = config.broker.address()
        log.info("using external broker %s", address.url)
    else:
        embedded = EmbeddedBroker(config.broker.embedded_host, config.broker.embedded_port)
        address = await embedded.start()
    store = open_store(config)
    relational = await asyncio.to_thread(open_relational, config, config.site)
    scenario: Running | None = None
    try:
        site, scenario = await _simulate(config, config.site, address)
        gateways = [Gateway(site, g.id, data / f"outbox-{g.id}.db", address, config.gateway) for g in site.gateways]
        ingest = Ingest(site, store, address, settings=config.ingest, spool_path=data / "spool-ingest-1.db")
        alerts = AlertService(site, relational, address, config.alerts)
        facilities = FacilitiesService(site, relational, address, config.facilities, store=store)
        view = LiveView(site.id, address, embedded_broker=embedded is not None)
        if scenario is not None and scenario.tags:
            added = await asyncio.to_thread(seed_demo_assets, relational, site, scenario.tags)
            log.info("demo equipment: %d simulated tags registered as assets (%d new)", len(scenario.tags), added)
        if config.auth.demo_users and config.simulation.enabled:
            demo = await asyncio.to_thread(seed_demo_users, relational, data, site)
            log.info("demo sign-in for %s: passwords in %s; a token: wardlink token STAFF_ID",
                     ", ".join(f"{u.staff_id} ({u.role})" for u in demo), data.resolve() / DEMO_FILE)
        server = api_server(config, build_api(config, site, store, view, relational, facilities.site_map))
        if settle_gc:
            gcwatch.settle()
        api_url = f"http://{config.api.host}:{config.api.port}"
        system = System(config, site, address, api_url, gateways, ingest, alerts, view, scenario, facilities)
        services: list[asyncio.Task[Any]] = [asyncio.create_task(ingest.run(), name="ingest"),
                     asyncio.create_task(alerts.run(), name="alerts"),
                     asyncio.create_task(facilities.run(), name="facilities"),
                     asyncio.create_task(view.run(), name="api view")]
        gateway_tasks = [asyncio.create_task(g.run(), name=f"gateway {g.id}") for g in gateways]
        api = asyncio.create_task(server.serve(), name="api")
        while not server.started and not api.done():  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.05)
        if api.done():
            api.result()  # the API could not start (port taken?): raise why
            raise RuntimeError(f"API server on {api_url} stopped during start-up")
        log.info("Wardlink is running: API %s (docs %s/docs), broker %s%s, data in %s, %d devices simulated",
                 api_url, api_url, address.url, " (embedded)" if embedded else "", data.resolve(),
                 len(scenario.connections) if scenario else 0)
        if on_ready is not None:
            result = on_ready(system)
            if result is not None:
                await result
        await stop.wait()
        log.info("stopping: API, gateways, simulators, services, broker")
        server.should_exit = True
        await api
        for group, what in ((gateway_tasks, "gateways"), (services, "services")):
            await bus.cancel_all(group, what=what)  # gateways first: a stopping simulator is no device failure
    finally:
        if scenario is not None:
            await scenario.stop()
        store.close()
        relational.close()
        if embedded is not None:
            await embedded.stop()
        log.info("stopped")


async def main(config: Config) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gcwatch.WATCH.install()
    await run_system(config, stop, settle_gc=True)
