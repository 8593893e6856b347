"""Fleet management (issue 8): every figure checked against a scenario's known truth.

Pumps are the simulated Perfusa PV-300 (:mod:`simulators.modbus.pump`) read through the gateway's own
register decoder; monitors are the simulated WLB-100 serial monitor's frames through the gateway's frame
parser; connection states are GatewayStatus messages through the API's live view, as the bus carries them.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from api import fleet_figures as figures
from api.app import create_app
from api.fleet_recorder import FleetRecorder
from api.fleet_routes import FleetGauges
from api.view import LiveView
from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import DeviceHealth, DeviceInfo, GatewayStatus, Item, encode
from devices.site import DeviceSpec, Site
from gateway.drivers.bedside_serial.driver import frames_to_items
from gateway.drivers.bedside_serial.parser import FrameParser
from gateway.drivers.modbus_common.decode import MapState, identity, to_items
from gateway.drivers.modbus_pump.driver import ModbusPumpDriver
from gateway.drivers.modbus_pump.parser import KIND, pump_map
from simulators.bedside import protocol
from simulators.modbus.pump import PumpModel
from simulators.modbus.server import ModbusSimulator
from state.assets import AssetLocation
from state.db import State, open_state
from state.fleet import LinkChange, MaintenancePlan, Recall, WorkOrder
from state.registry import Device
from storage.memory import MemoryStore
from tests.auth import bearer, parts, staff
from wardlink.config import load

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
NO_BROKER = BrokerAddress("127.0.0.1", 1)  # the view is fed by the test (Fleet.status) unless given a broker
PV300 = {"manufacturer": "Perfusa Medical", "model": "PV-300", "driver": "modbus_pump"}


class Fleet:
    """An API over a seeded state and an in-memory store the simulators' readings are written to."""

    def __init__(self, tmp_path: Path, broker: BrokerAddress = NO_BROKER) -> None:
        self.site: Site = load(env={}).site
        self.state: State = open_state(f"sqlite:///{tmp_path / 'state.db'}")
        self.now = now_ms()
        self.t0 = (self.now - 2 * HOUR) // MIN * MIN  # a minute-aligned hour that has passed
        self.state.registry.seed_from_site(self.site, self.now)
        staff(self.state, ("b-bio", "biomed", None), ("a-adm", "admin", None), ("n-icu", "nurse", "ICU"),
              ("n-w3", "nurse", "W3"), ("f-fac", "facilities", None), ("u-aud", "auditor", None),
              at=self.now - HOUR)
        self.store = MemoryStore()
        self.view = LiveView(self.site.id, broker)  # statuses applied by the test, or heard from a real broker
        self.app = create_app(parts(self.site, self.store, self.view, self.state))
        self.recorder = next(f.__self__ for f in self.view.gateway_listeners
                             if isinstance(getattr(f, "__self__", None), FleetRecorder))
        self.gauges = next(f.__self__ for f in self.view.gauge_sources
                           if isinstance(getattr(f, "__self__", None), FleetGauges))
        self.seq: dict[tuple[str, str], int] = defaultdict(int)

    def write(self, items: Iterable[Item]) -> None:
        """Store items as ingest would: each stream numbered from 1."""
        numbered = []
        for item in items:
            self.seq[item.device, item.stream] += 1
            numbered.append(msgspec.structs.replace(item, seq=self.seq[item.device, item.stream]))
        self.store.write(numbered)

    def spec(self, device_id: str) -> DeviceSpec:
        found = self.state.registry.device(device_id)
        assert found is not None
        return DeviceSpec(id=found.id, kind=found.driver, gateway=found.gateway, bed=found.bed,
                          manufacturer=found.manufacturer, model=found.model)

    def run_pump(self, device_id: str, pump: PumpModel, *, until_s: int = 3600, every_s: int = 5,
                 events: dict[int, Callable[[PumpModel], None]] | None = None) -> None:
        """Poll a simulated pump every ``every_s`` over the hour from t0 (``events``: second -> what happens)."""
        spec, regmap, state = self.spec(device_id), pump_map(), MapState()
        pump._last = 0.0
        for second in range(0, until_s, every_s):
            if second in (events or {}):
                (events or {})[second](pump)
            snapshot = pump.registers(float(second))
            received = self.t0 + second * 1000
            items = to_items(spec, regmap, snapshot, state, received)
            if second == 0:
                items.insert(0, identity(spec, regmap, snapshot, KIND, received))
            self.write(items)

    def run_monitor(self, device_id: str, *, until_s: int, clock_offset_ms: int = 0, every_s: int = 10) -> None:
        """A simulated serial monitor's numerics frames every ``every_s`` while a patient is connected."""
        spec, parser = self.spec(device_id), FrameParser()
        for counter, second in enumerate(range(0, until_s, every_s)):
            received = self.t0 + second * 1000
            frame = protocol.encode_numerics(received + clock_offset_ms, counter,
                                             [(protocol.PARAM_HR, 72.0, 0), (protocol.PARAM_SPO2, 97.0, 0)])
            self.write(frames_to_items(spec, parser.feed(frame), received))

    def status(self, gateway: str, state: str, ts: int, **devices: str) -> None:
        """A gateway status on the bus, as the gateway publishes it (birth, heartbeat or last will)."""
        health = [DeviceHealth(device=d.replace("_", "-"), state=s, last_seen=ts)  # type: ignore[arg-type]
                  for d, s in devices.items()]
        payload = encode(GatewayStatus(gateway=gateway, state=state, ts=ts, devices=health))  # type: ignore[arg-type]
        self.view.apply(topics.gateway_topic(self.site.id, gateway, "status"), payload)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterable[Fleet]:
    made = Fleet(tmp_path)
    yield made
    made.state.close()


