"""Authorisation on every route, generated from the OpenAPI document, and on every WebSocket route of the app.

For every operation the document lists: no token -> 401; every role -> 403 unless the policy below
allows it; an allowed clinical role (a nurse and a charge nurse of the ICU) -> the ICU's object is
found, 3 West's answers 404 exactly like a missing one. A route that is not in POLICY fails the suite:
a new endpoint must come with its rule here. WebSocket routes are not in the OpenAPI document: they are
read from ``app.routes`` and each needs its rule in WS_POLICY. Then the audit of those routes: sign-in,
reads, and the auditor's own routes.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi.routing import iter_route_contexts
from starlette.routing import WebSocketRoute

from api.app import create_app
from api.audit_routes import CSV_FIELDS
from api.limits import LimitSettings
from api.security import Tickets
from api.view import LiveView
from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Alert, encode
from facilities.sitemap import load_site_map
from state.db import State, open_state
from state.escalations import Escalations, StepPlan
from state.fleet import Recall
from storage.memory import MemoryStore
from tests.auth import bearer, parts, served, staff
from wardlink.config import load

CLINICAL = {"nurse", "charge_nurse"}
EVERYONE = {"nurse", "charge_nurse", "facilities", "biomed", "admin", "auditor"}
PUBLIC = {"POST /api/v1/auth/token", "GET /api/v1/health/live"}

POLICY: dict[str, set[str]] = {
    "GET /api/v1/alerts": CLINICAL | {"facilities", "biomed"},
    "POST /api/v1/alerts/{alert_id}/acknowledge": CLINICAL,
    "POST /api/v1/alerts/{alert_id}/comments": CLINICAL,
    "GET /api/v1/alerts/{alert_id}/delivery": CLINICAL,
    "GET /api/v1/alerts/{alert_id}/log": CLINICAL | {"auditor"},
    "GET /api/v1/escalations": CLINICAL,
    "POST /api/v1/alerts/{alert_id}/silence": CLINICAL,
    "POST /api/v1/assignments": {"charge_nurse", "admin"},
    "POST /api/v1/assignments/{assignment_id}/end": {"charge_nurse", "admin"},
    "GET /api/v1/audit": {"auditor"},
    "GET /api/v1/audit/export.csv": {"auditor"},
    "GET /api/v1/audit/verify": {"auditor"},
    "GET /api/v1/auth/me": EVERYONE,
    "POST /api/v1/auth/ws-ticket": EVERYONE,
    "GET /api/v1/beds": CLINICAL | {"facilities", "biomed"},
    "GET /api/v1/beds/{bed}/alarm-settings": CLINICAL | {"auditor"},
    "GET /api/v1/beds/{bed}/alarm-settings/changes": CLINICAL | {"auditor"},
    "PUT /api/v1/beds/{bed}/alarm-settings/rules/{rule}": CLINICAL,
    "DELETE /api/v1/beds/{bed}/alarm-settings/rules/{rule}": CLINICAL,
    "GET /api/v1/beds/{bed}/route": CLINICAL,
    "GET /api/v1/beds/{bed}/vitals": CLINICAL,
    "GET /api/v1/beds/{bed}/vitals/{metric}": CLINICAL,
    "GET /api/v1/deliveries": CLINICAL,
    "POST /api/v1/deliveries/{delivery_id}/status": CLINICAL,
    "GET /api/v1/devices": CLINICAL | {"biomed"},
    "GET /api/v1/devices/{device}/vitals": CLINICAL | {"biomed"},
    "GET /api/v1/devices/{device}/vitals/{metric}": CLINICAL | {"biomed"},
    "GET /api/v1/facilities/assets": CLINICAL | {"facilities", "biomed"},
    "GET /api/v1/facilities/assets/nearest": CLINICAL | {"facilities", "biomed"},
    "GET /api/v1/facilities/assets/{asset_id}/location": CLINICAL | {"facilities", "biomed"},
    "PUT /api/v1/facilities/assets/{asset_id}/status": {"facilities", "biomed"},
    "GET /api/v1/facilities/par": CLINICAL | {"facilities", "biomed"},
    "PUT /api/v1/facilities/par/{unit}/{type}": {"facilities", "biomed"},
    "GET /api/v1/facilities/utilisation": {"charge_nurse", "facilities", "biomed"},
    "GET /api/v1/fleet/devices": CLINICAL | {"biomed", "admin"},
    "POST /api/v1/fleet/devices": {"biomed", "admin"},
    "GET /api/v1/fleet/devices.csv": {"biomed", "admin", "auditor"},
    "POST /api/v1/fleet/devices/import": {"biomed", "admin"},
    "GET /api/v1/fleet/devices/{device}": CLINICAL | {"biomed", "admin"},
    "PUT /api/v1/fleet/devices/{device}": {"biomed", "admin"},
    "POST /api/v1/fleet/devices/{device}/retire": {"biomed", "admin"},
    "GET /api/v1/fleet/devices/{device}/health": CLINICAL | {"biomed"},
    "GET /api/v1/fleet/devices/{device}/location": CLINICAL | {"biomed", "facilities"},
    "GET /api/v1/fleet/health": {"biomed"},
    "GET /api/v1/fleet/gateways": {"biomed"},
    "GET /api/v1/fleet/uptime": {"biomed", "auditor"},
    "GET /api/v1/fleet/utilisation": {"biomed", "auditor"},
    "GET /api/v1/fleet/maintenance/plans": {"biomed", "auditor"},
    "PUT /api/v1/fleet/maintenance/plans/{model}/{kind}": {"biomed"},
    "GET /api/v1/fleet/maintenance/due": {"biomed", "auditor"},
    "POST /api/v1/fleet/maintenance/schedule": {"biomed"},
    "GET /api/v1/fleet/maintenance/completion": {"biomed", "auditor"},
    "GET /api/v1/fleet/locate/due": {"biomed", "facilities"},
    "GET /api/v1/fleet/work-orders": {"biomed", "auditor"},
    "POST /api/v1/fleet/work-orders": {"biomed"},
    "POST /api/v1/fleet/work-orders/{order_id}/assign": {"biomed"},
    "POST /api/v1/fleet/work-orders/{order_id}/close": {"biomed"},
    "GET /api/v1/fleet/firmware": {"biomed", "auditor"},
    "POST /api/v1/fleet/recalls/import": {"biomed"},
    "GET /api/v1/fleet/recalls": {"biomed", "auditor"},
    "GET /api/v1/fleet/recalls/{recall_id}": {"biomed", "auditor"},
    "GET /api/v1/fleet/reports/{report}": {"biomed", "auditor"},
    "GET /api/v1/fleet/reports/{report}.csv": {"biomed", "auditor"},
    "GET /api/v1/health": EVERYONE - {"auditor"},
    "GET /api/v1/navigation/route": CLINICAL | {"facilities", "biomed"},
    "GET /api/v1/reports/alarm-load": CLINICAL | {"auditor"},
    "GET /api/v1/reports/alarm-load/{table}.csv": CLINICAL | {"auditor"},
    "POST /api/v1/staff": {"admin"},
    "GET /api/v1/units/{unit}/alarm-settings": CLINICAL | {"auditor"},
    "PUT /api/v1/units/{unit}/alarm-settings/rules/{rule}": {"charge_nurse"},
    "DELETE /api/v1/units/{unit}/alarm-settings/rules/{rule}": {"charge_nurse"},
    "PUT /api/v1/units/{unit}/alarm-settings/ruleset": {"charge_nurse"},
    "GET /api/v1/units/{unit}/assignments": CLINICAL | {"admin"},
    "GET /api/v1/waste/bags/{bag}": CLINICAL | {"facilities", "auditor"},
    "GET /api/v1/waste/reconciliation": {"facilities", "auditor"},
    "GET /api/v1/waste/register": {"facilities", "auditor"},
    "GET /api/v1/waste/register.csv": {"facilities", "auditor"},
    "GET /api/v1/waste/reports/weights": CLINICAL | {"facilities", "auditor"},
    "GET /api/v1/waste/storage": {"facilities", "auditor"},
}

WS_POLICY: dict[str, set[str]] = {
    "/api/v1/alerts/stream": CLINICAL | {"facilities", "biomed"},
    "/api/v1/staff/stream": CLINICAL,
}

PEOPLE = {"nurse": "n-icu", "charge_nurse": "c-icu", "facilities": "f-fac", "biomed": "b-bio", "admin": "a-adm",
          "auditor": "u-aud"}


class World:
    """An API over a seeded state: objects of the ICU (in the clinical callers' scope) and of 3 West."""

    def __init__(self, tmp_path: Path) -> None:
        config = load(env={})
        self.site = config.site
        self.state: State = open_state(f"sqlite:///{tmp_path / 'state.db'}")
        now = now_ms()
        self.state.registry.seed_from_site(self.site, now)
        staff(self.state, ("n-icu", "nurse", "ICU"), ("c-icu", "charge_nurse", "ICU"), ("n-w3", "nurse", "W3"),
              ("f-fac", "facilities", None), ("b-bio", "biomed", None), ("a-adm", "admin", None),
              ("u-aud", "auditor", None), at=now - 60_000)
        for unit, bed in (("ICU", "ICU-01"), ("W3", "W3-01")):
            self.state.alerts.save(Alert(id=f"al-{unit.lower()}", type="spo2_low", source=bed,
                                         alarm_kind="physiological", priority="high", state="active", onset=now,
                                         updated=now, message="SpO2 low", bed=bed, unit=unit))
            self.state.assets.upsert(f"asset-{unit.lower()}", now=now, tag=f"TAG-{unit}", type="infusion_pump",
                                     unit=unit)
            self.state.waste.seal(f"bag-{unit.lower()}", category="infectious", weight_g=1200.0, handler="n-icu",
                                  at=now, unit=unit)
        # Assignments to end (not the callers' own, which their scope depends on), and a delivery to each nurse.
        self.state.assignments.add_staff("n-spare", "Spare", "nurse")
        self.assignment = {unit: self.state.assignments.assign("n-spare", unit, "primary", now - 60_000,
                                                               now + 3_600_000, bed=f"{unit}-08").id
                           for unit in ("ICU", "W3")}
        escalations = Escalations(self.state.sessions)
        delivery = {}
        for unit, nurse in (("ICU", "n-icu"), ("W3", "n-w3")):
            plan = StepPlan(step=0, target="primary", reason="onset", recipients=[nurse, "c-icu"],
                            channels=["websocket"], next_at=now + 60_000, confirm_by=now + 10_000)
            fired = escalations.fire(f"al-{unit.lower()}", -1, plan, now, unit=unit, bed=f"{unit}-01")
            assert fired is not None
            delivery[unit] = {d.staff: d.id for d in escalations.deliveries(alert_id=f"al-{unit.lower()}")}
        self.delivery = delivery
        # Fleet: a work order on a device of each unit, and a recall.
        self.order = {unit: self.state.fleet.open_order(device, "repair", by="b-bio", now=now).id
                      for unit, device in (("ICU", "mon-icu-01"), ("W3", "scale-w3"))}
        self.state.fleet.save_recalls([Recall("R-1", manufacturer="Perfusa Medical", model="PV-300")], now=now)
        self.view = LiveView(self.site.id, BrokerAddress("127.0.0.1", 1))
        # The matrix sends hundreds of requests a second per role: the rate limits are test_api_limits.py's subject.
        unlimited = LimitSettings(rate_per_s=1e6, burst=1_000_000)
        self.app = create_app(dataclasses.replace(parts(self.site, MemoryStore(), self.view, self.state,
                                                        site_map=load_site_map("demo")), limits=unlimited))
        now_s = now
        # path parameter -> (the ICU's, 3 West's, a missing one)
        self.params: dict[str, tuple[Any, Any, Any]] = {
            "bed": ("ICU-01", "W3-01", "NOPE-99"), "unit": ("ICU", "W3", "NOPE"),
            "alert_id": ("al-icu", "al-w3", "al-nope"),
            "assignment_id": (self.assignment["ICU"], self.assignment["W3"], 99_999_999),
            "asset_id": ("asset-icu", "asset-w3", "asset-nope"), "bag": ("bag-icu", "bag-w3", "bag-nope"),
            "device": ("mon-icu-01", "scale-w3", "nope-device"),
            "rule": ("spo2_low",) * 3, "metric": ("spo2",) * 3, "type": ("infusion_pump",) * 3,
            "table": ("by_bed_day",) * 3,
            "order_id": (self.order["ICU"], self.order["W3"], 99_999_999), "recall_id": ("R-1",) * 3,
            "model": ("PV-300",) * 3, "kind": ("pm",) * 3, "report": ("devices",) * 3,
        }
        self.query = {
            "GET /api/v1/facilities/assets/nearest": {"type": "infusion_pump", "from": "A3-W3-R01"},
            "GET /api/v1/facilities/utilisation": {"start": str(now_s - 3_600_000), "end": str(now_s)},
            "GET /api/v1/navigation/route": {"from": "ICU-01", "to": "W3-01", "profile": "staff"},
        }

    def value(self, name: str, which: int, role: str | None) -> Any:
        """A path parameter's value; a delivery is the caller's own (ICU) or the 3 West nurse's."""
        if name == "delivery_id":
            return self.delivery["ICU"].get(PEOPLE.get(role or "", ""), 0) if which == 0 else (
                self.delivery["W3"]["n-w3"] if which == 1 else 99_999_999)
        return self.params[name][which]

    def body(self, op: str, which: int) -> dict[str, Any] | None:
        unit, bed = self.params["unit"][which], self.params["bed"][which]
        return {
            "POST /api/v1/alerts/{alert_id}/comments": {"text": "checked the probe"},
            "POST /api/v1/alerts/{alert_id}/silence": {"reason": "repositioning", "timeout_s": 60},
            "POST /api/v1/assignments": {"staff": "n-icu", "unit": unit, "role": "primary", "bed": bed,
                                         "valid_to": now_ms() + 3_600_000},
            "PUT /api/v1/beds/{bed}/alarm-settings/rules/{rule}": {"settings": {"limit": 88}},
            "PUT /api/v1/units/{unit}/alarm-settings/rules/{rule}": {"settings": {"limit": 88}},
            "PUT /api/v1/units/{unit}/alarm-settings/ruleset": {"ruleset": "adult"},
            "POST /api/v1/deliveries/{delivery_id}/status": {"status": "read"},
            "PUT /api/v1/facilities/assets/{asset_id}/status": {"status": "dirty"},
            "PUT /api/v1/facilities/par/{unit}/{type}": {"minimum": 2},
            "POST /api/v1/staff": {"id": "n-new", "name": "New", "role": "nurse"},
            "POST /api/v1/assignments/{assignment_id}/end": {},
            "POST /api/v1/fleet/devices": {"id": "mon-new", "driver": "bedside_serial", "gateway": "gw-icu",
                                           "bed": "ICU-02", "model": "WLB-100"},
            "POST /api/v1/fleet/devices/import": {"csv": "id,firmware\nmon-icu-02,1.4.3\n"},
            "PUT /api/v1/fleet/devices/{device}": {"firmware": "1.4.3"},
            "PUT /api/v1/fleet/maintenance/plans/{model}/{kind}": {"interval_days": 180},
            "POST /api/v1/fleet/maintenance/schedule": {"horizon_days": 30},
            "POST /api/v1/fleet/work-orders": {"device": "mon-icu-01", "kind": "repair"},
            "POST /api/v1/fleet/work-orders/{order_id}/assign": {"to": "b-bio"},
            "POST /api/v1/fleet/work-orders/{order_id}/close": {"notes": "replaced the cable", "parts": ["cable"]},
            "POST /api/v1/fleet/recalls/import": {"recalls": [{"id": "R-2", "udi": "(01)00000000000000"}]},
        }.get(op)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.state.close()


def operations(world: World) -> list[tuple[str, str, str]]:
    """(key, method, path) of every operation in the OpenAPI document."""
    return [(f"{method.upper()} {path}", method.upper(), path)
            for path, ops in world.app.openapi()["paths"].items() for method in ops]


def scoped_params(path: str, world: World) -> list[str]:
    return [p for p in re.findall(r"{(\w+)}", path) if p == "delivery_id" or len(set(world.params[p])) == 3]


async def call(world: World, client: httpx.AsyncClient, op: str, method: str, path: str, which: int,
               role: str | None) -> httpx.Response:
    url = re.sub(r"{(\w+)}", lambda m: str(world.value(m.group(1), which, role)), path)
    headers = bearer(PEOPLE[role]) if role else {}
    return await client.request(method, url, headers=headers, params=world.query.get(op),
                                json=world.body(op, which) if method in ("POST", "PUT") else None)


async def test_every_route_has_a_rule(world: World) -> None:
    ops = {key for key, _, _ in operations(world)}
    assert sorted(ops - set(POLICY) - PUBLIC) == [], "a new endpoint needs its rule in POLICY"
    assert sorted(set(POLICY) - ops) == [], "a rule for an endpoint that no longer exists"


async def test_role_by_endpoint_by_own_other_missing(world: World) -> None:
    failures: list[str] = []
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for op, method, path in operations(world):
            if op in PUBLIC:
                continue
            anonymous = await call(world, client, op, method, path, 0, None)
            if anonymous.status_code != 401:
                failures.append(f"{op} without a token: {anonymous.status_code}")
            for role in PEOPLE:
                own = await call(world, client, op, method, path, 0, role)
                if role not in POLICY[op]:
                    if own.status_code != 403:
                        failures.append(f"{op} as {role}: {own.status_code}, expected 403")
                    continue
                if own.status_code in (401, 403, 404) or own.status_code >= 500:
                    failures.append(f"{op} as {role}, own unit: {own.status_code} {own.text[:120]}")
                scoped = scoped_params(path, world)
                if not scoped or role not in CLINICAL:
                    continue
                other = await call(world, client, op, method, path, 1, role)
                missing = await call(world, client, op, method, path, 2, role)
                if (other.status_code, missing.status_code) != (404, 404):
                    failures.append(f"{op} as {role}: other unit {other.status_code}, missing {missing.status_code}")
                    continue
                names = [str(world.value(p, i, role)) for p in scoped for i in (1, 2)]
                blank = [other.json()["detail"], missing.json()["detail"]]
                for name in names:
                    blank = [text.replace(name, "<id>") for text in blank]
                if blank[0] != blank[1]:
                    failures.append(f"{op} as {role}: other unit says {blank[0]!r}, missing says {blank[1]!r}")
    assert failures == [], "\n".join(failures)


async def test_list_filters_follow_the_scope(world: World) -> None:
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        beds = (await client.get("/api/v1/beds", headers=bearer("n-icu"))).json()
        assert {b["unit"] for b in beds} == {"ICU"}
        beds = (await client.get("/api/v1/beds", headers=bearer("f-fac"))).json()
        assert {b["unit"] for b in beds} == {"ICU", "W3"}
        devices = (await client.get("/api/v1/devices", headers=bearer("n-w3"))).json()
        assert devices
        assert all(d["gateway"] == "gw-w3" or (d["bed"] or "").startswith("W3") for d in devices)
        assets = (await client.get("/api/v1/facilities/assets", headers=bearer("n-icu"))).json()
        assert [a["id"] for a in assets] == ["asset-icu"]
        me = (await client.get("/api/v1/auth/me", headers=bearer("n-icu"))).json()
        assert (me["role"], me["units"]) == ("nurse", ["ICU"])
    reads = [r for r in world.state.audit.records() if r.action == "read"]
    assert reads == []  # lists of beds, devices and assets carry no patient data: nothing to audit


async def test_patient_reads_are_audited_with_who_unit_object_and_request(world: World) -> None:
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/api/v1/beds/ICU-02/vitals", headers=bearer("n-icu"))).status_code == 200
        assert (await client.get("/api/v1/beds/W3-02/vitals", headers=bearer("n-icu"))).status_code == 404
    (record,) = [r for r in world.state.audit.records() if r.action == "read"]
    assert (record.actor, record.role, record.unit, record.object, record.result) == (
        "n-icu", "nurse", "ICU", "bed ICU-02 vitals", "ok")
    assert record.request_id
    assert world.state.audit.verify()


# --- WebSocket routes: every one has a rule; tickets; the live alert stream's scope --------------------------------


def live_alert(world: World, unit: str, updated: int, state: str = "active") -> Alert:
    """An alert of ``unit``'s first bed as the live view hears it from the bus."""
    alert = Alert(id=f"al-{unit.lower()}", type="spo2_low", source=f"{unit}-01", alarm_kind="physiological",
                  priority="high", state=state, onset=updated, updated=updated,  # type: ignore[arg-type]
                  message="SpO2 low", bed=f"{unit}-01", unit=unit)
    world.view.apply(topics.alert_topic(world.site.id, alert.id), encode(alert))
    return alert


async def ticket(client: httpx.AsyncClient, staff_id: str) -> str:
    answer = await client.post("/api/v1/auth/ws-ticket", headers=bearer(staff_id))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["ticket"])


