"""Facilities API through httpx on its own FastAPI app: roles, unit scope (404 like missing), answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.access import Access
from api.facilities_routes import facilities_router
from api.security import Authenticator, LocalTokens
from devices.clock import now_ms
from devices.contract import Observation, TagRead
from devices.site import Site, site_from_dict
from facilities.service import FacilitiesService, FacilitiesSettings
from state.assets import AssetLocation
from state.db import State, open_state
from storage.memory import MemoryStore

SITE = {
    "id": "test", "name": "test hospital",
    "units": [{"id": "W3", "name": "3 West", "beds": ["W3-01"]}, {"id": "ICU", "name": "ICU", "beds": ["ICU-01"]}],
    "gateways": [{"id": "gw-w3", "unit": "W3"}],
    "rooms": [{"id": "W3-R01", "unit": "W3", "zone": "W3", "floor": "3"},
              {"id": "W3-R02", "unit": "W3", "zone": "W3", "floor": "3"},
              {"id": "W3-R03", "unit": "W3", "zone": "W3", "floor": "3"},
              {"id": "ICU-R01", "unit": "ICU", "zone": "ICU", "floor": "2"}],
    "devices": [{"id": "rdr-1", "kind": "rfid_mqtt", "gateway": "gw-w3", "room": "W3-R01"},
                {"id": "pump-w3-01", "kind": "modbus_pump", "gateway": "gw-w3", "bed": "W3-01"}],
}
TOKENS = LocalTokens(b"k" * 32)


@pytest.fixture
def site() -> Site:
    return site_from_dict(SITE)


@pytest.fixture
def state(tmp_path: Path, site: Site) -> Iterator[State]:
    opened = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    now = now_ms()
    opened.registry.seed_from_site(site, now)
    for staff, name, role in (("fm-1", "Fay Facilities", "facilities"), ("bio-1", "Bo Biomed", "biomed"),
                              ("rn-w3", "Nia Nurse", "nurse"), ("cn-icu", "Cy Charge", "charge_nurse"),
                              ("aud-1", "Al Auditor", "auditor")):
        opened.assignments.add_staff(staff, name, role)
    opened.assignments.assign("rn-w3", "W3", "primary", now - 3_600_000, now + 3_600_000, bed="W3-01")
    opened.assignments.assign("cn-icu", "ICU", "charge", now - 3_600_000, now + 3_600_000)
    t = now - 600_000
    opened.assets.upsert("pump-7", now=t, tag="T7", type="infusion_pump", unit="W3", device="pump-w3-01")
    opened.assets.upsert("pump-8", now=t, tag="T8", type="infusion_pump", unit="W3")
    opened.assets.upsert("pump-9", now=t, tag="T9", type="infusion_pump", unit="ICU")
    opened.assets.upsert("wc-1", now=t, tag="T1", type="wheelchair", unit="W3", status="dirty")
    opened.assets.save_locations([AssetLocation("pump-8", "W3-R03", "W3", "3", 0.9, t, t + 1000, "rdr-3"),
                                  AssetLocation("pump-9", "W3-R02", "W3", "3", 0.9, t, t + 1000, "rdr-2"),
                                  AssetLocation("wc-1", "W3-R02", "W3", "3", 0.9, t, t + 1000, "rdr-2")])
    yield opened
    opened.close()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def client(site: Site, state: State, store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(facilities_router(site, state, store, Access(site, state, Authenticator(state, TOKENS))))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


def auth(staff: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue(staff)}"}


async def test_where_is_it_now_and_at_a_time_from_the_service(site: Site, state: State, store: MemoryStore,
                                                            client: httpx.AsyncClient) -> None:
    service = FacilitiesService(site, state, settings=FacilitiesSettings(site_map=""), store=store)
    start = now_ms() - 120_000
    service.handle([TagRead(device="rdr-1", stream="tags", seq=i, ts=start + i * 1000, tag="T7", rssi=-50.0)
                    for i in range(10)], start)
    service.handle([Observation(device="pump-w3-01", stream="p", seq=1, ts=start + 5000,
                                metric="WARDLINK_PUMP_STATE", value=1.0, unit="1")], start)
    service.flush()
    service.write_history()  # "at" is answered from the time-series store
    now = (await client.get("/api/v1/facilities/assets/pump-7/location", headers=auth("fm-1"))).json()
    assert (now["room"], now["zone"], now["floor"], now["source"], now["since"], now["last_seen"], now["status"]) == (
        "W3-R01", "W3", "3", "rdr-1", start + 5000, start + 9000, "in_use")  # placed after 3 reads over 5 s
    assert now["dwell_ms"] >= 115_000 - 1000
    assert now["confidence"] > 0.5
    before = (await client.get("/api/v1/facilities/assets/pump-7/location", params={"at": start - 1},
                               headers=auth("fm-1"))).json()
    assert before["room"] is None
    then = (await client.get("/api/v1/facilities/assets/pump-7/location", params={"at": start + 7000},
                             headers=auth("rn-w3"))).json()
    assert (then["room"], then["since"], then["at"]) == ("W3-R01", start + 5000, start + 7000)
    never = (await client.get("/api/v1/facilities/assets/pump-8/location", headers=auth("fm-1"))).json()
    assert never["room"] == "W3-R03"


async def test_unit_scope_answers_404_like_missing(client: httpx.AsyncClient) -> None:
    other = await client.get("/api/v1/facilities/assets/pump-9/location", headers=auth("rn-w3"))  # an ICU pump
    missing = await client.get("/api/v1/facilities/assets/pump-404/location", headers=auth("rn-w3"))
    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json()["detail"].replace("pump-9", "X") == missing.json()["detail"].replace("pump-404", "X")
    assert (await client.get("/api/v1/facilities/assets/pump-9/location", headers=auth("cn-icu"))).status_code == 200
    assert (await client.get("/api/v1/facilities/assets/pump-9/location", headers=auth("aud-1"))).status_code == 403
    assert (await client.get("/api/v1/facilities/assets/pump-9/location")).status_code == 401
    listed = (await client.get("/api/v1/facilities/assets", params={"room": "W3-R02"}, headers=auth("rn-w3"))).json()
    assert [a["id"] for a in listed] == ["wc-1"]  # pump-9 is in a W3 room but belongs to the ICU
    everyone = (await client.get("/api/v1/facilities/assets", params={"zone": "W3"}, headers=auth("fm-1"))).json()
    assert [a["id"] for a in everyone] == ["pump-8", "pump-9", "wc-1"]
    assert (await client.get("/api/v1/facilities/assets", params={"unit": "ICU"},
                             headers=auth("rn-w3"))).status_code == 404


async def test_nearest_available_of_a_type(client: httpx.AsyncClient) -> None:
    near = (await client.get("/api/v1/facilities/assets/nearest", params={"type": "infusion_pump", "from": "W3-R01"},
                             headers=auth("fm-1"))).json()
    assert [(a["id"], a["room"], a["distance_m"]) for a in near] == [("pump-9", "W3-R02", 8.0),
                                                                   ("pump-8", "W3-R03", 16.0)]
    mine = (await client.get("/api/v1/facilities/assets/nearest", params={"type": "infusion_pump", "from": "W3-R01"},
                             headers=auth("rn-w3"))).json()
    assert [a["id"] for a in mine] == ["pump-8"]  # never located pump-7 and the ICU's pump-9 are left out
    chairs = (await client.get("/api/v1/facilities/assets/nearest", params={"type": "wheelchair", "from": "W3-R01"},
                               headers=auth("fm-1"))).json()
    assert chairs == []  # the only wheelchair is dirty
    assert (await client.get("/api/v1/facilities/assets/nearest", params={"type": "wheelchair", "from": "nowhere"},
                             headers=auth("fm-1"))).status_code == 404


async def test_par_levels_status_and_utilisation(client: httpx.AsyncClient, state: State) -> None:
    put = await client.put("/api/v1/facilities/par/W3/wheelchair", json={"minimum": 2}, headers=auth("fm-1"))
    assert put.status_code == 200
    assert (await client.put("/api/v1/facilities/par/W3/wheelchair", json={"minimum": 1},
                             headers=auth("rn-w3"))).status_code == 403
    short = (await client.get("/api/v1/facilities/par", headers=auth("rn-w3"))).json()
    assert short == [{"unit": "W3", "type": "wheelchair", "minimum": 2, "available": 0, "missing": 2}]
    assert (await client.get("/api/v1/facilities/par", headers=auth("cn-icu"))).json() == []  # not their unit
    cleaned = await client.put("/api/v1/facilities/assets/wc-1/status", json={"status": "clean"}, headers=auth("bio-1"))
    assert cleaned.json()["status"] == "clean"
    short = (await client.get("/api/v1/facilities/par", params={"unit": "W3"}, headers=auth("fm-1"))).json()
    assert [s["available"] for s in short] == [1]
    actions = {r.action for r in state.audit.records()}
    assert {"par.set", "asset.status"} <= actions
    start = now_ms() - 1_000
    await client.put("/api/v1/facilities/assets/pump-8/status", json={"status": "in_use"}, headers=auth("fm-1"))
    end = now_ms() + 1_000
    rows = (await client.get("/api/v1/facilities/utilisation", params={"start": start, "end": end,
                                                                        "type": "infusion_pump"},
                             headers=auth("fm-1"))).json()
    w3 = next(r for r in rows if r["unit"] == "W3")
    assert w3["assets"] == 2
    assert 0 < w3["utilisation"] <= 0.5  # one of two pumps in use for part of the period
    assert (await client.get("/api/v1/facilities/utilisation", params={"start": start, "end": end},
                             headers=auth("rn-w3"))).status_code == 403
    icu = (await client.get("/api/v1/facilities/utilisation", params={"start": start, "end": end},
                            headers=auth("cn-icu"))).json()
    assert {r["unit"] for r in icu} == {"ICU"}
