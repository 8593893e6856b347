"""The facilities service: gateway batches in; asset locations, asset status and facilities alerts out.

It subscribes to the gateways' data topics like the alert service does (its alerts never wait on the
store). Tag reads go to the :class:`~facilities.location.LocationEngine`; observations of devices that
are assets set their status (a pump infusing is in use); waste scans and waste-storage readings go to
the :class:`~facilities.waste.WasteTracker`. Current locations are written to the relational state every
``flush_s``; the location history (entered, left, lost, with confidence and source) goes to the
time-series store as placements (:mod:`facilities.history`) from a bounded buffer, written apart from
the lock the alerts take, so a slow or absent store delays only the history; status changes stay in the
state's ``asset_events`` (utilisation reads them). Alerts are stored with ``state.alerts.save`` and
published retained on the alert topic, as the alert service does.

The synchronous core (:meth:`FacilitiesService.handle`, :meth:`FacilitiesService.tick`,
:meth:`FacilitiesService.flush`, :meth:`FacilitiesService.write_history`) is usable without a broker;
the bus adapter runs the first three under one lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from functools import cache, partial
from typing import Annotated

import aiomqtt
import msgspec

from devices import bus, topics
from devices.clock import now_ms
from devices.contract import (
    Alert,
    ContractError,
    Item,
    Observation,
    ServiceStatus,
    TagRead,
    WasteEvent,
    decode_batch,
    encode,
)
from devices.site import Room, Site
from facilities.alarms import FacilityAlarms
from facilities.assets import shortfalls, status_from
from facilities.history import Sequencer
from facilities.location import Distance, LocationEngine, LocationEvent, LocationSettings, corridor_distance
from facilities.sitemap import SiteMap, SiteMapError, load_site_map
from facilities.waste import WasteSettings, WasteTracker
from facilities.wayfinding import RouteError, Wayfinder
from state.assets import Asset
from state.db import State
from storage.base import Placement, StoreError, TimeSeriesStore

log = logging.getLogger(__name__)


class FacilitiesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[facilities]`` table of the configuration (docs/facilities.md)."""

    site_map: str = "demo"  # the wayfinding site map: "demo" (shipped) or a path; "" for none
    heartbeat_s: float = 5.0
    tick_s: float = 1.0  # lost assets, waste timers
    flush_s: float = 2.0  # locations written to the state, and the history to the store, this often
    history_buffer: Annotated[int, msgspec.Meta(ge=1)] = 100_000  # placements waiting for the store; past it the
    # oldest are dropped (counted)
    registry_poll_s: float = 10.0  # the asset registry (new assets, new tags) reloaded this often
    par_check_s: float = 30.0
    battery_low_pct: float = 20.0
    stale_s: float = 15.0
    margin_db: float = 6.0
    sustain_reads: int = 3
    sustain_s: float = 5.0
    max_speed_mps: float = 3.0
    lost_after_s: float = 900.0
    lost_after_s_by_type: dict[str, float] = {}  # e.g. {wheelchair = 1800, infusion_pump = 600}
    waste: WasteSettings = WasteSettings()

    def location(self) -> LocationSettings:
        """The location engine's settings."""
        return LocationSettings(stale_ms=int(self.stale_s * 1000), margin_db=self.margin_db,
                                sustain_reads=self.sustain_reads, sustain_ms=int(self.sustain_s * 1000),
                                max_speed_mps=self.max_speed_mps, lost_after_ms=int(self.lost_after_s * 1000),
                                lost_after_ms_by_type={k: int(v * 1000) for k, v in self.lost_after_s_by_type.items()})


def site_map_for(site: Site, name: str) -> SiteMap | None:
    """The site map, if one is configured, loads, and holds every room of the site (else None, logged)."""
    if not name:
        return None
    try:
        site_map = load_site_map(name)
    except SiteMapError as exc:
        log.warning("facilities: site map %s not usable (%s); distances follow corridor order", name, exc)
        return None
    missing = sorted({r.id for r in site.rooms} - set(site_map.room_index))
    if missing:
        log.warning("facilities: site map %s lacks rooms %s; distances follow corridor order", name, missing[:5])
        return None
    return site_map