async def refusal(world: World, path: str, query: str = "") -> int | None:
    """The close code the app answers a WebSocket handshake with (driven at the ASGI level, where the code is
    visible: uvicorn turns a close before accept into HTTP 403), or None when it accepts and sends a first frame."""
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "ws",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
             "headers": [(b"host", b"test")], "client": ("127.0.0.1", 50000), "server": ("test", 80),
             "subprotocols": [], "state": {}}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    app = asyncio.create_task(world.app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]
    first = await asyncio.wait_for(outbox.get(), 10)
    if first["type"] == "websocket.close":
        await asyncio.wait_for(app, 10)
        return int(first["code"])
    assert first["type"] == "websocket.accept", first
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "websocket.send"
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(app, 10)  # the stream ends when its client leaves
    return None


def test_every_websocket_route_has_a_rule(world: World) -> None:
    paths = {str(route.path) for route in iter_route_contexts(world.app.routes)
             if isinstance(route.original_route, WebSocketRoute)}
    assert sorted(paths - set(WS_POLICY)) == [], "a new WebSocket endpoint needs its rule in WS_POLICY"
    assert sorted(set(WS_POLICY) - paths) == [], "a rule for a WebSocket endpoint that no longer exists"


async def test_websocket_roles_and_tickets(world: World) -> None:
    clock = [1000.0]
    world.app.state.access.auth.tickets = Tickets(ttl_s=30, clock=lambda: clock[0])
    failures: list[str] = []
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, allowed in WS_POLICY.items():
            for role, person in PEOPLE.items():
                code = await refusal(world, path, f"ticket={await ticket(client, person)}")
                if code != (None if role in allowed else 1008):
                    failures.append(f"{path} as {role}: {code}")
            person = PEOPLE["nurse"]
            checks = {"no ticket": "", "a made-up ticket": "ticket=guessed",
                      "a token instead of a ticket": f"ticket={bearer(person)['Authorization'][7:]}"}
            for why, query in checks.items():
                if await refusal(world, path, query) != 1008:
                    failures.append(f"{path} with {why}: accepted")
            used = await ticket(client, person)
            if await refusal(world, path, f"ticket={used}") is not None:
                failures.append(f"{path}: a fresh ticket was refused")
            if await refusal(world, path, f"ticket={used}") != 1008:
                failures.append(f"{path}: a used ticket was accepted again")
            late = await ticket(client, person)
            clock[0] += 31
            if await refusal(world, path, f"ticket={late}") != 1008:
                failures.append(f"{path}: an expired ticket was accepted")
    assert failures == [], "\n".join(failures)


