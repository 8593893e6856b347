"""PCD-04 out: ORU^R40 to a simulated Alarm Manager on a real TCP socket, with ACK^R40, confirm timeout and watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from alerts.channels.pcd04_out import NO_ACK, Pcd04Out, Pcd04Settings, read_ack, report_message
from devices.contract import Alert, DeviceEvent
from gateway.drivers.hl7_pcd.pcd import Routing, decode
from simulators.alarm_manager import AlarmManager, ack_for
from tests.conftest import free_port

SLACK_S = 5.0
ALERT = Alert(id="al-0123456789abcdef", type="spo2_low", source="ICU-01", alarm_kind="physiological",
              priority="high", state="active", onset=1_767_225_630_000, updated=1_767_225_640_000,
              message="spo2_low: SpO2 85 % below 90 | for 10 s", bed="ICU-01", unit="ICU",
              metric="MDC_PULS_OXIM_SAT_O2", value=85.0)


class Raised:
    """Collects technical alarms the channel raises."""

    def __init__(self) -> None:
        self.alarms: list[tuple[str, str, str]] = []

    async def __call__(self, source: str, type_: str, priority: str, message: str, *, bed: str | None,
                       unit: str | None) -> None:
        self.alarms.append((source, type_, message))

    async def wait(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while not self.alarms:
            assert time.monotonic() < deadline, "no technical alarm"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def reporter(port: int, **options: float) -> AsyncIterator[tuple[Pcd04Out, Raised]]:
    raised = Raised()
    out = Pcd04Out(Pcd04Settings(host="127.0.0.1", port=port, **options), raised)  # type: ignore[arg-type]
    task = asyncio.create_task(out.run())
    try:
        yield out, raised
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def manager() -> AsyncIterator[AlarmManager]:
    am = AlarmManager()
    await am.start()
    yield am
    await am.stop()


def obr3(payload: bytes) -> list[str]:
    segment = next(s for s in payload.decode().split("\r") if s.startswith("OBR"))
    return segment.split("|")[3].split("^")


def test_the_message_reads_back_through_the_gateway_pcd04_parser() -> None:
    """Our ORU^R40 is what an Alarm Manager reads: the gateway's own (independent) PCD-04 mapping agrees."""
    payload = report_message(ALERT, "start", 1, "WL1", 1_767_225_641_000, Pcd04Settings())
    decoded = decode(payload, Routing("wardlink", discover=False), 1_767_225_641_000)
    assert decoded.error is None
    (event,) = decoded.items
    assert isinstance(event, DeviceEvent)
    assert (event.event, event.priority, event.alarm_kind, event.phase) == ("spo2_low", "high", "physiological",
                                                                            "start")
    assert event.source == "MDC_PULS_OXIM_SAT_O2"
    assert event.alert_uuid == ALERT.id
    assert "| for 10 s" in event.text  # escaped on the wire, intact after parsing
    end = decode(report_message(msgspec.structs.replace(ALERT, state="resolved"), "end", 3, "WL3", 0,
                                Pcd04Settings()), Routing("wardlink", discover=False), 0)
    assert end.items[0].phase == "end"  # type: ignore[union-attr]


def test_ack_reading() -> None:
    payload = report_message(ALERT, "start", 1, "WL42", 0, Pcd04Settings())
    assert read_ack(ack_for(payload)) == ("AA", "WL42")
    assert read_ack(ack_for(payload, "AR")) == ("AR", "WL42")
    assert read_ack(b"MSH|^~\\&|X\r") == ("", "")


async def test_start_update_end_are_confirmed(manager: AlarmManager) -> None:
    async with reporter(manager.port, confirm_s=5.0) as (out, raised):
        out.report(ALERT)
        out.report(msgspec.structs.replace(ALERT, state="acknowledged", updated=ALERT.updated + 1000))
        out.report(msgspec.structs.replace(ALERT, state="resolved", updated=ALERT.updated + 2000))
        received = await manager.wait_for(3, 20)
        deadline = time.monotonic() + 10
        while out.acked < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    phases = [next(s.split("|")[5] for s in p.decode().split("\r") if "MDC_ATTR_EVENT_PHASE" in s) for p in received]
    assert phases == ["start", "update", "end"]
    assert [obr3(p) for p in received] == [[str(n), ALERT.id, "WARDLINK"] for n in (1, 2, 3)]
    assert "acknowledged" in received[1].decode()
    assert raised.alarms == []


async def test_a_manager_that_never_acks_raises_a_technical_alarm(manager: AlarmManager) -> None:
    manager.mode = "never"
    async with reporter(manager.port, confirm_s=0.5) as (out, raised):
        out.report(ALERT)
        await raised.wait(0.5 + SLACK_S)
        assert raised.alarms[0][1] == NO_ACK
        assert out.acked == 0
        manager.mode = "ack"  # it recovers: the queued start is sent again on a new connection, and confirmed
        deadline = time.monotonic() + 10 + SLACK_S
        while out.acked < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert manager.connections >= 2
    assert all(obr3(p)[0] == "1" for p in manager.received if b"OBR" in p and ALERT.id.encode() in p)


async def test_a_rejecting_manager_raises_a_technical_alarm(manager: AlarmManager) -> None:
    manager.mode = "reject"
    async with reporter(manager.port, confirm_s=2.0) as (out, raised):
        out.report(ALERT)
        await raised.wait(SLACK_S)
    assert raised.alarms[0][1] == NO_ACK
    assert "AR" in raised.alarms[0][2]


async def test_the_watchdog_notices_a_manager_gone_silent(manager: AlarmManager) -> None:
    async with reporter(manager.port, confirm_s=0.5, watchdog_s=0.3) as (_out, raised):
        await manager.wait_for(2, 0.6 + SLACK_S)  # watchdog messages while idle, each confirmed
        assert b"WARDLINK_WATCHDOG" in manager.received[0]
        assert raised.alarms == []
        manager.mode = "never"
        await raised.wait(0.3 + 0.5 + SLACK_S)
    assert raised.alarms[0][1] == NO_ACK


async def test_an_unreachable_manager_raises_a_technical_alarm() -> None:
    async with reporter(free_port(), confirm_s=0.5) as (out, raised):
        out.report(ALERT)
        await raised.wait(SLACK_S)
    assert raised.alarms[0][1] == NO_ACK