def walking_distance(site: Site, site_map: SiteMap | None) -> Distance:
    """Metres between two rooms: along the site map's routes when there is one, else corridor order."""
    if site_map is None:
        return corridor_distance(site.rooms)
    wayfinder = Wayfinder(site_map)

    @cache
    def from_room(room: str) -> dict[str, float]:
        try:
            return wayfinder.distances_from(room)
        except RouteError:
            return {}

    def distance(a: str, b: str) -> float | None:
        return from_room(a).get(b)

    return distance


def readers_of(site: Site) -> dict[str, str]:
    """Reader device id -> room id, from the site's devices placed in a room."""
    return {d.id: d.room for d in site.devices if d.room is not None}


class FacilitiesService:
    """Bus adapter around the location engine, asset status, facilities alarms and the waste tracker."""

    def __init__(self, site: Site, state: State, address: bus.BrokerAddress | None = None,
                 settings: FacilitiesSettings | None = None, instance: str = "facilities-1",
                 site_map: SiteMap | None = None, store: TimeSeriesStore | None = None) -> None:
        """Load the asset registry, stored locations and open facilities alerts (``address`` None: no bus;
        ``store`` None: no location history is kept, logged)."""
        self.site, self.state, self.address, self.instance = site, state, address, instance
        self.store = store
        self.settings = settings or FacilitiesSettings()
        self.site_map = site_map if site_map is not None else site_map_for(site, self.settings.site_map)
        self.rooms: dict[str, Room] = site.room_index()
        self.room_units = {r.id: r.unit for r in site.rooms}
        self.engine = LocationEngine(site.rooms, readers_of(site), self.settings.location(),
                                     walking_distance(site, self.site_map))
        self.alarms = FacilityAlarms(self.rooms, self.settings.battery_low_pct)
        self.alarms.restore(state.alerts.open())
        self.waste = WasteTracker(site, state, self.settings.waste, site_map=self.site_map)
        self.assets: dict[str, Asset] = {}
        self.by_tag: dict[str, Asset] = {}
        self.by_device: dict[str, Asset] = {}
        self.sequencer = Sequencer()
        self.history: deque[Placement] = deque()  # placements not yet in the store (oldest first)
        self._history_lock = threading.Lock()  # handle/tick append, write_history takes, in other threads
        self.counters: dict[str, int] = defaultdict(int)
        self._lock = asyncio.Lock()
        self._status_topic = topics.service_topic(site.id, "facilities", instance)
        self.reload()

    # --- the synchronous core (one caller at a time) ------------------------------------------------------

    def reload(self) -> None:
        """Read the asset registry: follow new assets and retagged ones, restore stored locations."""
        assets = {a.id: a for a in self.state.assets.list()}
        known = self.engine.tracked()
        for asset in assets.values():
            if known.get(asset.tag) != asset.id:
                fresh = self.engine.location(asset.id) is None
                self.engine.track(asset.id, asset.tag, asset.type)
                if fresh and asset.location is not None:
                    self.engine.restore(asset.location)
        for gone in set(known.values()) - set(assets):
            self.engine.forget(gone)
        self.assets = assets
        self.by_tag = {a.tag: a for a in assets.values()}
        self.by_device = {a.device: a for a in assets.values() if a.device is not None}

    def handle(self, items: Sequence[Item], now: int) -> list[Alert]:
        """Process one batch; return the alerts raised or changed (not yet stored)."""
        alerts: list[Alert] = []
        events: list[LocationEvent] = []
        read = self.engine.read
        for item in items:
            if isinstance(item, TagRead):
                read(item.tag, item.device, item.rssi, item.ts, events)
                if item.battery is not None and (asset := self.by_tag.get(item.tag)) is not None:
                    battery = self.alarms.battery(asset, item.battery, item.ts)
                    if battery is not None:
                        alerts.append(battery)
            elif isinstance(item, Observation):
                asset = self.by_device.get(item.device)
                if asset is not None:
                    self._derive_status(asset, item)
                alerts += self.waste.handle(item, now)
            elif isinstance(item, WasteEvent):
                alerts += self.waste.handle(item, now)
        if events:
            alerts += self._transitions(events)
        self.counters["items"] += len(items)
        return alerts

    def _derive_status(self, asset: Asset, observation: Observation) -> None:
        status = status_from(observation, asset.status)
        if status is None:
            return
        updated = self.state.assets.upsert(asset.id, now=observation.ts, status=status)
        self.assets[asset.id] = self.by_device[observation.device] = self.by_tag[asset.tag] = updated
        self.counters[f"status_{status}"] += 1
        log.info("asset %s: %s -> %s (from %s %s = %g)", asset.id, asset.status, status, observation.device,
                 observation.metric, observation.value)

    def _transitions(self, events: list[LocationEvent]) -> list[Alert]:
        for event in events:
            self.counters[f"location_{event.kind}"] += 1
        if self.store is not None:
            self._keep([self.sequencer.placement(event) for event in events])
        return self.alarms.location(events, self.assets)

    def _keep(self, placements: list[Placement], *, first: bool = False) -> None:
        """Buffer placements for the store (``first``: put back at the front); drop the oldest past capacity."""
        with self._history_lock:
            if first:
                self.history.extendleft(reversed(placements))
            else:
                self.history.extend(placements)
            over = len(self.history) - self.settings.history_buffer
            for _ in range(max(0, over)):
                self.history.popleft()
        if over > 0:
            self.counters["history_dropped"] += over
            log.warning("facilities: location history buffer full (%d): %d oldest placements dropped",
                        self.settings.history_buffer, over)

    def tick(self, now: int) -> list[Alert]:
        """Timers: assets lost, the waste tracker's checks."""
        lost = self.engine.tick(now)
        alerts = self._transitions(lost) if lost else []
        return alerts + self.waste.tick(now)

    def check_par(self, now: int) -> list[Alert]:
        """Compare each unit's clean assets at hand with its par levels."""
        assets = self.state.assets.list()
        levels = self.state.assets.par_levels()
        return self.alarms.par(shortfalls(assets, levels, self.room_units), {p.unit for p in levels} |
                               {u.id for u in self.site.units}, now)

    def flush(self) -> int:
        """Write changed locations to the state; return how many."""
        locations = self.engine.take_dirty()
        if not locations:
            return 0
        try:
            return self.state.assets.save_locations(locations)
        except BaseException:
            self.engine.dirty.update(loc.asset for loc in locations)  # written next time
            raise

    def write_history(self, batch: int = 5000) -> int:
        """Write buffered placements to the store, oldest first; return how many were written.

        A retryable store error puts them back for the next call; a refused batch is dropped, counted
        and logged (the store names why).
        """
        if self.store is None:
            return 0
        written = 0
        while True:
            with self._history_lock:
                taken = [self.history.popleft() for _ in range(min(batch, len(self.history)))]
            if not taken:
                return written
            try:
                self.store.write(taken)
            except StoreError as exc:
                if exc.retryable:
                    self._keep(taken, first=True)
                    self.counters["history_retry"] += 1
                    raise
                self.counters["history_refused"] += len(taken)
                log.error("facilities: the store refused %d placements (dropped): %s", len(taken), exc)
                continue
            except ValueError as exc:  # a placement the store's check refuses (ContractError)
                self.counters["history_refused"] += len(taken)
                log.error("facilities: %d placements refused (dropped): %s", len(taken), exc)
                continue
            written += len(taken)
            self.counters["history_written"] += len(taken)

    def save(self, alert: Alert) -> Alert:
        """Store an alert transition; return what was stored (committed staff actions win)."""
        stored = self.state.alerts.save(alert)
        self.alarms.adopt(stored)
        return stored

    # --- the bus ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        await bus.supervise(f"facilities {self.instance}", self._session)

    def _status(self, state: str) -> bytes:
        return encode(ServiceStatus(service="facilities", instance=self.instance,
                                    state="online" if state == "online" else "offline", ts=now_ms(),
                                    counters=dict(self.counters)))

    async def _session(self) -> None:
        if self.address is None:
            raise RuntimeError("facilities: no broker address given")
        will = aiomqtt.Will(self._status_topic, self._status("offline"), qos=1, retain=True)
        async with bus.client(self.address, f"wardlink-{self.instance}", will=will, clean_session=False) as client:
            await client.subscribe(topics.gateway_filter(self.site.id, "data"), qos=1)
            for alert in list(self.alarms.open.values()):
                await client.publish(topics.alert_topic(self.site.id, alert.id), encode(alert), qos=1, retain=True)
            log.info("facilities %s: %d assets, %d readers placed, %d open alerts, location history %s",
                     self.instance, len(self.assets), len(self.engine.readers), len(self.alarms.open),
                     "to the store" if self.store is not None else "not kept (no store)")
            async with asyncio.TaskGroup() as group:
                group.create_task(bus.heartbeat(client, self._status_topic, lambda: self._status("online"),
                                                self.settings.heartbeat_s))
                group.create_task(self._receive(client))
                group.create_task(self._clock(client))
                group.create_task(self._record())

    async def _receive(self, client: aiomqtt.Client) -> None:
        data = topics.gateway_filter(self.site.id, "data")
        async for message in bus.messages(client):
            payload = message.payload
            if not isinstance(payload, bytes) or not message.topic.matches(data):
                continue
            try:
                batch = decode_batch(payload)
            except ContractError:
                self.counters["undecodable"] += 1  # ingest quarantines it
                continue
            async with self._lock:
                alerts = await asyncio.to_thread(self.stored, partial(self.handle, batch.items, now_ms()))
            await self._announce(client, alerts)

    async def _clock(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        last_flush = last_reload = last_par = loop.time()
        while True:
            await asyncio.sleep(settings.tick_s)
            now = now_ms()
            async with self._lock:
                alerts = await asyncio.to_thread(self.stored, partial(self.tick, now))
                if loop.time() - last_flush >= settings.flush_s:
                    last_flush = loop.time()
                    await asyncio.to_thread(self.flush)
                if loop.time() - last_reload >= settings.registry_poll_s:
                    last_reload = loop.time()
                    await asyncio.to_thread(self.reload)
                if loop.time() - last_par >= settings.par_check_s:
                    last_par = loop.time()
                    alerts += await asyncio.to_thread(self.stored, partial(self.check_par, now))
            await self._announce(client, alerts)

    async def _record(self) -> None:
        """Write the location history to the store, apart from the lock the alerts take."""
        while True:
            await asyncio.sleep(self.settings.flush_s)
            try:
                await asyncio.to_thread(self.write_history)
            except StoreError as exc:  # retryable: kept, tried again next time
                log.warning("facilities: location history not written yet (%d waiting): %s", len(self.history), exc)

    def stored(self, step: Callable[[], list[Alert]]) -> list[Alert]:
        """Run one step of the core and store the alerts it raised (in a worker thread, under the lock)."""
        return [self.save(alert) for alert in step()]

    async def _announce(self, client: aiomqtt.Client, alerts: list[Alert]) -> None:
        for stored in alerts:
            self.counters[f"alerts_{stored.state}"] += 1
            topic = topics.alert_topic(self.site.id, stored.id)
            if stored.state == "resolved":
                await client.publish(topic, encode(stored), qos=1)
                await client.publish(topic, b"", qos=1, retain=True)  # clear the retained copy
                log.info("facilities alert resolved: %s %s", stored.source, stored.type)
            else:
                await client.publish(topic, encode(stored), qos=1, retain=True)
                log.warning("FACILITIES %s %s %s: %s", stored.priority.upper(), stored.source, stored.type,
                            stored.message)