@pytest.fixture
async def client(fleet: Fleet) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fleet.app), base_url="http://test") as made:
        yield made


async def get(client: httpx.AsyncClient, url: str, who: str = "b-bio", **params: Any) -> Any:
    response = await client.get(url, headers=bearer(who), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def hour(fleet: Fleet) -> dict[str, str]:
    return {"start": str(fleet.t0), "end": str(fleet.t0 + HOUR)}


def pause(pump: PumpModel) -> None:
    pump.state = "paused"


def infuse(pump: PumpModel) -> None:
    pump.state = "infusing"


def stop(pump: PumpModel) -> None:
    pump.state = "stopped"


async def add_w3_pumps(client: httpx.AsyncClient) -> None:
    for n in (1, 2, 3):
        body = {"id": f"pump-w3-0{n}", "gateway": "gw-w3", "unit": "W3", **PV300}
        if n == 3:
            body["udi"] = "(01)05012345678900(21)PV3-W303"
        response = await client.post("/api/v1/fleet/devices", headers=bearer("a-adm"), json=body)
        assert response.status_code == 201, response.text


# --- simulators ------------------------------------------------------------------------------------------------
async def test_pumps_infusing_and_idle_give_utilisation_idle_devices_and_a_suggested_move(
        fleet: Fleet, client: httpx.AsyncClient) -> None:
    await add_w3_pumps(client)
    fleet.run_pump("pump-icu-01", PumpModel(firmware="2.4.1", vtbi_ml=5000))  # infusing the whole hour
    fleet.run_pump("pump-icu-03", PumpModel(firmware="2.5.0", vtbi_ml=5000),  # paused 10 min: still in use
                   events={1800: pause, 2400: infuse})
    for n in (1, 2, 3):
        fleet.run_pump(f"pump-w3-0{n}", PumpModel(firmware="2.5.0", state="stopped"))
    used = await get(client, "/api/v1/fleet/utilisation", "u-aud", **hour(fleet))
    pumps = {g["unit"]: g for g in used["groups"] if g["type"] == "infusion_pump"}
    assert (pumps["ICU"]["devices"], pumps["ICU"]["in_use_ms"], pumps["ICU"]["utilisation"]) == (2, 2 * HOUR, 1.0)
    assert (pumps["W3"]["devices"], pumps["W3"]["in_use_ms"], pumps["W3"]["utilisation"]) == (3, 0, 0.0)
    assert pumps["W3"]["idle"] == ["pump-w3-01", "pump-w3-02", "pump-w3-03"]
    assert pumps["ICU"]["idle"] == []
    # The ICU needs ceil(2 h in use / 0.7 h) = 3 pumps; 3 West lends one and keeps one idle spare.
    assert used["suggestions"] == [{"type": "infusion_pump", "from_unit": "W3", "to_unit": "ICU",
                                    "devices": ["pump-w3-02"]}]


async def test_half_an_hour_infusing_is_half_the_hour(fleet: Fleet, client: httpx.AsyncClient) -> None:
    fleet.run_pump("pump-icu-01", PumpModel(firmware="2.4.1", vtbi_ml=5000), events={1800: stop})
    used = await get(client, "/api/v1/fleet/utilisation", **hour(fleet))
    (icu,) = [g for g in used["groups"] if g["type"] == "infusion_pump" and g["unit"] == "ICU"]
    assert icu["in_use_ms"] == HOUR // 2  # pump-icu-01 for 30 min, pump-icu-03 never heard
    assert icu["idle"] == ["pump-icu-03"]


async def test_firmware_drift_and_a_recall_by_firmware_range_udi_and_product_code(
        fleet: Fleet, client: httpx.AsyncClient) -> None:
    await add_w3_pumps(client)
    fleet.run_pump("pump-icu-01", PumpModel(firmware="2.4.1"), until_s=10)
    fleet.run_pump("pump-icu-03", PumpModel(firmware="2.10.0"), until_s=10)
    for n in (1, 2, 3):
        fleet.run_pump(f"pump-w3-0{n}", PumpModel(firmware="2.9.3"), until_s=10)
    firmware = {(m["manufacturer"], m["model"]): m for m in await get(client, "/api/v1/fleet/firmware")}
    pv300 = firmware["Perfusa Medical", "PV-300"]
    assert pv300["versions"] == {"2.10.0": 1, "2.4.1": 1, "2.9.3": 3}
    assert (pv300["latest"], pv300["drift"]) == ("2.10.0", True)  # 2.10 is newer than 2.9: numbers, not text
    assert pv300["behind"] == ["pump-icu-01", "pump-w3-01", "pump-w3-02", "pump-w3-03"]
    # pump-icu-01 wears a tag and was last seen in an ICU room.
    fleet.state.assets.upsert("asset-pump-1", now=fleet.now, tag="TAG-P1", type="infusion_pump", unit="ICU",
                              device="pump-icu-01")
    fleet.state.assets.save_locations([AssetLocation("asset-pump-1", "ICU-R03", "ICU", "2", 0.9, fleet.now - MIN,
                                                     fleet.now, "rdr-icu-1")])
    recalls = {"recalls": [
        {"id": "FSN-1", "manufacturer": "perfusa medical", "model": "PV-300", "firmware_max": "2.4.9",
         "title": "free-flow on resume"},
        {"id": "FSN-2", "udi": "(01)05012345678900(21)PV3-W303"},
    ], "csv": "id,product_code,manufacturer\nFSN-3,05012345678900,Perfusa Medical\n"}
    response = await client.post("/api/v1/fleet/recalls/import", headers=bearer("b-bio"), json=recalls)
    assert response.json() == {"imported": 3, "affected": ["pump-icu-01", "pump-w3-03"]}
    found = {r["id"]: r for r in await get(client, "/api/v1/fleet/recalls", "u-aud")}
    (one,) = found["FSN-1"]["affected"]
    assert (one["device"], one["reason"], one["firmware"], one["unit"]) == ("pump-icu-01", "model", "2.4.1", "ICU")
    assert one["location"]["room"] == "ICU-R03"
    assert [(a["device"], a["reason"]) for a in found["FSN-2"]["affected"]] == [("pump-w3-03", "udi")]
    assert [(a["device"], a["reason"]) for a in found["FSN-3"]["affected"]] == [("pump-w3-03", "product_code")]
    single = await get(client, "/api/v1/fleet/recalls/FSN-1", "u-aud")
    assert [a["device"] for a in single["affected"]] == ["pump-icu-01"]
    assert (await client.get("/api/v1/fleet/recalls/NOPE", headers=bearer("b-bio"))).status_code == 404
    located = await get(client, "/api/v1/fleet/devices/pump-icu-01/location", "f-fac")
    assert (located["room"], located["zone"]) == ("ICU-R03", "ICU")
    report = await client.get("/api/v1/fleet/reports/recalls.csv", headers=bearer("u-aud"))
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert sorted((r["id"], r["device"], r["room"]) for r in rows) == [
        ("FSN-1", "pump-icu-01", "ICU-R03"), ("FSN-2", "pump-w3-03", ""), ("FSN-3", "pump-w3-03", "")]
    assert "fleet.recalls.import" in {r.action for r in fleet.state.audit.records()}


async def test_health_battery_draining_technical_alarms_and_clock_skew(fleet: Fleet, client: httpx.AsyncClient) -> None:
    # A pump on battery draining 12 %/h from 30 %: below 20 % (low-battery alarm, low priority) after 50 min.
    fleet.run_pump("pump-icu-01", PumpModel(battery_pct=30.0, drain_pct_per_h=12.0, vtbi_ml=5000))
    # An occlusion on the other pump at 40 min, cleared at 45: one high-priority technical alarm.
    fleet.run_pump("pump-icu-03", PumpModel(vtbi_ml=5000, on_mains=True),
                   events={2400: PumpModel.inject_occlusion, 2700: PumpModel.clear_occlusion})
    fleet.run_monitor("mon-icu-01", until_s=3600)
    fleet.run_monitor("mon-icu-02", until_s=1800, clock_offset_ms=-8000)  # its clock runs 8 s behind
    window = {"hours": "3"}
    one = await get(client, "/api/v1/fleet/devices/pump-icu-01/health", **window)
    assert one["battery_pct"] == 18.0  # 30 - 12 x 3595/3600, as the register rounds it
    assert (one["technical_alarms"], one["errors"]) == (1, 0)
    three = await get(client, "/api/v1/fleet/devices/pump-icu-03/health", **window)
    assert (three["battery_pct"], three["technical_alarms"], three["errors"]) == (100.0, 1, 1)
    skewed = await get(client, "/api/v1/fleet/devices/mon-icu-02/health", "n-icu")
    assert skewed["clock_skew_flagged"] is True
    assert (await get(client, "/api/v1/fleet/devices/mon-icu-01/health"))["clock_skew_flagged"] is False
    # A monitor connected to a patient is in use: mon-icu-01 the whole hour, mon-icu-02 half of it.
    used = await get(client, "/api/v1/fleet/utilisation", **hour(fleet))
    (monitors,) = [g for g in used["groups"] if g["type"] == "monitor" and g["unit"] == "ICU"]
    assert (monitors["devices"], monitors["in_use_ms"]) == (8, HOUR + HOUR // 2)
    assert monitors["idle"] == [f"mon-icu-0{n}" for n in range(3, 9)]
    # A 3 West nurse cannot read an ICU device's health: the same 404 as a device that does not exist.
    other = await client.get("/api/v1/fleet/devices/mon-icu-02/health", headers=bearer("n-w3"))
    missing = await client.get("/api/v1/fleet/devices/nope/health", headers=bearer("n-w3"))
    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json()["detail"].replace("mon-icu-02", "x") == missing.json()["detail"].replace("nope", "x")


async def test_devices_going_offline_give_uptime_gateway_health_and_metrics(
        fleet: Fleet, client: httpx.AsyncClient) -> None:
    t0 = fleet.t0
    fleet.status("gw-icu", "online", t0, mon_icu_01="connected", mon_icu_02="connected")
    fleet.status("gw-icu", "online", t0 + 10 * MIN, mon_icu_01="connected", mon_icu_02="connected")  # heartbeat
    fleet.status("gw-icu", "online", t0 + 20 * MIN, mon_icu_01="connected", mon_icu_02="lost")
    fleet.status("gw-icu", "online", t0 + 30 * MIN, mon_icu_01="connected", mon_icu_02="connected")
    fleet.status("gw-icu", "offline", t0 + 40 * MIN)  # the gateway's last will
    fleet.status("gw-icu", "online", t0 + 50 * MIN, mon_icu_01="connected", mon_icu_02="connected")
    await fleet.recorder.drain()
    assert fleet.recorder.failures == 0
    up = {r["device"]: r for r in await get(client, "/api/v1/fleet/uptime", "u-aud", **hour(fleet))}
    # mon-icu-01: down only while its gateway was (40-50 min); mon-icu-02 also lost from 20 to 30 min.
    assert (up["mon-icu-01"]["connected_ms"], up["mon-icu-01"]["uptime"], up["mon-icu-01"]["outages"]) == (
        50 * MIN, round(50 / 60, 4), 1)
    assert (up["mon-icu-02"]["connected_ms"], up["mon-icu-02"]["uptime"], up["mon-icu-02"]["outages"]) == (
        40 * MIN, round(40 / 60, 4), 2)
    assert (up["pump-icu-01"]["known_ms"], up["pump-icu-01"]["uptime"]) == (0, None)  # never heard: unknown
    # A second API process hearing the same statuses records nothing twice.
    again = FleetRecorder(fleet.state.fleet)
    for ts in (t0, t0 + 20 * MIN):
        again.observe(GatewayStatus("gw-icu", "online", ts, devices=[DeviceHealth("mon-icu-02", "connected")]))
    assert len(fleet.state.fleet.links(start=t0, end=t0 + HOUR, subjects=["mon-icu-02"])) == 5
    # Per gateway: the last status was long ago (stale), a fresh heartbeat makes it online, a last will offline.
    gateways = {g["gateway"]: g for g in await get(client, "/api/v1/fleet/gateways")}
    assert (gateways["gw-icu"]["state"], gateways["gw-w3"]["state"]) == ("stale", "unknown")
    fleet.status("gw-icu", "online", now_ms(), mon_icu_01="connected", mon_icu_02="lost")
    gateways = {g["gateway"]: g for g in await get(client, "/api/v1/fleet/gateways")}
    assert gateways["gw-icu"]["state"] == "online"
    assert gateways["gw-icu"]["devices"] == {"connected": 1, "lost": 1, "unknown": 10}
    health = {h["device"]: h for h in await get(client, "/api/v1/fleet/health", unit="ICU")}
    assert (health["mon-icu-02"]["state"], health["mon-icu-02"]["gateway_state"]) == ("lost", "online")
    await fleet.gauges.refresh()
    text = (await client.get("/metrics")).text
    assert 'wardlink_fleet_devices{state="connected"} 1' in text
    assert 'wardlink_fleet_devices{state="lost"} 1' in text
    assert 'wardlink_fleet_gateways{state="online"} 1' in text
    fleet.status("gw-icu", "offline", now_ms())
    await fleet.recorder.drain()
    await fleet.gauges.refresh()
    text = (await client.get("/metrics")).text
    assert 'wardlink_fleet_devices{state="gateway_offline"} 12' in text  # every gw-icu device: gateway down
    assert 'wardlink_fleet_devices{state="unknown"} 10' in text  # 3 West's gateway (10 devices) was never heard
    lost = fleet.state.fleet.links(start=t0, end=now_ms() + 1, subjects=["mon-icu-02"])
    assert [c.state for c in lost] == ["connected", "lost", "connected", "gateway_offline", "connected", "lost",
                                       "gateway_offline"]


class HealthSink:
    """A driver's sink for a test that looks only at the link's health (readings and identity are dropped)."""

    def accept(self, items: Iterable[Item]) -> None:
        """Drop readings."""

    def register(self, info: DeviceInfo) -> None:
        """Drop identities."""


async def test_modbus_retries_of_dropped_replies_are_counted_in_fleet_health_and_metrics(
        fleet: Fleet, client: httpx.AsyncClient) -> None:
    # A real pump unit on pymodbus over TCP, read by the pump driver with a budget of 2 retries per request.
    # A late reply (0.45 s against a 0.3 s timeout) is a dropped one: the driver times out and asks again. The unit
    # answers in order, so the attempt after the late ones is answered 0.15 s after it was sent, within its timeout.
    pump = PumpModel(unit=1)
    async with ModbusSimulator([pump], transport="tcp") as sim:
        spec = DeviceSpec(id="pump-icu-01", kind="modbus_pump", gateway="gw-icu", bed="ICU-01", connection={
            "transport": "tcp", "host": sim.host, "port": sim.port, "unit": 1, "poll_s": 0.05, "timeout_s": 0.3,
            "retries": 2, "lost_after": 3, "backoff_s": 0.1, "backoff_max_s": 0.3})
        driver = ModbusPumpDriver(spec, HealthSink())
        task = asyncio.create_task(driver.run())
        try:
            await settle(lambda: driver.polls_ok >= 2)
            # 1: two replies dropped while the unit is healthy: each is retried, the third attempt is answered.
            sim.answer_late(1, 0.45, replies=2)
            await settle(lambda: sim.faults[1].late_replies == 0)
            ok = driver.polls_ok
            await settle(lambda: driver.polls_ok >= ok + 2)
            assert (driver.retries, driver.errors["ModbusTimeout"]) == (2, 2)
            # 2: four dropped: 2 retries, the poll fails; after a failed poll a unit gets one attempt per poll (no
            # retries): two more failed polls, then the next is answered. Truth: 2 more retries, 4 more rejected.
            sim.answer_late(1, 0.45, replies=4)
            await settle(lambda: sim.faults[1].late_replies == 0)
            ok = driver.polls_ok
            await settle(lambda: driver.polls_ok >= ok + 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert (driver.retries, driver.errors["ModbusTimeout"], driver.link.state) == (4, 6, "connected")
    # The gateway's status carries the driver's health; the API hears it on the bus.
    status = GatewayStatus(gateway="gw-icu", state="online", ts=now_ms(), devices=[driver.health()])
    fleet.view.apply(topics.gateway_topic(fleet.site.id, "gw-icu", "status"), encode(status))
    health = await get(client, "/api/v1/fleet/devices/pump-icu-01/health")
    assert (health["retries"], health["frames_rejected"], health["frames_ok"]) == (4, 6, driver.polls_ok)
    listed = {h["device"]: h for h in await get(client, "/api/v1/fleet/health", unit="ICU")}
    assert (listed["pump-icu-01"]["retries"], listed["mon-icu-01"]["retries"]) == (4, None)  # never heard: None
    await fleet.gauges.refresh()
    text = (await client.get("/metrics")).text
    assert 'wardlink_fleet_link_retries{device="pump-icu-01",gateway="gw-icu"} 4' in text
    assert 'wardlink_fleet_frames_rejected{device="pump-icu-01",gateway="gw-icu"} 6' in text


async def settle(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``check`` holds (a failure names nothing: the assertions after it do)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the scenario did not reach its next step in time"
        await asyncio.sleep(0.02)


# --- registry ----------------------------------------------------------------------------------------------------
async def test_registry_create_update_retire_csv_and_scope(fleet: Fleet, client: httpx.AsyncClient) -> None:
    admin = bearer("a-adm")
    vent = {"id": "vent-icu-04", "driver": "manual", "gateway": "gw-icu", "bed": "ICU-04", "manufacturer": "Aerox",
            "model": "AV-9", "serial_number": "AV9-0042", "udi": "(01)09876543210982(21)AV9-0042",
            "risk_class": "IIb", "life_support": True, "firmware": "5.1", "connection": {"port": "/dev/ttyS4"}}
    created = await client.post("/api/v1/fleet/devices", headers=admin, json=vent)
    assert created.status_code == 201, created.text
    assert (created.json()["unit"], created.json()["high_risk"]) == ("ICU", True)
    assert (await client.post("/api/v1/fleet/devices", headers=admin, json=vent)).status_code == 409
    bad = await client.post("/api/v1/fleet/devices", headers=admin, json={**vent, "id": "x", "bed": "NOPE-1"})
    assert bad.status_code == 422
    changed = await client.put("/api/v1/fleet/devices/vent-icu-04", headers=admin, json={"firmware": "5.2"})
    assert (changed.json()["firmware"], changed.json()["serial_number"]) == ("5.2", "AV9-0042")
    # Scope: the ICU nurse reads it; the 3 West nurse gets the answer of a missing device; nurses cannot edit.
    assert (await get(client, "/api/v1/fleet/devices/vent-icu-04", "n-icu"))["life_support"] is True
    assert (await client.get("/api/v1/fleet/devices/vent-icu-04", headers=bearer("n-w3"))).status_code == 404
    assert (await client.put("/api/v1/fleet/devices/vent-icu-04", headers=bearer("n-icu"),
                             json={"firmware": "6"})).status_code == 403
    mine = await get(client, "/api/v1/fleet/devices", "n-w3")
    assert mine
    assert {d["unit"] for d in mine} == {"W3"}
    assert [d["id"] for d in await get(client, "/api/v1/fleet/devices", high_risk="true")] == ["vent-icu-04"]
    # CSV: export, change, import (every row checked first: one bad row writes nothing).
    exported = (await client.get("/api/v1/fleet/devices.csv", headers=admin)).text
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(exported))}
    assert len(rows) == len(fleet.site.devices) + 1
    assert (rows["vent-icu-04"]["life_support"], rows["vent-icu-04"]["udi"]) == ("True", vent["udi"])
    assert rows["pump-icu-01"]["connection"] == "{}" or rows["pump-icu-01"]["connection"].startswith("{")
    upload = "id,driver,gateway,bed,model,firmware,life_support\n" \
             "vent-icu-04,,,,,5.3,\npump-icu-01,,,,,2.6.0,true\nvent-icu-05,manual,gw-icu,ICU-05,AV-9,5.3,true\n"
    broken = upload + "vent-w3-01,manual,gw-w3,NOPE-1,AV-9,5.3,true\n"
    refused = await client.post("/api/v1/fleet/devices/import", headers=admin, json={"csv": broken})
    assert refused.status_code == 422
    assert "row 5" in refused.json()["detail"]
    assert fleet.state.registry.device("vent-icu-05") is None
    done = await client.post("/api/v1/fleet/devices/import", headers=admin, json={"csv": upload})
    assert done.json() == {"created": 1, "updated": 2}
    pump = await get(client, "/api/v1/fleet/devices/pump-icu-01")
    assert (pump["firmware"], pump["life_support"], pump["model"], pump["bed"]) == ("2.6.0", True, "PV-300", "ICU-01")
    assert (await get(client, "/api/v1/fleet/devices/vent-icu-05"))["unit"] == "ICU"
    retired = await client.post("/api/v1/fleet/devices/vent-icu-04/retire", headers=admin)
    assert retired.json()["retired_at"] is not None
    assert "vent-icu-04" not in {d["id"] for d in await get(client, "/api/v1/fleet/devices")}
    assert "vent-icu-04" in {d["id"] for d in await get(client, "/api/v1/fleet/devices", include_retired="true")}
    actions = [(r.actor, r.action, r.object) for r in fleet.state.audit.records() if r.action.startswith("fleet.")]
    assert ("a-adm", "fleet.device.create", "device vent-icu-04") in actions
    assert ("a-adm", "fleet.device.update", "device vent-icu-04") in actions
    assert ("a-adm", "fleet.import", "fleet registry") in actions
    assert ("a-adm", "fleet.device.retire", "device vent-icu-04") in actions
    assert fleet.state.audit.verify()


async def test_discovered_devices_join_the_registry(fleet: Fleet, client: httpx.AsyncClient) -> None:
    from devices.contract import DeviceInfo
    fleet.write([DeviceInfo(device="hl7-w3-00a0c9fffe000301", stream="device", seq=0, ts=fleet.t0, driver="hl7_pcd",
                            gateway="gw-w3", bed="W3-01", manufacturer="Vendor", model="VM-8", firmware="3.1",
                            identifiers={"EUI-64": "00A0C9FFFE000301"}, discovered=True)])
    found = await get(client, "/api/v1/fleet/devices/hl7-w3-00a0c9fffe000301", "n-w3")
    assert (found["unit"], found["bed"], found["firmware"], found["discovered"]) == ("W3", "W3-01", "3.1", True)


# --- maintenance -------------------------------------------------------------------------------------------------
async def test_maintenance_due_overdue_schedule_work_orders_completion_and_locate(
        fleet: Fleet, client: httpx.AsyncClient) -> None:
    now, repo = fleet.now, fleet.state.fleet
    repo.set_plan("PV-300", "pm", interval_days=30, now=now - 40 * DAY, manufacturer="Perfusa Medical")
    repo.set_plan("WLB-100", "calibration", interval_days=365, now=now - 10 * DAY)
    # pump-icu-03 was serviced 25 days ago (due in 5 days); pump-icu-01 never (due 10 days ago: overdue).
    done = repo.open_order("pump-icu-03", "pm", by="b-bio", now=now - 26 * DAY)
    repo.close(done.id, by="b-bio", now=now - 25 * DAY, notes="PM kit", parts=["PM-KIT-300"])
    fleet.state.assets.upsert("asset-pump-3", now=now, tag="TAG-P3", type="infusion_pump", unit="ICU",
                              device="pump-icu-03")
    fleet.state.assets.save_locations([AssetLocation("asset-pump-3", "ICU-R05", "ICU", "2", 0.8, now - MIN, now,
                                                     "rdr-icu-1")])
    overdue = await get(client, "/api/v1/fleet/maintenance/due", "u-aud", overdue="true")
    assert [(d["device"], d["kind"], d["due_at"]) for d in overdue] == [("pump-icu-01", "pm", now - 10 * DAY)]
    week = await get(client, "/api/v1/fleet/locate/due", "f-fac")
    assert [(d["device"], d["overdue"], (d["location"] or {}).get("room")) for d in week] == [
        ("pump-icu-01", True, None), ("pump-icu-03", False, "ICU-R05")]
    assert week[1]["due_at"] == now - 25 * DAY + 30 * DAY
    calibrations = await get(client, "/api/v1/fleet/maintenance/due", within_days="400")
    assert len([d for d in calibrations if d["kind"] == "calibration"]) == 8  # the 8 WLB-100 monitors
    # Open planned work orders for the week; a second run opens none.
    opened = (await client.post("/api/v1/fleet/maintenance/schedule", headers=bearer("b-bio"),
                                json={"horizon_days": 7})).json()
    assert sorted((o["device"], o["planned"], o["due_at"]) for o in opened) == [
        ("pump-icu-01", True, now - 10 * DAY), ("pump-icu-03", True, now + 5 * DAY)]
    again = await client.post("/api/v1/fleet/maintenance/schedule", headers=bearer("b-bio"), json={"horizon_days": 7})
    assert again.json() == []
    order = {o["device"]: o["id"] for o in opened}
    # Assign and close pump-icu-03's order with notes and parts; closing twice is refused.
    assigned = await client.post(f"/api/v1/fleet/work-orders/{order['pump-icu-03']}/assign", headers=bearer("b-bio"),
                                 json={"to": "b-bio"})
    assert (assigned.json()["status"], assigned.json()["assigned_to"]) == ("assigned", "b-bio")
    closed = await client.post(f"/api/v1/fleet/work-orders/{order['pump-icu-03']}/close", headers=bearer("b-bio"),
                               json={"notes": "replaced the door seal", "parts": ["SEAL-300"]})
    assert (closed.json()["status"], closed.json()["parts"]) == ("closed", ["SEAL-300"])
    twice = await client.post(f"/api/v1/fleet/work-orders/{order['pump-icu-03']}/close", headers=bearer("b-bio"),
                              json={})
    assert twice.status_code == 409
    # Completion of planned maintenance due in the last 30 days and the coming week: 1 of 2, on time.
    rates = await get(client, "/api/v1/fleet/maintenance/completion", "u-aud", start=str(now - 30 * DAY),
                      end=str(now + 7 * DAY))
    (pm,) = [r for r in rates if r["kind"] == "pm"]
    assert (pm["due"], pm["completed"], pm["on_time"], pm["rate"], pm["not_done"]) == (
        2, 1, 1, 0.5, [order["pump-icu-01"]])
    # pump-icu-03 is next due a full interval after this service; pump-icu-01 still overdue (the gauge says 1).
    due = {(d["device"], d["kind"]): d for d in await get(client, "/api/v1/fleet/maintenance/due")}
    assert due["pump-icu-03", "pm"]["due_at"] == closed.json()["closed_at"] + 30 * DAY
    await fleet.gauges.refresh()
    text = (await client.get("/metrics")).text
    assert 'wardlink_fleet_maintenance_overdue{kind="pm"} 1' in text
    assert 'wardlink_fleet_maintenance_overdue{kind="calibration"} 0' in text
    orders = await get(client, "/api/v1/fleet/reports/work_orders", "u-aud")
    assert {o["status"] for o in orders} == {"open", "closed"}
    report = await client.get("/api/v1/fleet/reports/completion.csv", headers=bearer("u-aud"),
                              params={"start": str(now - 30 * DAY), "end": str(now + 7 * DAY)})
    assert report.headers["content-type"].startswith("text/csv")
    assert {r["kind"]: r["rate"] for r in csv.DictReader(io.StringIO(report.text))} == {"pm": "0.5", "all": "0.5"}
    actions = {r.action for r in fleet.state.audit.records()}
    assert {"fleet.schedule", "fleet.order.assign", "fleet.order.close", "fleet.report"} <= actions


# --- pure figures ------------------------------------------------------------------------------------------------
def _device(device_id: str, **fields: Any) -> Device:
    base: dict[str, Any] = {"id": device_id, "driver": "modbus_pump", "gateway": "gw", "unit": "ICU", "bed": None,
                            "manufacturer": "Perfusa Medical", "model": "PV-300", "serial_number": "", "udi": None,
                            "risk_class": None, "life_support": False, "firmware": "", "connection": {},
                            "discovered": False, "updated": 0, "retired_at": None}
    return Device(**{**base, **fields})


def test_versions_order_numerically_and_recall_ranges_are_inclusive() -> None:
    assert sorted(["2.10.0", "2.9", "2.9.1", "10.0", "2.9a"], key=figures.version_key) == [
        "2.9", "2.9.1", "2.9a", "2.10.0", "10.0"]
    recall = Recall("R", model="pv-300", firmware_min="2.4", firmware_max="2.9")
    devices = [_device("a", firmware="2.4"), _device("b", firmware="2.9"), _device("c", firmware="2.10"),
               _device("d"), _device("e", model="PV-400", firmware="2.5")]
    assert [(m.device, m.firmware_unknown) for m in figures.recall_matches(recall, devices)] == [
        ("a", False), ("b", False), ("d", True)]


def test_uptime_counts_only_known_time_and_the_state_before_the_period() -> None:
    changes = [LinkChange("d", "device", "gw", "lost", 30), LinkChange("d", "device", "gw", "connected", 70)]
    before = LinkChange("d", "device", "gw", "connected", -5)
    assert figures.uptime("d", before, changes, 0, 100) == figures.Uptime("d", 100, 60, 100, 1)
    late = figures.uptime("d", None, changes, 0, 100)  # first heard at 30: the first 30 are unknown
    assert (late.known_ms, late.connected_ms, late.ratio) == (70, 30, round(30 / 70, 4))


def test_due_dates_follow_the_last_completion_and_completion_counts_by_period_end() -> None:
    plan = MaintenancePlan("PV-300", "pm", "", 10, True, created=0, updated=0)
    items = figures.due_items([_device("a"), _device("b"), _device("c", retired_at=5)], [plan],
                              {("b", "pm"): 4 * DAY})
    assert [(i.device, i.due_at) for i in items] == [("a", 10 * DAY), ("b", 14 * DAY)]
    def order(n: int, due: int, closed: int | None) -> WorkOrder:
        return WorkOrder(n, "a", "pm", "closed" if closed else "open", True, "", due, 0, "x", None, None, closed,
                         None, "", [])
    (pm, total) = figures.completion([order(1, 10, 9), order(2, 20, 25), order(3, 30, None), order(4, 200, 1)], 0, 100)
    assert (pm.kind, pm.due, pm.completed, pm.on_time, pm.rate, pm.open) == ("pm", 3, 2, 1, round(2 / 3, 4), [3])
    assert total.kind == "all"
    assert figures.completion([], 0, 100)[0].rate == 1.0


def test_a_failed_write_of_connection_changes_is_retried_with_the_next_status(tmp_path: Path) -> None:
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        recorder = FleetRecorder(state.fleet)
        with state.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE connection_log RENAME TO connection_log_away")
        recorder.observe(GatewayStatus("gw-icu", "online", 1_000, devices=[DeviceHealth("mon-1", "connected")]))
        assert (recorder.failures, recorder.recorded) == (1, 0)
        with state.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE connection_log_away RENAME TO connection_log")
        recorder.observe(GatewayStatus("gw-icu", "online", 2_000, devices=[DeviceHealth("mon-1", "connected")]))
        assert [(c.subject, c.state, c.ts) for c in state.fleet.links(start=0, end=10_000)] == [
            ("gw-icu", "online", 2_000), ("mon-1", "connected", 2_000)]
    finally:
        state.close()


def test_a_last_will_is_recorded_after_the_gateways_newest_status_not_at_the_time_it_carries(tmp_path: Path) -> None:
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        recorder = FleetRecorder(state.fleet)
        # The will is composed at connect (ts 1_000), before the birth (1_005) and heartbeats (6_005).
        for ts in (1_005, 6_005):
            recorder.observe(GatewayStatus("gw-icu", "online", ts, devices=[DeviceHealth("mon-1", "connected")]))
        recorder.observe(GatewayStatus("gw-icu", "offline", 1_000, devices=[DeviceHealth("mon-1", "connecting")]))
        recorder.observe(GatewayStatus("gw-icu", "online", 9_000, devices=[DeviceHealth("mon-1", "connected")]))
        assert [(c.subject, c.state, c.ts) for c in state.fleet.links(start=0, end=10_000)] == [
            ("gw-icu", "online", 1_005), ("mon-1", "connected", 1_005), ("gw-icu", "offline", 6_006),
            ("mon-1", "gateway_offline", 6_006), ("gw-icu", "online", 9_000), ("mon-1", "connected", 9_000)]
    finally:
        state.close()