async def test_the_alert_stream_carries_only_the_callers_units(world: World) -> None:
    now = now_ms()
    for unit in ("ICU", "W3"):
        live_alert(world, unit, now)
    async with served(world.app) as host, httpx.AsyncClient(base_url=f"http://{host}") as client:

        async def connect(staff_id: str) -> Any:
            answer = await client.post("/api/v1/auth/ws-ticket", headers=bearer(staff_id))
            return await websockets.connect(f"ws://{host}/api/v1/alerts/stream?ticket={answer.json()['ticket']}")

        async def frame(ws: Any) -> dict[str, Any]:
            return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))

        icu, w3 = await connect("n-icu"), await connect("n-w3")
        try:
            assert [a["id"] for a in (await frame(icu))["alerts"]] == ["al-icu"]  # the snapshot
            assert [a["id"] for a in (await frame(w3))["alerts"]] == ["al-w3"]
            live_alert(world, "W3", now + 1, "acknowledged")  # first: it would be the ICU nurse's next frame
            live_alert(world, "ICU", now + 2, "acknowledged")
            got = await frame(icu)
            assert (got["type"], got["alert"]["id"], got["alert"]["state"]) == ("alert", "al-icu", "acknowledged")
            got = await frame(w3)
            assert (got["type"], got["alert"]["id"]) == ("alert", "al-w3")
        finally:
            await icu.close()
            await w3.close()


