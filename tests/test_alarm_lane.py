"""The alarm lane: a device alarm overtakes a telemetry backlog in the alert service (real Mosquitto, real service)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from alerts.rules import LimitRule
from alerts.service import AlertService, AlertSettings
from devices import bus, topics
from devices.clock import now_ms
from devices.contract import Alert, Batch, DeviceEvent, Observation, encode
from state import open_state
from tests.conftest import Mosquitto
from tests.test_escalation import SITE, staffed

RULE = LimitRule(name="spo2_low", metric="spo2", direction="below", limit=90, priority="medium", delay_s=0,
                 hysteresis=2)
BACKLOG_BATCHES = 300  # 150,000 readings: seconds of work for the engine on any machine


def _telemetry(n: int, seq0: int, value: float = 97.0) -> bytes:
    ts = now_ms()
    return encode(Batch(gateway="gw-icu", sent=ts, items=[Observation(
        device="mon-icu-02", stream="numerics", seq=seq0 + i, ts=ts, metric="MDC_PULS_OXIM_SAT_O2", value=value,
        unit="%", bed="ICU-02") for i in range(n)]))


async def test_a_device_alarm_overtakes_a_telemetry_backlog(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The backlog waits in the broker for the service's persistent session, so it exists on any machine.

    (Publishing it while the service ran let a fast service keep up, and then the low reading, published
    first, rightly raised its alert first: the test flaked on the CI runner.)
    """
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    staffed(state, start=now_ms() - 60_000)

    def start() -> tuple[AlertService, asyncio.Task[None]]:
        service = AlertService(SITE, state, mosquitto.address, AlertSettings(rules=[RULE]))
        return service, asyncio.create_task(service.run())

    async def subscribed(service: AlertService) -> None:
        deadline = time.monotonic() + 20
        while service._client is None:  # connected
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # and subscribed on both connections

    service, task = start()
    seen: list[Alert] = []
    arrived: dict[str, float] = {}
    decoder = msgspec.json.Decoder(Alert)
    try:
        await subscribed(service)  # its sessions (and subscriptions) now outlive it at the broker
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with bus.client(mosquitto.address, "test-lane") as client:
            await client.subscribe(topics.alert_filter(SITE.id), qos=1)

            async def watch() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        seen.append(decoder.decode(message.payload))
                        arrived.setdefault(seen[-1].type, time.monotonic())

            watcher = asyncio.create_task(watch())
            data = topics.gateway_topic(SITE.id, "gw-icu", "data")
            for n in range(BACKLOG_BATCHES):  # the backlog, then a low reading at its very end
                await client.publish(data, _telemetry(500, n * 500 + 1), qos=1)
            await client.publish(data, _telemetry(1, BACKLOG_BATCHES * 500 + 1, value=80.0), qos=1)
            alarm = DeviceEvent(device="mon-icu-01", stream="alarms", seq=1, ts=now_ms(), event="MDC_EVT_ECG_LEAD_OFF",
                                alarm_kind="technical", priority="medium", text="ECG lead off", bed="ICU-01")
            await client.publish(topics.gateway_topic(SITE.id, "gw-icu", "alarm"),
                                 encode(Batch(gateway="gw-icu", sent=now_ms(), items=[alarm])), qos=1)
            service, task = start()  # the broker hands it the whole backlog, then the alarm, at once
            deadline = time.monotonic() + 120
            while not any(a.type == "spo2_low" for a in seen):
                assert time.monotonic() < deadline, "the backlog was never worked off"
                await asyncio.sleep(0.05)
            watcher.cancel()
        lead = arrived["spo2_low"] - arrived.get("MDC_EVT_ECG_LEAD_OFF", arrived["spo2_low"])
        print(f"\nalarm lane: the device alarm arrived {lead * 1000:.0f} ms before spo2_low")
        order = [a.type for a in seen if a.type in ("spo2_low", "MDC_EVT_ECG_LEAD_OFF")]
        assert order[:2] == ["MDC_EVT_ECG_LEAD_OFF", "spo2_low"]  # published after the backlog, raised before it
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        state.close()
