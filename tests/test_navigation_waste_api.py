"""Navigation and waste routes on their own FastAPI app over SQLite, called through httpx with real tokens."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI

from api.access import Access
from api.navigation_routes import navigation_router
from api.security import Authenticator, LocalTokens
from api.waste_routes import waste_router
from devices.clock import now_ms
from devices.contract import WasteEvent
from facilities.service import FacilitiesService, FacilitiesSettings
from facilities.sitemap import SiteMap, load_site_map
from facilities.waste import WasteSettings, WasteTracker
from gateway.service import Gateway, GatewaySettings
from ingest.service import Ingest
from simulators.modbus.devices import WasteStoreLogger
from simulators.scenario import Scenario, load_scenario, start
from state.assets import AssetLocation
from state.db import State, open_state
from storage.sqlite import SqliteStore
from tests.auth import Roster, roster
from tests.conftest import Mosquitto
from wardlink.config import load

HOUR = 3_600_000
SITE = load(env={}).site
MAP = load_site_map()
STAFF: list[Roster] = [
    ("n-ann", "Ann", "nurse", "ICU", "primary", "ICU-03"),
    ("c-wil", "Wil", "charge_nurse", "W3", "charge", None),
    ("n-wes", "Wes", "nurse", "W3", "primary", "W3-01"),
    ("f-fay", "Fay", "facilities", None, None, None),
    ("b-bio", "Bio", "biomed", None, None, None),
    ("a-aud", "Aud", "auditor", None, None, None),
    ("x-adm", "Adm", "admin", None, None, None),
]


@dataclass
class Api:
    client: httpx.AsyncClient
    state: State
    tokens: LocalTokens

    async def get(self, path: str, staff: str | None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens.issue(staff)}"} if staff else {}
        return await self.client.get(path, headers=headers, params=params)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    relational = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    relational.registry.seed_from_site(SITE, now_ms())
    yield relational
    relational.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "timeseries.db")
    yield opened
    opened.close()


@pytest.fixture
async def api(state: State, store: SqliteStore) -> AsyncIterator[Api]:
    now = now_ms()
    roster(state, STAFF, now=now)
    tokens = LocalTokens(b"k" * 32)
    access = Access(SITE, state, Authenticator(state, tokens))
    app = FastAPI()
    app.include_router(navigation_router(MAP, state, access))
    app.include_router(waste_router(SITE, state, access, store=store, site_map=MAP))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wardlink") as client:
        yield Api(client, state, tokens)


def kinds(route: dict[str, Any], site_map: SiteMap = MAP) -> set[str]:
    """Which kinds of edge a route's path takes (from the map itself, not from the route's own words)."""
    lifts = {f"{lift.id}@" for lift in site_map.lifts}
    stairs = {s: stairs.id for stairs in site_map.stairs for s in stairs.stops}
    path = route["path"]
    found = set()
    for a, b in itertools.pairwise(path):
        if any(a.startswith(p) or b.startswith(p) for p in lifts):
            found.add("lift")
        if a in stairs and b in stairs and stairs[a] == stairs[b]:
            found.add("stairs")
    return found


def restricted_nodes(route: dict[str, Any]) -> list[str]:
    restricted = {r.id for r in MAP.rooms if r.restricted} | {j.id for j in MAP.junctions if j.restricted}
    restricted |= {f"{lift.id}@{MAP.junction_index[s].floor}" for lift in MAP.lifts if lift.restricted
                   for s in lift.stops}
    return [n for n in route["path"] if n in restricted]


# -- navigation -------------------------------------------------------------------------------------

async def test_staff_route_from_a_bed_to_the_waste_store_across_buildings(api: Api) -> None:
    response = await api.get("/api/v1/navigation/route", "f-fay", **{"from": "W3-05", "to": "B1-WASTE-STORE"})
    assert response.status_code == 200, response.text
    route = response.json()
    assert route["from"] == {"kind": "bed", "id": "W3-05"}
    assert route["path"][0] == "A3-W3-R03"
    assert route["path"][-1] == "B1-WASTE-STORE"
    assert route["buildings"] == ["A", "B"]
    assert route["floors"][0] == "A3"
    assert route["floors"][-1] == "B1"
    assert route["floors_crossed"] == 2
    assert route["length_m"] == pytest.approx(sum(s["distance_m"] for s in route["steps"]), abs=0.5)
    assert route["time_s"] > route["length_m"] / 1.5
    instructions = [s["instruction"] for s in route["steps"]]
    assert instructions[0] == "Start at 3 West room 3"
    assert instructions[-1] == "Arrive at Central medical-waste storage (temporary)"
    assert any("turn left" in i or "turn right" in i for i in instructions)


async def test_wheelchair_never_takes_stairs_and_takes_the_ramp_at_the_entrance(api: Api) -> None:
    entrance = {"from": "A1-MAIN-EXIT", "to": "A1-RECEPTION"}
    staff = (await api.get("/api/v1/navigation/route", "n-wes", **entrance)).json()
    assert "A1-ENT-steps" not in staff["path"]
    assert staff["path"][:3] == ["A1-MAIN-EXIT", "A1-ENT", "A1-J05"], "staff take the three steps"
    chair = (await api.get("/api/v1/navigation/route", "n-wes", **{"from": "A1-MAIN-EXIT", "to": "A1-RECEPTION",
                                                                     "profile": "wheelchair"})).json()
    assert chair["path"][:3] == ["A1-MAIN-EXIT", "A1-ENT", "A1-J04"], "the wheelchair takes the ramp"
    assert any(s["kind"] == "ramp" for s in chair["steps"])
    for origin, destination in (("A1-PORTERS", "A4-THEATRE-1"), ("ICU-01", "B2-BIOMED"), ("W3-08", "A1-EXIT-EAST")):
        staff_route = (await api.get("/api/v1/navigation/route", "b-bio",
                                     **{"from": origin, "to": destination})).json()
        wheelchair = (await api.get("/api/v1/navigation/route", "b-bio",
                                    **{"from": origin, "to": destination, "profile": "wheelchair"})).json()
        assert "stairs" not in kinds(wheelchair), (origin, destination)
        assert all(s["kind"] != "stairs" for s in wheelchair["steps"])
        assert wheelchair["time_s"] >= staff_route["time_s"]
    assert "stairs" in kinds(staff_route) or "lift" in kinds(staff_route)


async def test_bed_transport_uses_a_bed_lift_and_waits_for_it(api: Api) -> None:
    route = (await api.get("/api/v1/navigation/route", "n-ann", **{"from": "ICU-03", "to": "A1-IMAGING",
                                                                     "profile": "bed_transport"})).json()
    assert "lift" in kinds(route)
    assert "stairs" not in kinds(route)
    lifts = [s for s in route["steps"] if s["kind"] == "lift"]
    assert len(lifts) == 1
    bed_lifts = {lift.id for lift in MAP.lifts if lift.bed}
    used = {n.split("@")[0] for n in route["path"] if "@" in n}
    assert used <= bed_lifts, "never the visitor lift L2, which takes no bed"
    assert lifts[0]["instruction"].startswith("Take lift L")
    assert "to floor 1" in lifts[0]["instruction"]
    waits = {lift.id: lift.wait_s for lift in MAP.lifts}
    assert lifts[0]["time_s"] >= waits[used.pop()], "a lift costs its waiting time"
    staff = (await api.get("/api/v1/navigation/route", "n-ann", **{"from": "ICU-03", "to": "A1-IMAGING"})).json()
    assert staff["time_s"] < route["time_s"]


async def test_visitors_never_enter_restricted_areas(api: Api) -> None:
    for origin, destination in (("A1-MAIN-EXIT", "ICU-05"), ("A1-MAIN-EXIT", "W3-08"), ("A4-WAITING", "A2-WC"),
                                ("A3-DAYROOM", "A1-CAFE")):
        route = (await api.get("/api/v1/navigation/route", "n-wes",
                               **{"from": origin, "to": destination, "profile": "visitor"})).json()
        assert restricted_nodes(route) == [], (origin, destination)
    staff = (await api.get("/api/v1/navigation/route", "f-fay", **{"from": "A1-PORTERS", "to": "A4-WAITING"})).json()
    assert restricted_nodes(staff) != [], "staff may go where visitors may not"
    refused = await api.get("/api/v1/navigation/route", "f-fay", **{"from": "A1-MAIN-EXIT", "to": "B1-WASTE-STORE",
                                                                     "profile": "visitor"})
    assert refused.status_code == 422
    assert "closed to visitors" in refused.json()["detail"]


async def test_routes_to_an_asset_where_it_is_now(api: Api, state: State) -> None:
    now = now_ms()
    state.assets.upsert("pump-017", now=now, tag="E28011606000000000000017", type="infusion_pump")
    state.assets.save_locations([AssetLocation(asset="pump-017", room="A3-W3-STORE", zone=None, floor="A3",
                                               confidence=0.9, since=now - 60_000, last_seen=now, source="rdr-w3-1")])
    response = await api.get("/api/v1/navigation/route", "n-ann", **{"from": "ICU-02", "to": "pump-017"})
    assert response.status_code == 200, response.text
    route = response.json()
    assert route["to"]["kind"] == "asset"
    assert route["to"]["room"] == "A3-W3-STORE"
    assert route["path"][-1] == "A3-W3-STORE"
    missing = await api.get("/api/v1/navigation/route", "n-ann", **{"from": "ICU-02", "to": "pump-999"})
    assert missing.status_code == 404


async def test_navigation_roles_and_bad_input(api: Api) -> None:
    query = {"from": "ICU-01", "to": "W3-01"}
    assert (await api.get("/api/v1/navigation/route", None, **query)).status_code == 401
    assert (await api.get("/api/v1/navigation/route", "a-aud", **query)).status_code == 403
    assert (await api.get("/api/v1/navigation/route", "x-adm", **query)).status_code == 403
    for staff in ("n-ann", "c-wil", "f-fay", "b-bio"):
        assert (await api.get("/api/v1/navigation/route", staff, **query)).status_code == 200, staff
    assert (await api.get("/api/v1/navigation/route", "f-fay", **{**query, "profile": "skater"})).status_code == 422
    assert (await api.get("/api/v1/navigation/route", "f-fay", **{**query, "to": "NOWHERE"})).status_code == 404


def test_wayfinder_distances_rank_rooms_by_walking_distance() -> None:
    from facilities.wayfinding import Wayfinder

    distances = Wayfinder(MAP).distances_from("A3-W3-R01", "staff")
    assert distances["A3-W3-R01"] == 0.0
    assert distances["A3-W3-R02"] < distances["A3-W3-STORE"] < distances["A2-ICU-STORE"] < distances["B2-STORE"]
    chair = Wayfinder(MAP).distances_from("A3-W3-R01", "wheelchair")
    assert "A4-PLANT" not in chair, "the plant room's door has a step"
    assert set(distances) - set(chair) == {"A1-PLANT", "A4-PLANT", "B1-PLANT"} & set(distances)


# -- waste reports and the register ---------------------------------------------------------------

def journey(state: State, bag: str, unit: str, t0: int, *, category: str = "infectious", weight: float = 1000.0,
            stored: float | None = None, steps: int = 4) -> None:
    tracker = WasteTracker(SITE, state)
    points = ("ward", "collector", "storage", "disposer")[:steps]
    for i, point in enumerate(points):
        grams = stored if point == "storage" and stored is not None else weight
        tracker.handle(WasteEvent(device=f"wst-{point}", stream="waste", seq=0, ts=t0 + i * HOUR, bag=bag,
                                  category=category, weight_g=grams, point=point,  # type: ignore[arg-type]
                                  handler={"ward": f"N-{unit}", "collector": "C-0007", "storage": "S-0003",
                                           "disposer": "DISP-LIC-4401"}[point], unit=unit,
                                  manifest="ZY-2026-0001" if point == "disposer" else None), t0 + i * HOUR)


async def test_bag_chain_lookup_is_scoped_to_the_nurse_unit(api: Api, state: State) -> None:
    t0 = now_ms() - 10 * HOUR
    journey(state, "MW-W3-1", "W3", t0, stored=1030.0)
    journey(state, "MW-ICU-1", "ICU", t0, category="sharps", steps=2)
    response = await api.get("/api/v1/waste/bags/MW-W3-1", "n-wes")
    assert response.status_code == 200, response.text
    chain = response.json()
    assert chain["sealed"]["by"] == "N-W3"
    assert chain["department"] == "W3"
    assert chain["complete"]
    assert [(s["from"], s["to"], s["handed_over_by"], s["received_by"]) for s in chain["steps"]] == [
        ("ward", "collector", "N-W3", "C-0007"), ("collector", "storage", "C-0007", "S-0003"),
        ("storage", "disposer", "S-0003", "DISP-LIC-4401")]
    assert [s["weight_check"] for s in chain["steps"]] == ["ok", "flagged", "flagged"], "1030 g in, 1000 g out"
    assert chain["steps"][2]["manifest"] == "ZY-2026-0001"
    assert chain["retained_until"] >= t0 + 3 * 365 * 24 * HOUR
    other = await api.get("/api/v1/waste/bags/MW-ICU-1", "n-wes")
    missing = await api.get("/api/v1/waste/bags/MW-NONE", "n-wes")
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"].replace("MW-ICU-1", "X") == missing.json()["detail"].replace("MW-NONE", "X")
    assert (await api.get("/api/v1/waste/bags/MW-ICU-1", "n-ann")).json()["at"] == "collector"
    assert (await api.get("/api/v1/waste/bags/MW-ICU-1", "f-fay")).status_code == 200
    assert (await api.get("/api/v1/waste/bags/MW-ICU-1", "b-bio")).status_code == 403


async def test_weights_per_department_category_day_and_month(api: Api, state: State) -> None:
    t0 = now_ms() - 30 * HOUR
    journey(state, "W3-A", "W3", t0, weight=1500.0)
    journey(state, "W3-B", "W3", t0 + 60_000, weight=500.0)
    journey(state, "W3-C", "W3", t0, category="sharps", weight=300.0, steps=1)
    journey(state, "ICU-A", "ICU", t0, weight=2000.0, steps=2)
    site = (await api.get("/api/v1/waste/reports/weights", "f-fay", period="month")).json()
    by_key = {(r["department"], r["category"]): r for r in site["rows"]}
    assert by_key[("W3", "infectious")]["bags"] == 2
    assert by_key[("W3", "infectious")]["weight_kg"] == 2.0
    assert by_key[("W3", "sharps")]["weight_kg"] == 0.3
    assert by_key[("ICU", "infectious")]["weight_kg"] == 2.0
    assert site["total_kg"] == 4.3
    daily = (await api.get("/api/v1/waste/reports/weights", "f-fay", period="day")).json()
    assert sum(r["weight_kg"] for r in daily["rows"]) == pytest.approx(4.3)
    assert all(len(r["period"]) == 10 for r in daily["rows"])
    nurse = (await api.get("/api/v1/waste/reports/weights", "c-wil", period="month")).json()
    assert {r["department"] for r in nurse["rows"]} == {"W3"}, "a charge nurse sees their own unit only"
    assert (await api.get("/api/v1/waste/reports/weights", "c-wil", unit="ICU")).status_code == 404
    assert (await api.get("/api/v1/waste/reports/weights", "b-bio")).status_code == 403


async def test_handover_register_csv_for_the_regulator(api: Api, state: State) -> None:
    t0 = now_ms() - 10 * HOUR
    journey(state, "MW-W3-1", "W3", t0, stored=1030.0)
    journey(state, "MW-W3-2", "W3", t0 + 60_000, category="pathological", steps=3)
    response = await api.get("/api/v1/waste/register.csv", "a-aud")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text.lstrip("\ufeff"))))
    assert len(rows) == 5
    assert [r["bag"] for r in rows] == ["MW-W3-1", "MW-W3-2", "MW-W3-1", "MW-W3-2", "MW-W3-1"]
    first = rows[0]
    assert first["department"] == "W3"
    assert first["category"] == "infectious"
    assert first["weight_kg"] == "1.0"
    assert (first["from"], first["to"], first["handed_over_by"], first["received_by"]) == (
        "ward", "collector", "N-W3", "C-0007")
    assert first["time"].endswith("+08:00")
    assert [r["weight_check"] for r in rows if r["to"] == "storage"] == ["flagged", "ok"]
    assert [r["manifest"] for r in rows if r["to"] == "disposer"] == ["ZY-2026-0001"]
    assert (await api.get("/api/v1/waste/register.csv", "f-fay")).status_code == 200
    assert (await api.get("/api/v1/waste/register", "n-wes")).status_code == 403
    exports = state.audit.records(after=0, limit=100, actor="a-aud")
    assert [r.action for r in exports] == ["waste.register.export"]


async def test_weight_reconciliation_and_the_bags_held_in_storage_with_their_age(api: Api, state: State) -> None:
    now = now_ms()
    local = timezone(timedelta(minutes=WasteSettings().utc_offset_min))

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=local).date().isoformat()

    t0 = now - 10 * HOUR
    journey(state, "MW-R-1", "W3", t0, stored=1030.0)  # 3 % heavier into storage: flagged, and again out of it
    journey(state, "MW-R-2", "W3", t0 + 60_000, category="sharps", weight=500.0, stored=505.0, steps=3)  # held, 1 %
    journey(state, "MW-R-NEAR", "ICU", now - 42 * HOUR, steps=3)  # in storage since 40 h ago: near the 48 h limit
    journey(state, "MW-R-OVER", "ICU", now - 52 * HOUR, steps=3)  # since 50 h ago: over it
    window = {"start": day(t0), "end": day(now)}
    answer = await api.get("/api/v1/waste/reconciliation", "f-fay", **window)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["total"], report["flagged"], report["tolerance_pct"]) == (2, 1, 2.0)
    assert [r["bag"] for r in report["rows"]] == ["MW-R-1", "MW-R-2"], "the flagged bag first"
    flagged = report["rows"][0]
    assert [(p["point"], p["weight_g"], p["weight_check"]) for p in flagged["points"]] == [
        ("ward", 1000.0, ""), ("collector", 1000.0, "ok"), ("storage", 1030.0, "flagged"),
        ("disposer", 1000.0, "flagged")]
    assert [p["difference_pct"] for p in flagged["points"]] == [None, 0.0, 3.0, -2.91]
    assert (flagged["at"], flagged["department"], flagged["flagged"]) == ("disposer", "W3", True)
    held = report["rows"][1]
    assert (held["at"], held["flagged"], held["points"][-1]["difference_pct"]) == ("storage", False, 1.0)
    only = (await api.get("/api/v1/waste/reconciliation", "a-aud", limit=1, **window)).json()
    assert ([r["bag"] for r in only["rows"]], only["total"]) == (["MW-R-1"], 2)
    today = (await api.get("/api/v1/waste/reconciliation", "f-fay")).json()
    assert today["start"] == today["end"] == day(now_ms())
    assert (await api.get("/api/v1/waste/reconciliation", "f-fay", start="2026-01-01", end="2026-03-01")).status_code \
        == 422, "at most a month"
    assert (await api.get("/api/v1/waste/reconciliation", "n-wes")).status_code == 403
    assert (await api.get("/api/v1/waste/reconciliation", "b-bio")).status_code == 403

    store = (await api.get("/api/v1/waste/storage", "f-fay")).json()
    assert [(b["bag"], b["limit"]) for b in store["bags"]] == [
        ("MW-R-OVER", "over"), ("MW-R-NEAR", "near"), ("MW-R-2", "ok")], "oldest first, each against 48 h"
    assert (store["bags_held"], store["oldest_since"], store["near_hours"]) == (3, now - 50 * HOUR, 36.0)
    over, _, mine = store["bags"]
    assert over["age_h"] == pytest.approx(50, abs=0.1)
    assert over["due_at"] == over["since"] + 48 * HOUR
    assert (mine["category"], mine["department"], mine["weight_g"], mine["collected_weight_g"]) == (
        "sharps", "W3", 505.0, 500.0)
    assert (mine["difference_pct"], mine["weight_check"]) == (1.0, "ok")


# -- the waste store's temperature logger in the demo hospital -------------------------------------------

async def test_the_demo_waste_store_logger_shows_in_the_waste_api_with_its_alert(
        api: Api, state: State, store: SqliteStore, mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The demo scenario's logger (Modbus, fridge_logger map) -> gateway gw-w3 -> ingest and facilities -> API."""
    config = load(env={})
    lines = [line for line in load_scenario(config.simulation.scenario).modbus
             if "temp-waste-store" in {u.device for u in line.units}]
    assert len(lines) == 1, "the demo scenario simulates the waste store's logger"
    running = await start(Scenario(modbus=lines), mosquitto.address, {})
    tasks: list[asyncio.Task[Any]] = []
    try:
        logger = next(m for server in running.modbus for m in server.units.values()
                      if isinstance(m, WasteStoreLogger))
        logger.cycle_s = 0  # the test drives the cooling
        # The demo site's devices on that line (the logger and the ward's scale), polled quickly.
        devices = [msgspec.structs.replace(d, connection={**d.connection, **running.connections[d.id], "poll_s": 0.2})
                   for d in config.site.devices if d.id in running.connections]
        line = msgspec.structs.replace(config.site, devices=devices)  # what the gateway reads here
        assert {d.gateway for d in devices} == {"gw-w3"}
        gateway = Gateway(line, "gw-w3", tmp_path / "outbox.db", mosquitto.address, GatewaySettings(linger_s=0.05))
        ingest = Ingest(line, store, mosquitto.address)
        service = FacilitiesService(config.site, state, mosquitto.address,
                                    FacilitiesSettings(tick_s=0.2, flush_s=0.2, heartbeat_s=1.0), store=store)
        assert service.waste.loggers == {"temp-waste-store"}, "the demo site map puts the logger in the store"
        now = now_ms()
        for step, point in enumerate(("ward", "collector", "storage")):  # one bag arrives in the store
            service.handle([WasteEvent(device=f"wst-{point}", stream="waste", seq=step, ts=now + step, bag="B-1",
                                       category="infectious", weight_g=1500.0, point=point, handler=f"H-{point}",
                                       unit="W3")], now + step)
        tasks = [asyncio.create_task(run()) for run in (gateway.run, ingest.run, service.run)]

        async def storage() -> dict[str, Any]:
            answer = await api.get("/api/v1/waste/storage", "f-fay")
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        async def until(check: Any, seconds: float, what: str) -> dict[str, Any]:
            deadline = asyncio.get_running_loop().time() + seconds
            while not check(view := await storage()):
                assert asyncio.get_running_loop().time() < deadline, f"{what} not within {seconds} s: {view}"
                await asyncio.sleep(0.2)
            return view

        cool = await until(lambda v: v["loggers"][0]["temperature_c"] is not None, 15, "the logger's readings")
        assert (cool["bags_held"], cool["limit_c"], cool["alerts"]) == (1, 20.0, [])
        assert cool["loggers"][0]["device"] == "temp-waste-store"
        assert 14.0 <= cool["loggers"][0]["temperature_c"] <= 16.0
        assert {p["metric"] for p in cool["loggers"][0]["probes"]} == {"WARDLINK_TEMP_FRIDGE_AIR",
                                                                        "WARDLINK_TEMP_FRIDGE_PRODUCT"}
        assert (await api.get("/api/v1/waste/storage", "n-wes")).status_code == 403

        logger.setpoint_c = logger.air_c = 24.0  # the cooling has failed: the air is at 24 C
        warm = await until(lambda v: v["alerts"], 15, "the storage-temperature alert")
        assert [(a["type"], a["source"], a["state"]) for a in warm["alerts"]] == [
            ("waste.storage_temperature", "temp-waste-store", "active")]
        assert warm["alerts"][0]["value"] >= 20.0
        assert warm["loggers"][0]["above_limit"]

        logger.setpoint_c = logger.air_c = logger.product_c = 15.0  # cooled again
        await until(lambda v: not v["alerts"] and not v["loggers"][0]["above_limit"], 15, "the alert resolved")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await running.stop()