# --- scope carried in lists, bodies and queries ------------------------------------------------------------------


def same_answer(other: httpx.Response, missing: httpx.Response, *names: str) -> bool:
    """Both 404 with the same text once the names in them are blanked."""
    texts = [other.json()["detail"], missing.json()["detail"]]
    for name in names:
        texts = [text.replace(name, "<id>") for text in texts]
    return (other.status_code, missing.status_code) == (404, 404) and texts[0] == texts[1]


async def test_the_alert_list_holds_two_units_and_each_caller_sees_its_own(world: World) -> None:
    now = now_ms()
    for unit in ("ICU", "W3"):
        live_alert(world, unit, now)
    assert sorted(world.view.alerts) == ["al-icu", "al-w3"]
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def ids(staff_id: str, **query: str) -> list[str]:
            answer = await client.get("/api/v1/alerts", params=query, headers=bearer(staff_id))
            assert answer.status_code == 200, answer.text
            return [a["id"] for a in answer.json()]

        assert await ids("n-icu") == ["al-icu"]
        assert await ids("c-icu", state="active") == ["al-icu"]
        assert await ids("n-w3") == ["al-w3"]
        assert await ids("n-icu", unit="W3") == []  # naming the other unit does not widen the scope
        assert await ids("n-icu", bed="W3-01") == []
        assert await ids("n-icu", unit="ICU") == ["al-icu"]
        assert await ids("f-fac") == []  # clinical alerts: not facilities' kind
        assert await ids("b-bio") == []  # nor biomedical engineering's (technical ones only)
    (read,) = [r for r in world.state.audit.records() if r.object == "alerts" and r.detail.get("count") == 1
               and r.actor == "c-icu"]
    assert (read.role, read.action) == ("charge_nurse", "read")


