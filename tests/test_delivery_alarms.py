"""Delivery failure as a technical alarm, end to end in the alert service (real Mosquitto): raised, routed on, ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from alerts.delivery import UNCONFIRMED, DeliverySettings
from alerts.routing import RoutingSettings, StepSpec
from alerts.rules import LimitRule
from alerts.service import AlertService, AlertSettings
from api.view import LiveView
from devices import bus, topics
from devices.clock import now_ms
from devices.contract import Alert, Batch, Notification, Observation, Presence, encode
from state import open_state
from tests.conftest import Mosquitto
from tests.test_escalation import SITE, staffed

SLACK_S = 5.0
RULE = LimitRule(name="spo2_low", metric="spo2", direction="below", limit=90, priority="high", delay_s=0,
                 hysteresis=2)


async def until(check: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        await asyncio.sleep(0.05)


async def test_an_unconfirmed_delivery_alarm_goes_to_the_next_step_and_ends_with_the_alert(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    staffed(state, start=now_ms() - 60_000)
    routing = RoutingSettings(schedules={"high": [StepSpec("primary", 60), StepSpec("buddy", 60),
                                                  StepSpec("charge", 60)]}, confirm_s=1.0, poll_s=0.1)
    settings = AlertSettings(rules=[RULE], delivery=DeliverySettings(routing=routing), tick_s=0.2)
    service = AlertService(SITE, state, mosquitto.address, settings)
    task = asyncio.create_task(service.run())
    alerts: list[Alert] = []
    notes: list[Notification] = []
    alert_decoder, note_decoder = msgspec.json.Decoder(Alert), msgspec.json.Decoder(Notification)
    try:
        async with bus.client(mosquitto.address, "test-delivery") as client:
            await client.subscribe(topics.alert_filter(SITE.id), qos=1)
            await client.subscribe(topics.notify_filter(SITE.id), qos=1)

            async def watch() -> None:
                async for message in client.messages:
                    if not isinstance(message.payload, bytes) or not message.payload:
                        continue
                    if topics.parse(str(message.topic)).area == "notify":
                        notes.append(note_decoder.decode(message.payload))
                    else:
                        alerts.append(alert_decoder.decode(message.payload))

            watcher = asyncio.create_task(watch())
            await until(lambda: service._client is not None, 20, "the service connecting")
            await asyncio.sleep(1.0)
            reading = Observation(device="mon-icu-01", stream="numerics", seq=1, ts=now_ms(),
                                  metric="MDC_PULS_OXIM_SAT_O2", value=85, unit="%", bed="ICU-01")
            await client.publish(topics.gateway_topic(SITE.id, "gw-icu", "data"),
                                 encode(Batch(gateway="gw-icu", sent=now_ms(), items=[reading])), qos=1)
            # nobody has a stream: Ana's delivery is never confirmed
            await until(lambda: any(a.type == UNCONFIRMED for a in alerts), 1.0 + SLACK_S, "the delivery alarm")
            technical = next(a for a in alerts if a.type == UNCONFIRMED)
            assert (technical.alarm_kind, technical.source, technical.bed) == ("technical", "n-ana", "ICU-01")
            await until(lambda: any(n.alert.type == UNCONFIRMED for n in notes), SLACK_S, "its notification")
            first = next(n for n in notes if n.alert.type == UNCONFIRMED)
            assert (first.staff, first.target) == ("n-ben", "buddy")  # the next step of the chain, not Ana
            spo2 = next(a for a in alerts if a.type == "spo2_low")
            await until(lambda: any(n.alert.id == spo2.id and n.staff == "n-ben" for n in notes), SLACK_S,
                        "the alarm moving on to the buddy")
            state.alerts.acknowledge(spo2.id, "n-ben", now_ms())
            await until(lambda: any(a.id == technical.id and a.state == "resolved" for a in alerts), SLACK_S,
                        "the delivery alarm ending with the acknowledgement")
            watcher.cancel()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        state.close()


async def test_an_alert_saved_but_never_routed_is_routed_after_a_restart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A crash between saving an alert and routing it: the next start routes it (once)."""
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    staffed(state, start=now_ms() - 60_000)
    now = now_ms()
    state.alerts.save(Alert(id="al-crashed", type="spo2_low", source="ICU-01", alarm_kind="physiological",
                            priority="high", state="active", onset=now, updated=now, message="SpO2 85 % below 90",
                            bed="ICU-01", unit="ICU", metric="MDC_PULS_OXIM_SAT_O2", value=85.0))
    service = AlertService(SITE, state, mosquitto.address, AlertSettings(rules=[RULE]))
    notes: list[Notification] = []
    decoder = msgspec.json.Decoder(Notification)
    task: asyncio.Task[None] | None = None
    try:
        async with bus.client(mosquitto.address, "test-resume") as client:
            await client.subscribe(topics.notify_filter(SITE.id), qos=1)

            async def watch() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        notes.append(decoder.decode(message.payload))

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)
            task = asyncio.create_task(service.run())
            await until(lambda: bool(notes), 20, "the crashed alert's notification")
            await asyncio.sleep(1.0)
            watcher.cancel()
        assert [(n.alert.id, n.staff, n.step) for n in notes] == [("al-crashed", "n-ana", 0)]
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        state.close()


