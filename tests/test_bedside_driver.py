"""The gateway's bedside-serial driver on a real pty: normalisation, garbage, unplug and replug."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from devices.contract import FLAG_CLOCK_SKEW, DeviceEvent, DeviceInfo, Item, Observation
from devices.site import DeviceSpec
from gateway.drivers.bedside_serial.driver import BedsideSerialDriver
from simulators.bedside.monitor import SimulatedMonitor
from simulators.bedside.patient import PatientModel


class ListSink:
    """Collects what the driver accepts."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.infos: list[DeviceInfo] = []

    def accept(self, items: Sequence[Item]) -> None:
        self.items.extend(items)

    def accept_soon(self, items: Sequence[Item]) -> asyncio.Future[None]:
        self.items.extend(items)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def register(self, info: DeviceInfo) -> None:
        self.infos.append(info)

    def observations(self) -> list[Observation]:
        return [i for i in self.items if isinstance(i, Observation)]

    def events(self) -> list[DeviceEvent]:
        return [i for i in self.items if isinstance(i, DeviceEvent)]


@contextlib.asynccontextmanager
async def wired(monitor: SimulatedMonitor, **connection: float) -> AsyncIterator[tuple[BedsideSerialDriver, ListSink]]:
    spec = DeviceSpec(id="mon-t", kind="bedside_serial", gateway="gw-t", bed="ICU-01",
                      connection={"port": monitor.port, "baudrate": 115200, **connection})
    sink = ListSink()
    driver = BedsideSerialDriver(spec, sink)
    tasks = [asyncio.create_task(driver.run())]
    await asyncio.sleep(0.2)  # the port is open (opening flushes its input) before the monitor says IDENT
    tasks.append(asyncio.create_task(monitor.run()))
    try:
        yield driver, sink
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        monitor.close()


async def wait_for(predicate: object, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_readings_are_normalised_to_mdc_and_ucum() -> None:
    monitor = SimulatedMonitor("SN1", "WLB-100", "1.0", PatientModel("stable", seed=1), interval_s=0.1)
    async with wired(monitor) as (driver, sink):
        await wait_for(lambda: len({o.metric for o in sink.observations()}) >= 10, 5)
    by_metric = {o.metric: o for o in sink.observations()}
    spo2 = by_metric["MDC_PULS_OXIM_SAT_O2"]
    assert (spo2.code, spo2.unit, spo2.bed, spo2.stream) == (150456, "%", "ICU-01", "numerics")
    assert by_metric["MDC_TEMP"].unit == "Cel"
    assert by_metric["MDC_ECG_HEART_RATE"].unit == "/min"
    unknown = [m for m in by_metric if m.startswith("WLB_PARAM_")]
    assert unknown, "the vendor parameter the gateway does not know was dropped"
    assert by_metric[unknown[0]].code == 0
    assert driver.health().state == "connected"
    assert driver.ident is not None
    assert driver.ident.serial_number == "SN1"
    # The IDENT frame is announced: model, serial number and firmware.
    infos = [(i.device, i.model, i.serial_number, i.firmware) for i in sink.infos]
    assert infos == [("mon-t", "WLB-100", "SN1", "1.0")]
    assert all(o.device_ts is not None and abs(o.ts - o.device_ts) < 5000 for o in sink.observations())


async def test_garbage_is_counted_and_reading_goes_on() -> None:
    monitor = SimulatedMonitor("SN2", "WLB-100", "1.0", PatientModel("stable", seed=2), interval_s=0.1)
    async with wired(monitor) as (driver, sink):
        await wait_for(lambda: len(sink.observations()) > 0, 5)
        # A corrupted frame (start byte, junk, end byte) and line noise.
        monitor.inject(b"\xc0\x00\x05N\x00\x01\xff\xff\xff\xc1" + bytes(range(0xC2, 0xFF)))
        before = len(sink.observations())
        await wait_for(lambda: len(sink.observations()) > before + 20, 5)
    assert driver.health().frames_bad >= 1
    assert driver.health().state == "connected"


async def test_unplug_raises_disconnected_and_replug_ends_it() -> None:
    monitor = SimulatedMonitor("SN3", "WLB-100", "1.0", PatientModel("stable", seed=3), interval_s=0.1)
    async with wired(monitor, silence_s=0.6) as (driver, sink):
        await wait_for(lambda: len(sink.observations()) > 0, 5)
        monitor.unplug()
        await wait_for(lambda: any(e.phase == "start" for e in sink.events()), 5)
        assert driver.health().state == "lost"
        monitor.replug()
        await wait_for(lambda: any(e.phase == "end" for e in sink.events()), 5)
    events = [(e.event, e.phase, e.alarm_kind) for e in sink.events()]
    assert events == [("device.disconnected", "start", "technical"), ("device.disconnected", "end", "technical")]
    assert driver.health().state == "connected"


async def test_a_monitor_clock_far_off_is_flagged_not_dropped() -> None:
    monitor = SimulatedMonitor("SN4", "WLB-100", "1.0", PatientModel("stable", seed=4), interval_s=0.1,
                               clock_offset_ms=-10 * 365 * 86_400_000)
    async with wired(monitor) as (_, sink):
        await wait_for(lambda: len(sink.observations()) > 5, 5)
    assert all(o.flags & FLAG_CLOCK_SKEW for o in sink.observations())
    assert all(abs(o.ts - o.device_ts) > 86_400_000 for o in sink.observations() if o.device_ts is not None)


@pytest.mark.parametrize("port", ["/dev/does-not-exist"])
async def test_a_missing_port_is_a_lost_link_not_a_crash(port: str) -> None:
    spec = DeviceSpec(id="mon-x", kind="bedside_serial", gateway="gw-t", connection={"port": port})
    sink = ListSink()
    driver = BedsideSerialDriver(spec, sink)
    task = asyncio.create_task(driver.run())
    await wait_for(lambda: driver.health().state == "lost", 3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [e.event for e in sink.events()] == ["device.disconnected"]