async def test_scope_carried_in_a_body_or_a_query_answers_like_a_missing_object(world: World) -> None:
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=bearer("c-icu")) as client:

        async def assign(unit: str, bed: str) -> httpx.Response:
            return await client.post("/api/v1/assignments", json={
                "staff": "n-icu", "unit": unit, "role": "primary", "bed": bed, "valid_to": now_ms() + 3_600_000})

        assert same_answer(await assign("W3", "W3-01"), await assign("NOPE", "NOPE-99"), "W3", "NOPE")
        assert same_answer(await assign("ICU", "W3-01"), await assign("ICU", "NOPE-99"), "W3-01", "NOPE-99")
        assert (await assign("ICU", "ICU-01")).status_code == 201  # the charge nurse's own unit
        for path in ("/api/v1/reports/alarm-load", "/api/v1/reports/alarm-load/by_bed_day.csv"):
            other = await client.get(path, params={"unit": "W3"})
            missing = await client.get(path, params={"unit": "NOPE"})
            assert same_answer(other, missing, "W3", "NOPE"), path
            assert (await client.get(path, params={"unit": "ICU"})).status_code == 200
    made = [r for r in world.state.audit.records() if r.action == "assignment.create"]
    assert [r.unit for r in made] == ["ICU"]  # nothing was written for 3 West
    assert all(a.unit != "W3" or a.staff != "n-icu" for a in world.state.assignments.current("W3", now_ms()))