async def test_nobody_live_fails_the_delivery_at_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """An API says who has a live stream: a primary without one is passed over now, not after the bound."""
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    staffed(state, start=now_ms() - 60_000)
    routing = RoutingSettings(schedules={"high": [StepSpec("primary", 60), StepSpec("buddy", 60)]}, confirm_s=60,
                              poll_s=0.1)
    service = AlertService(SITE, state, mosquitto.address,
                           AlertSettings(rules=[RULE], delivery=DeliverySettings(routing=routing)))
    notes: list[Notification] = []
    decoder = msgspec.json.Decoder(Notification)
    task = asyncio.create_task(service.run())
    try:
        async with bus.client(mosquitto.address, "test-presence") as client:
            await client.subscribe(topics.notify_filter(SITE.id), qos=1)
            await client.publish(topics.presence_topic(SITE.id, "api-test"),
                                 encode(Presence("api-test", ["n-ben"], now_ms())), qos=1, retain=True)

            async def watch() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        notes.append(decoder.decode(message.payload))

            watcher = asyncio.create_task(watch())
            await until(lambda: service.dispatch.live("n-ben") is True, 20, "the presence reaching the service")
            assert service.dispatch.live("n-ana") is False
            reading = Observation(device="mon-icu-01", stream="numerics", seq=1, ts=now_ms(),
                                  metric="MDC_PULS_OXIM_SAT_O2", value=85, unit="%", bed="ICU-01")
            started = time.monotonic()
            await client.publish(topics.gateway_topic(SITE.id, "gw-icu", "data"),
                                 encode(Batch(gateway="gw-icu", sent=now_ms(), items=[reading])), qos=1)
            await until(lambda: any(n.alert.type == "spo2_low" and n.staff == "n-ben" for n in notes), SLACK_S,
                        "the buddy's notification")
            assert time.monotonic() - started < 60  # long before the 60 s bound or the primary's timeout
            moved = next(n for n in notes if n.alert.type == "spo2_low" and n.staff == "n-ben")
            assert (moved.step, moved.reason) == (1, "unconfirmed")
            await until(lambda: any(n.alert.type == UNCONFIRMED for n in notes), SLACK_S, "the delivery alarm")
            failed = [d for d in service.dispatch.escalations.deliveries(staff="n-ana") if d.alert_id == moved.alert.id]
            assert [(d.status, d.detail) for d in failed] == [("failed", "no live stream")]
            watcher.cancel()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        state.close()


async def test_the_api_view_says_who_is_live(mosquitto: Mosquitto) -> None:
    view = LiveView(SITE.id, mosquitto.address)
    task = asyncio.create_task(view.run())
    seen: list[Presence] = []
    decoder = msgspec.json.Decoder(Presence)
    try:
        async with bus.client(mosquitto.address, "test-presence-view") as client:
            await client.subscribe(topics.presence_filter(SITE.id), qos=1)

            async def watch() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        seen.append(decoder.decode(message.payload))

            watcher = asyncio.create_task(watch())
            await until(lambda: view.connected, 20, "the view connecting")
            stream = view.subscribe_staff("n-ana")
            await until(lambda: bool(seen) and seen[-1].staff == ["n-ana"], SLACK_S, "n-ana live")
            view.unsubscribe_staff(stream)
            await until(lambda: seen[-1].staff == [], SLACK_S, "n-ana gone")
            assert {p.instance for p in seen} == {view.instance}
            watcher.cancel()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
