"""Routing end to end: a reading on a real Mosquitto -> alert service -> API -> the assigned nurse's WebSocket.

Escalation timeouts are short and explicit; checks that something arrives "within the timeout + slack"
use a generous slack (a loaded 2-core machine), and checks that something does *not* happen wait
well past the deadline it would have had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from alerts.delivery import DeliverySettings
from alerts.routing import RoutingSettings, StepSpec
from alerts.rules import LimitRule
from alerts.service import AlertService, AlertSettings
from api.app import create_app
from api.view import LiveView
from devices import bus, topics
from devices.clock import now_ms
from devices.contract import Batch, Observation, encode
from state import State, open_state
from storage.memory import MemoryStore
from tests.auth import bearer, parts
from tests.conftest import Mosquitto, free_port
from tests.test_escalation import SITE, staffed

SLACK_S = 5.0  # on top of an escalation timeout: a loaded 2-core machine, several test runs at once
RULE = LimitRule(name="spo2_low", metric="spo2", direction="below", limit=90, priority="high", delay_s=0,
                 hysteresis=2)


def settings(primary_s: float = 2.0, confirm_s: float = 0.0) -> AlertSettings:
    schedule = [StepSpec("primary", primary_s), StepSpec("buddy", primary_s), StepSpec("charge", 60)]
    routing = RoutingSettings(schedules={"high": schedule}, confirm_s=confirm_s, poll_s=0.1)
    return AlertSettings(rules=[RULE], delivery=DeliverySettings(routing=routing))


@dataclass
class Stream:
    """A nurse's open WebSocket stream and every frame it received, with the arrival time (epoch ms)."""

    ws: Any
    frames: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def notifications(self, type_: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        return [(at, f["notification"]) for at, f in self.frames if f["type"] == "notification"
                and (type_ is None or f["notification"]["alert"]["type"] == type_)]

    async def wait_for(self, count: int, within_s: float, type_: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        deadline = time.monotonic() + within_s
        while len(self.notifications(type_)) < count:
            assert time.monotonic() < deadline, f"{count} notification(s) did not arrive in {within_s} s: {self.frames}"
            await asyncio.sleep(0.02)
        return self.notifications(type_)


class Harness:
    """Alert service, API (uvicorn on a free port) and the state, on a real broker."""

    def __init__(self, mosquitto: Mosquitto, tmp_path: Path, alert_settings: AlertSettings) -> None:
        self.address = mosquitto.address
        self.url = f"sqlite:///{tmp_path / 'state.db'}"
        self.settings = alert_settings
        self.state = open_state(self.url)
        staffed(self.state, start=now_ms() - 60_000)
        self.state.assignments.add_staff("a-root", "Root", "admin")
        self.view = LiveView(SITE.id, self.address)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(parts(SITE, MemoryStore(), self.view, self.state)),
                                                    host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.tasks: list[asyncio.Task[Any]] = []
        self.service_task: asyncio.Task[None] | None = None
        self.service_state: State | None = None
        self.streams: list[Stream] = []
        self.seq = 0

    async def start(self) -> None:
        self.tasks += [asyncio.create_task(self.view.run()), asyncio.create_task(self.server.serve())]
        self.start_service()
        deadline = time.monotonic() + 20
        while not (self.server.started and self.view.connected):
            assert time.monotonic() < deadline, "API did not start"
            await asyncio.sleep(0.05)

    def start_service(self) -> None:
        """A fresh alert service process: its own engine on its own connection to the database."""
        self.service_state = open_state(self.url)
        service = AlertService(SITE, self.service_state, self.address, self.settings)
        self.service_task = asyncio.create_task(service.run())

    async def stop_service(self) -> None:
        assert self.service_task is not None
        assert self.service_state is not None
        self.service_task.cancel()
        await asyncio.gather(self.service_task, return_exceptions=True)
        self.service_state.close()
        self.service_task = None

    async def stream(self, staff: str) -> Stream:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", headers=bearer(staff)) as client:
            ticket = (await client.post("/api/v1/auth/ws-ticket")).json()["ticket"]
        ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/api/v1/staff/stream?ticket={ticket}")
        stream = Stream(ws)

        async def read() -> None:
            async for raw in ws:
                stream.frames.append((now_ms(), json.loads(raw)))

        stream.task = asyncio.create_task(read())
        self.streams.append(stream)
        while not stream.frames:  # noqa: ASYNC110  (the snapshot frame: the stream is registered)
            await asyncio.sleep(0.01)
        return stream

    async def reading(self, value: float, bed: str = "ICU-01") -> None:
        self.seq += 1
        batch = Batch(gateway="gw-icu", sent=now_ms(), items=[Observation(
            device="mon-icu-01", stream="numerics", seq=self.seq, ts=now_ms(), metric="MDC_PULS_OXIM_SAT_O2",
            value=value, unit="%", code=150456, bed=bed)])
        async with bus.client(self.address, f"test-pub-{self.seq}") as client:
            await client.publish(topics.gateway_topic(SITE.id, "gw-icu", "data"), encode(batch), qos=1)

    async def close(self) -> None:
        for stream in self.streams:
            await stream.ws.close()
            if stream.task is not None:
                stream.task.cancel()
        if self.service_task is not None:
            await self.stop_service()
        self.server.should_exit = True
        await asyncio.gather(self.tasks[1], return_exceptions=True)
        self.tasks[0].cancel()
        await asyncio.gather(self.tasks[0], return_exceptions=True)
        self.state.close()


@pytest.fixture
async def harness(mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(mosquitto, tmp_path, settings(**getattr(request, "param", {})))
    await h.start()
    yield h
    await h.close()


async def wait_service_online(h: Harness) -> None:
    deadline = time.monotonic() + 20
    while not any(name.startswith("alerts/") and s.state == "online" for name, s in h.view.services.items()):
        assert time.monotonic() < deadline, "alert service did not come online"
        await asyncio.sleep(0.05)


async def test_alert_goes_to_the_primary_then_the_buddy_and_stops_at_the_ack(harness: Harness) -> None:
    h = harness
    ana, ben, cho = await h.stream("n-ana"), await h.stream("n-ben"), await h.stream("n-cho")
    await wait_service_online(h)
    await h.reading(85)
    ((_sent_at, first),) = await ana.wait_for(1, 20)
    assert (first["step"], first["target"], first["reason"]) == (0, "primary", "onset")
    assert first["alert"]["type"] == "spo2_low"
    assert first["alert"]["bed"] == "ICU-01"
    assert ben.notifications() == []
    assert cho.notifications() == []
    ((buddy_at, second),) = await ben.wait_for(1, 2.0 + SLACK_S)
    assert (second["step"], second["target"], second["reason"]) == (1, "buddy", "timeout")
    assert buddy_at - first["sent"] >= 2000  # not before the primary's timeout
    assert buddy_at - first["sent"] <= (2.0 + SLACK_S) * 1000
    delivered = h.state.alerts.get(first["alert"]["id"])
    assert delivered is not None
    h.state.alerts.acknowledge(delivered.id, "n-ben", now_ms())
    await asyncio.sleep(2.0 + 2.0)  # past the buddy's timeout: the charge nurse would have been next
    assert cho.notifications() == []
    body = await _get(h, f"/api/v1/alerts/{delivered.id}/delivery")
    statuses = {(d["staff"], d["status"]) for d in body["deliveries"]}
    assert statuses == {("n-ana", "delivered"), ("n-ben", "delivered")}  # each frame written was recorded


async def _get(h: Harness, path: str, staff: str = "n-ana") -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{h.port}", headers=bearer(staff)) as client:
        response = await client.get(path)
        response.raise_for_status()
        return response.json()


@pytest.mark.parametrize("harness", [{"primary_s": 4.0}], indirect=True)
async def test_a_restart_mid_escalation_keeps_the_deadline(harness: Harness) -> None:
    h = harness
    ana, ben = await h.stream("n-ana"), await h.stream("n-ben")
    await wait_service_online(h)
    await h.reading(85)
    ((_, first),) = await ana.wait_for(1, 20)
    await h.stop_service()
    await asyncio.sleep(1.0)
    h.start_service()  # a new process: engine and dispatcher rebuilt from the database
    ((buddy_at, second),) = await ben.wait_for(1, 4.0 + SLACK_S)
    assert second["step"] == 1
    assert buddy_at - first["sent"] >= 4000
    assert buddy_at - first["sent"] <= (4.0 + SLACK_S) * 1000
    await asyncio.sleep(0.5)
    assert len(ana.notifications()) == 1  # the restart did not send the first step again


@pytest.mark.parametrize("harness", [{"primary_s": 30.0, "confirm_s": 1.0}], indirect=True)
async def test_an_unconfirmed_delivery_is_a_technical_alarm_to_the_next_step(harness: Harness) -> None:
    h = harness
    ben = await h.stream("n-ben")  # Ana has no live stream: her delivery is never confirmed
    await wait_service_online(h)
    await h.reading(85)
    (_, technical), = await ben.wait_for(1, 1.0 + SLACK_S, type_="delivery.unconfirmed")
    assert technical["alert"]["alarm_kind"] == "technical"
    assert "n-ana" in technical["alert"]["message"]
    (_, moved), = await ben.wait_for(1, 1.0 + SLACK_S, type_="spo2_low")
    assert (moved["step"], moved["target"], moved["reason"]) == (1, "buddy", "unconfirmed")  # not after 30 s


async def test_answers_on_the_stream_are_recorded_and_accepting_stops_the_escalation(harness: Harness) -> None:
    h = harness
    ana, ben = await h.stream("n-ana"), await h.stream("n-ben")
    await wait_service_online(h)
    await h.reading(85)
    ((_, first),) = await ana.wait_for(1, 20)
    await ana.ws.send(json.dumps({"type": "status", "delivery": first["delivery"], "status": "read"}))
    await ana.ws.send(json.dumps({"type": "status", "delivery": first["delivery"], "status": "accepted"}))
    await ana.ws.send(json.dumps({"type": "status", "delivery": first["delivery"] + 1000, "status": "read"}))
    deadline = time.monotonic() + 10
    while len([f for _, f in ana.frames if f["type"] in ("delivery", "error")]) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    answers = [f for _, f in ana.frames if f["type"] in ("delivery", "error")]
    assert [a["delivery"]["status"] for a in answers[:2]] == ["read", "accepted"]
    assert answers[2]["type"] == "error"  # not hers (nor anybody's)
    await asyncio.sleep(2.0 + 2.0)
    assert ben.notifications() == []  # accepted: no escalation to the buddy
    body = await _get(h, f"/api/v1/alerts/{first['alert']['id']}/delivery")
    assert body["escalation"]["state"] == "accepted"


async def test_assignments_are_data_the_api_changes(harness: Harness) -> None:
    h = harness
    now = now_ms()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{h.port}", headers=bearer("n-cho")) as client:
        refused = await client.post("/api/v1/staff", json={"id": "n-eve", "name": "Eve", "role": "nurse"})
        assert refused.status_code == 403  # staff records are the admin's
        staff = await client.post("/api/v1/staff", json={"id": "n-eve", "name": "Eve", "role": "nurse"},
                                  headers=bearer("a-root"))
        assert staff.status_code == 201
        made = await client.post("/api/v1/assignments", json={"staff": "n-eve", "unit": "ICU", "role": "primary",
                                                               "valid_to": now + 3_600_000, "bed": "ICU-03"})
        assert made.status_code == 201, made.text
        assignment = made.json()
        listed = (await client.get("/api/v1/units/ICU/assignments")).json()
        assert assignment["id"] in [a["id"] for a in listed]
        route = (await client.get("/api/v1/beds/ICU-03/route")).json()
        assert [(r["staff"], r["role"]) for r in route] == [("n-eve", "primary"), ("n-cho", "charge")]
        ended = await client.post(f"/api/v1/assignments/{assignment['id']}/end", json={})
        assert ended.status_code == 200
        route = (await client.get("/api/v1/beds/ICU-03/route")).json()
        assert [(r["staff"], r["role"]) for r in route] == [("n-cho", "charge")]
        bad = await client.post("/api/v1/assignments", json={"staff": "n-eve", "unit": "ICU", "role": "charge",
                                                              "valid_to": now + 1000, "bed": "ICU-03"})
        assert bad.status_code == 422
        unknown_bed = await client.post("/api/v1/assignments", json={
            "staff": "n-eve", "unit": "ICU", "role": "primary", "valid_to": now + 1000, "bed": "X-9"})
        assert unknown_bed.status_code == 404
        assert (await client.get("/api/v1/units/NOPE/assignments")).status_code == 404
        assert (await client.post("/api/v1/assignments/999999/end", json={})).status_code == 404
        as_nurse = await client.post("/api/v1/assignments", headers=bearer("n-ana"), json={
            "staff": "n-eve", "unit": "ICU", "role": "primary", "valid_to": now + 1000, "bed": "ICU-03"})
        assert as_nurse.status_code == 403  # assignments are the charge nurse's to make
    actions = [r.action for r in h.state.audit.records() if r.action.startswith(("assignment.", "staff."))]
    assert actions == ["staff.save", "assignment.create", "assignment.end"]


async def test_a_flooding_client_is_disconnected_while_the_nurses_alarm_arrives(harness: Harness) -> None:
    h = harness
    ana = await h.stream("n-ana")
    await wait_service_online(h)
    garbage = json.dumps({"type": "status", "delivery": 1, "status": "read"})
    sent_at: list[float] = []  # when each flood message went out (monotonic)

    async def flood() -> None:
        """Dev's client: sign in to the stream, send far past 10 a second (burst 30), and when cut off, again."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{h.port}", headers=bearer("n-dev")) as client:
            while True:
                ticket = (await client.post("/api/v1/auth/ws-ticket")).json()["ticket"]
                with contextlib.suppress(websockets.exceptions.WebSocketException, OSError):
                    async with websockets.connect(f"ws://127.0.0.1:{h.port}/api/v1/staff/stream?ticket={ticket}",
                                                  close_timeout=0.5) as ws:
                        while True:
                            await ws.send(garbage)
                            sent_at.append(time.monotonic())
                            await asyncio.sleep(0)

    flooding = asyncio.create_task(flood())
    try:
        deadline = time.monotonic() + 20
        while len(sent_at) < 20:  # the flood is under way (not yet past the burst of 30 it is cut off at)
            assert time.monotonic() < deadline, "the flood did not start"
            await asyncio.sleep(0.001)
        published, published_ms = time.monotonic(), now_ms()
        await h.reading(85)
        ((arrived_ms, first),) = await ana.wait_for(1, 20)  # the other nurse's alarm arrives ...
        arrived = time.monotonic()
        assert first["alert"]["type"] == "spo2_low"
        assert arrived_ms - published_ms <= 2000  # ... within 2 s of the reading while the flood went on
        assert [t for t in sent_at if published <= t <= arrived], "the flood was not under way meanwhile"
        while h.view.dropped_clients < 1:  # and the flooder is cut off
            assert time.monotonic() < deadline, "the flooding client was never cut off"
            await asyncio.sleep(0.02)
    finally:
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