# --- audit -------------------------------------------------------------------------------------------------------


async def test_reads_of_assignments_routes_deliveries_and_escalations_are_audited(world: World) -> None:
    reads = {"/api/v1/alerts/al-icu/delivery": ("n-icu", "ICU", "alert al-icu delivery"),
             "/api/v1/units/ICU/assignments": ("c-icu", "ICU", "assignments of unit ICU"),
             "/api/v1/beds/ICU-01/route": ("n-icu", "ICU", "bed ICU-01 route"),
             "/api/v1/escalations": ("n-icu", None, "escalations"),
             "/api/v1/units/W3/assignments": ("a-adm", "W3", "assignments of unit W3")}
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, (who, _, _) in reads.items():
            assert (await client.get(path, headers=bearer(who))).status_code == 200, path
        for path in ("/api/v1/alerts/al-w3/delivery", "/api/v1/beds/W3-01/route"):
            assert (await client.get(path, headers=bearer("n-icu"))).status_code == 404
    records = [r for r in world.state.audit.records() if r.action == "read"]
    assert [(r.actor, r.unit, r.object, r.result) for r in records] == [
        (who, unit, what, "ok") for who, unit, what in reads.values()]  # and nothing for the refused ones
    assert [r.role for r in records] == ["nurse", "charge_nurse", "nurse", "nurse", "admin"]
    assert len({r.request_id for r in records}) == len(records)
    assert all(r.request_id for r in records)
    assert records[0].detail == {}
    assert records[3].detail == {"units": ["ICU"], "count": 0}


async def test_sign_in_failed_and_throttled_sign_in_are_audited(world: World) -> None:
    world.state.credentials.set_password("n-icu", "correct horse battery", at=now_ms())
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def sign_in(user: str, password: str) -> httpx.Response:
            return await client.post("/api/v1/auth/token", data={"username": user, "password": password})

        answers = [await sign_in("n-icu", "correct horse battery")]
        answers += [await sign_in("n-icu", "wrong horse battery") for _ in range(5)]
        answers.append(await sign_in("n-icu", "correct horse battery"))  # the right password, but throttled now
        answers.append(await sign_in("nobody", "any password at all"))
    assert [a.status_code for a in answers] == [200] + [401] * 5 + [429, 401]
    logins = [r for r in world.state.audit.records() if r.action == "login"]
    assert [(r.actor, r.role, r.result) for r in logins] == (
        [("n-icu", "nurse", "ok")] + [("n-icu", "nurse", "failed")] * 5 + [("n-icu", "nurse", "throttled"),
                                                                             ("nobody", "", "failed")])
    assert [r.request_id for r in logins] == [a.headers["x-request-id"] for a in answers]
    assert len({r.request_id for r in logins}) == len(logins)
    assert {r.object for r in logins} == {"staff/n-icu", "staff/nobody"}


async def test_the_auditor_reads_exports_and_verifies_the_trail(world: World) -> None:
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=bearer("u-aud")) as client:
        assert (await client.get("/api/v1/beds/ICU-01/vitals", headers=bearer("n-icu"))).status_code == 200
        assert (await client.get("/api/v1/beds/W3-01/route", headers=bearer("n-w3"))).status_code == 200
        stored = world.state.audit.records()
        trail = (await client.get("/api/v1/audit")).json()
        assert [r["n"] for r in trail] == [r.n for r in stored]
        assert [(r["actor"], r["unit"], r["object"]) for r in trail[-2:]] == [
            ("n-icu", "ICU", "bed ICU-01 vitals"), ("n-w3", "W3", "bed W3-01 route")]
        assert {r["hash"] for r in trail} == {r.hash for r in stored}
        page = (await client.get("/api/v1/audit", params={"after": stored[0].n, "limit": 1})).json()
        assert [r["n"] for r in page] == [stored[1].n]
        mine = (await client.get("/api/v1/audit", params={"actor": "n-w3"})).json()
        assert [r["object"] for r in mine] == ["bed W3-01 route"]

        export = await client.get("/api/v1/audit/export.csv", params={"after": stored[-2].n, "limit": 1})
        assert export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert tuple(rows[0]) == CSV_FIELDS
        assert [(int(r["n"]), r["actor"], r["prev_hash"], r["hash"]) for r in rows] == [
            (r.n, r.actor, r.prev_hash, r.hash) for r in stored[-1:]]
        assert rows[0]["prev_hash"] == stored[-2].hash  # the chain can be checked offline from the export
        assert json.loads(rows[0]["detail"]) == stored[-1].detail

        intact = (await client.get("/api/v1/audit/verify")).json()
        head = world.state.audit.records(after=stored[-1].n)  # the trail's own reads since, audited
        assert intact["intact"] is True
        assert intact["first_broken"] is None
        assert intact["head"]["n"] == head[-2].n  # the head before the verify appended its own record
        assert intact["head"]["hash"] == head[-2].hash

        tampered = next(r for r in stored if r.object == "bed ICU-01 vitals")
        with world.state.engine.begin() as conn:  # an attacker with the database: drop the guard, edit a row
            conn.exec_driver_sql("DROP TRIGGER audit_no_update")
            conn.exec_driver_sql(f"UPDATE audit SET actor = 'someone-else' WHERE n = {tampered.n}")
        broken = (await client.get("/api/v1/audit/verify")).json()
        assert (broken["intact"], broken["first_broken"]) == (False, tampered.n)
    assert [r.action for r in world.state.audit.records(actor="u-aud")].count("audit.verify") == 2
