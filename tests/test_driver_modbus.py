"""Modbus drivers: register decoding (property tests), maps, and both drivers on real TCP and pty RTU lines."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.contract import DeviceEvent, DeviceInfo, Item, Observation, check_item
from devices.site import DeviceSpec
from gateway.drivers.modbus_common.bus import Bus, Endpoint, LineTiming, acquire, release
from gateway.drivers.modbus_common.codec import (
    VALUE_TYPES,
    WORDS,
    decode_text,
    decode_value,
    encode_value,
    shortest_float32,
)
from gateway.drivers.modbus_common.decode import MapState, to_items
from gateway.drivers.modbus_common.errors import (
    ModbusConfigError,
    ModbusExceptionCode,
    ModbusTimeout,
    RegisterError,
)
from gateway.drivers.modbus_common.poller import ModbusDevice, parse_settings
from gateway.drivers.modbus_common.regmap import BIT_TABLES, RegisterMap, compile_map
from gateway.drivers.modbus_map.driver import ModbusMapDriver
from gateway.drivers.modbus_map.parser import resolve_map, shipped_maps
from gateway.drivers.modbus_pump.driver import ModbusPumpDriver
from gateway.drivers.modbus_pump.parser import STATE_ALARM, STATE_INFUSING, pump_map
from simulators.modbus.devices import FridgeLogger, WasteScale
from simulators.modbus.pump import PumpModel
from simulators.modbus.server import ModbusSimulator, UnitModel

ORDERS = st.sampled_from(["big", "little"])
SPEC = DeviceSpec(id="dev-prop", kind="modbus_map", gateway="gw-t", bed="BED-1")
MAPS: list[RegisterMap] = [resolve_map(name) for name in shipped_maps()] + [pump_map()]
TRANSPORTS = ["tcp", "rtu"]


class ListSink:
    """Collects what a driver accepts and registers."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.infos: list[DeviceInfo] = []

    def accept(self, items: Sequence[Item]) -> None:
        self.items.extend(items)

    def register(self, info: DeviceInfo) -> None:
        self.infos.append(info)

    def observations(self, metric: str | None = None) -> list[Observation]:
        return [i for i in self.items if isinstance(i, Observation) and metric in (None, i.metric)]

    def events(self, event: str | None = None) -> list[DeviceEvent]:
        return [i for i in self.items if isinstance(i, DeviceEvent) and event in (None, i.event)]


# --- decoding: property tests ------------------------------------------------------------------------------


def values_of(value_type: str) -> st.SearchStrategy[Any]:
    if value_type == "float32":
        return st.floats(width=32, allow_nan=False)
    if value_type == "bool":
        return st.booleans()
    bits, signed = int(value_type.removeprefix("u").removeprefix("int")), not value_type.startswith("u")
    low = -(2 ** (bits - 1)) if signed else 0
    return st.integers(low, low + 2**bits - 1)


@given(st.data(), st.sampled_from(VALUE_TYPES), ORDERS)
def test_encoding_a_value_then_decoding_gives_it_back(data: st.DataObject, value_type: Any, order: Any) -> None:
    value = data.draw(values_of(value_type))
    words = encode_value(value, value_type, order)
    assert len(words) == WORDS[value_type]
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_value(words, value_type, order) == value


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), st.sampled_from(["int32", "uint32", "float32"]))
def test_two_word_values_match_an_independent_decoder(words: list[int], value_type: str) -> None:
    fmt = {"int32": ">i", "uint32": ">I", "float32": ">f"}[value_type]
    high_first = struct.unpack(fmt, struct.pack(">HH", *words))[0]
    low_first = struct.unpack(fmt, struct.pack(">HH", words[1], words[0]))[0]
    assert repr(decode_value(words, value_type, "big")) == repr(high_first)  # type: ignore[arg-type]
    assert repr(decode_value(words, value_type, "little")) == repr(low_first)  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_values_read_as_their_shortest_decimal(value: float) -> None:
    short = shortest_float32(value)
    assert struct.pack(">f", short) == struct.pack(">f", value)
    assert len(repr(short)) <= len(repr(value))


@given(st.lists(st.one_of(st.integers(-(2**20), 2**20), st.booleans(), st.none(), st.floats(), st.text(max_size=2)),
                max_size=3), st.sampled_from(VALUE_TYPES), ORDERS)
def test_arbitrary_words_decode_or_raise_only_register_error(words: list[Any], value_type: Any, order: Any) -> None:
    with contextlib.suppress(RegisterError):
        decode_value(words, value_type, order)
    with contextlib.suppress(RegisterError):
        decode_text(words)


def snapshots(data: st.DataObject, regmap: RegisterMap) -> dict[str, dict[int, int]]:
    snapshot: dict[str, dict[int, int]] = {}
    for block in regmap.blocks:
        top = 1 if block.table in BIT_TABLES else 0xFFFF
        words = data.draw(st.lists(st.integers(0, top), min_size=block.count, max_size=block.count))
        snapshot.setdefault(block.table, {}).update(zip(range(block.address, block.address + block.count), words,
                                                        strict=True))
    return snapshot


@settings(max_examples=200)
@given(st.data())
def test_any_register_contents_give_valid_items_and_paired_events(data: st.DataObject) -> None:
    regmap = data.draw(st.sampled_from(MAPS))
    state = MapState()
    started: set[tuple[str, str | None]] = set()
    for _ in range(3):
        items = to_items(SPEC, regmap, snapshots(data, regmap), state, 1)
        phases = [i.phase for i in items if isinstance(i, DeviceEvent)]
        assert phases == sorted(phases, key=lambda phase: phase != "end")  # ends before starts
        for item in items:
            check_item(item)  # finite values only: a NaN float32 or a sentinel never becomes a value
            if isinstance(item, DeviceEvent):
                key = (item.event, item.text.removesuffix(" (cleared)").split(":")[0])
                if item.phase == "start":
                    assert key not in started
                    started.add(key)
                else:
                    assert item.phase == "end"
                    started.discard(key)


@given(st.data(), st.integers(-(2**17), -1) | st.integers(0x10000, 2**17))
def test_a_word_outside_16_bits_is_a_register_error_not_a_value(data: st.DataObject, bad: int) -> None:
    regmap = data.draw(st.sampled_from(MAPS))
    snapshot = snapshots(data, regmap)
    table = regmap.blocks[0].table
    snapshot[table][regmap.blocks[0].address] = bad
    with pytest.raises(RegisterError):
        to_items(SPEC, regmap, snapshot, MapState(), 1)


# --- maps and configuration --------------------------------------------------------------------------------


def small_map(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "t", "points": [{"name": "a", "address": 40001, "metric": "X", "unit": "1"}],
                            "address_base": 40001}
    data.update(overrides)
    return data


def test_address_base_turns_manual_numbers_into_wire_addresses() -> None:
    regmap = compile_map(small_map(address_base={"holding": 40001, "input": 30001}, points=[
        {"name": "h", "address": 40010}, {"name": "i", "table": "input", "address": 30001, "type": "int32"},
        {"name": "b", "address": 40011, "metric": "X", "unit": "1"}]), "test")
    assert [(p.name, p.table, p.address) for p in regmap.points] == [("h", "holding", 9), ("i", "input", 0),
                                                                      ("b", "holding", 10)]
    assert [(b.table, b.address, b.count) for b in regmap.blocks] == [("holding", 9, 2), ("input", 0, 2)]


@pytest.mark.parametrize(("change", "message"), [
    ({"points": [{"name": "a", "adress": 40001}]}, "adress"),
    ({"points": [{"name": "a", "address": 40000}]}, "outside the holding table"),
    ({"points": [{"name": "a", "address": 40001, "metric": "VENDOR_X"}]}, "needs a unit"),
    ({"points": [{"name": "a", "address": 40001, "metric": "MDC_TEMP", "unit": "K"}]}, "'Cel'"),
    ({"points": [{"name": "a", "address": 40001, "type": "float32", "sentinels": [0]}]}, "integer type"),
    ({"points": [{"name": "a", "address": 40001, "exponent": "nope"}]}, "exponent names no point"),
    ({"bits": [{"name": "b", "point": "a", "bit": 16, "event": "e"}]}, "bit 16 does not exist"),
    ({"bits": [{"name": "b", "point": "a", "bit": 1}]}, "does nothing"),
    ({"points": [{"name": "c", "table": "coil", "address": 1, "type": "uint16"}], "address_base": 1}, "type is bool"),
])
def test_a_bad_map_fails_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModbusConfigError, match=message):
        compile_map(small_map(**change), "test")


@pytest.mark.parametrize(("connection", "message"), [
    ({"transport": "tcp"}, "host is required"),
    ({"transport": "rtu", "serial_port": "/dev/x", "unit": 0}, "unit 0"),
    ({"transport": "tcp", "host": "h", "poll": 1}, "poll"),
    ({"transport": "udp", "host": "h"}, "transport"),
])
def test_a_bad_connection_table_fails_at_start_up(connection: dict[str, Any], message: str) -> None:
    spec = DeviceSpec(id="d1", kind="modbus_map", gateway="g", connection={"map": "waste_scale", **connection})
    with pytest.raises(ModbusConfigError, match=message):
        parse_settings(spec)
    with pytest.raises(ModbusConfigError):
        ModbusMapDriver(spec, ListSink())


def test_unknown_map_names_list_the_shipped_ones() -> None:
    spec = DeviceSpec(id="d1", kind="modbus_map", gateway="g",
                      connection={"transport": "tcp", "host": "h", "map": "toaster"})
    with pytest.raises(ModbusConfigError, match="fridge_logger, o2_detector, waste_scale"):
        ModbusMapDriver(spec, ListSink())


# --- real transports ---------------------------------------------------------------------------------------

FAST: dict[str, Any] = {"poll_s": 0.05, "timeout_s": 0.1, "retries": 1, "lost_after": 3, "backoff_s": 0.1,
                        "backoff_max_s": 0.3}


def connection(sim: ModbusSimulator, unit: int, **extra: Any) -> dict[str, Any]:
    where: dict[str, Any] = ({"transport": "tcp", "host": sim.host, "port": sim.port} if sim.transport == "tcp"
                             else {"transport": "rtu", "serial_port": sim.serial_port, "baudrate": sim.baudrate})
    return {**where, "unit": unit, **FAST, **extra}


def pump_driver(sim: ModbusSimulator, sink: ListSink, unit: int = 1, **extra: Any) -> ModbusPumpDriver:
    spec = DeviceSpec(id=f"pump-{unit}", kind="modbus_pump", gateway="gw-t", bed="ICU-01",
                      connection=connection(sim, unit, **extra))
    return ModbusPumpDriver(spec, sink)


def map_driver(sim: ModbusSimulator, sink: ListSink, unit: int, name: str, **extra: Any) -> ModbusMapDriver:
    spec = DeviceSpec(id=f"{name}-{unit}", kind="modbus_map", gateway="gw-t",
                      connection=connection(sim, unit, map=name, **extra))
    return ModbusMapDriver(spec, sink)


@contextlib.asynccontextmanager
async def running(*drivers: ModbusDevice) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(d.run()) for d in drivers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def line_bus(sim: ModbusSimulator, *units: int, **timing: float) -> AsyncIterator[Bus]:
    endpoint = (Endpoint("tcp", host=sim.host, port=sim.port) if sim.transport == "tcp"
                else Endpoint("rtu", serial_port=sim.serial_port, baudrate=sim.baudrate))
    values = {"timeout_s": 0.15, "pause_s": 0.0, "late_guard_s": 0.15 if sim.transport == "rtu" else 0.0, **timing}
    buses = [acquire(endpoint, unit, LineTiming(**values)) for unit in units]
    try:
        yield buses[0]
    finally:
        for bus, unit in zip(buses, units, strict=True):
            release(bus, unit)


def simulator(transport: str, *units: UnitModel) -> ModbusSimulator:
    return ModbusSimulator(units, transport=transport)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pump_values_alarms_and_identity_arrive_as_contract_items(transport: str) -> None:
    pump = PumpModel(unit=5, time_scale=600.0)
    async with simulator(transport, pump) as sim:
        sink = ListSink()
        driver = pump_driver(sim, sink, unit=5)
        async with running(driver):
            await wait_for(lambda: len(sink.observations("MDC_VOL_INFUS_ACTUAL_TOTAL")) >= 3)
            pump.inject_occlusion()
            await wait_for(lambda: bool(sink.events("pump.occlusion")))
            pump.clear_occlusion()
            await wait_for(lambda: len(sink.events("pump.occlusion")) == 2)
            await wait_for(lambda: sink.observations("WARDLINK_PUMP_STATE")[-1].value == STATE_INFUSING)
    by_metric = {o.metric: o for o in sink.observations()}
    assert {m: (o.code, o.unit) for m, o in by_metric.items()} == {
        "MDC_FLOW_FLUID_PUMP": (157784, "mL/h"), "MDC_VOL_FLUID_TBI": (157884, "mL"),
        "MDC_VOL_INFUS_ACTUAL_TOTAL": (157948, "mL"), "WARDLINK_PUMP_STATE": (0, "1"),
        "WARDLINK_BATTERY_CHARGE": (0, "%")}
    assert by_metric["MDC_FLOW_FLUID_PUMP"].value == 125.0
    assert all((o.stream, o.bed, o.device) == ("pump", "ICU-01", "pump-5") for o in sink.observations())
    infused = [o.value for o in sink.observations("MDC_VOL_INFUS_ACTUAL_TOTAL")]
    assert infused == sorted(infused)
    assert infused[-1] > infused[0]
    assert STATE_ALARM in {o.value for o in sink.observations("WARDLINK_PUMP_STATE")}
    start, end = sink.events("pump.occlusion")
    assert (start.phase, start.priority, start.alarm_kind, start.stream) == ("start", "high", "technical", "alarms")
    assert end.phase == "end"
    assert [(i.model, i.serial_number, i.firmware) for i in sink.infos[:1]] == [("PV-300", "PV3-000123", "2.4.1")]
    assert driver.health().state == "connected"
    assert driver.health().frames_bad == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exception_code_and_timeout_are_typed_errors_never_values(transport: str) -> None:
    async with simulator(transport, PumpModel(unit=1)) as sim, line_bus(sim, 1) as bus:
        assert await bus.read(1, "holding", 0, 2) == [1250, 0]
        sim.raise_exception(1, 2)
        with pytest.raises(ModbusExceptionCode) as caught:
            await bus.read(1, "holding", 0, 2)
        assert caught.value.code == 2
        assert not caught.value.retryable
        sim.heal(1)
        sim.silence(1)
        with pytest.raises(ModbusTimeout):
            await bus.read(1, "holding", 0, 2)
        assert bus.timeouts == 1
        with pytest.raises(ModbusTimeout):
            await bus.read(9, "holding", 0, 2)  # a unit id nobody has: silence, as on RS-485


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_failing_unit_is_counted_and_gives_no_readings(transport: str) -> None:
    async with simulator(transport, FridgeLogger(unit=3)) as sim:
        sink = ListSink()
        driver = map_driver(sim, sink, 3, "fridge_logger", lost_after=100)
        sim.raise_exception(3, 4)
        async with running(driver):
            await wait_for(lambda: driver.errors["ModbusExceptionCode"] >= 2)
            assert sink.observations() == []
            sim.heal(3)
            sim.silence(3)
            await wait_for(lambda: driver.errors["ModbusTimeout"] >= 2)
            assert sink.observations() == []
            sim.heal(3)
            await wait_for(lambda: len(sink.observations()) >= 2)
    assert driver.health().frames_bad >= 4
    assert {o.metric for o in sink.observations()} == {"WARDLINK_TEMP_FRIDGE_AIR", "WARDLINK_TEMP_FRIDGE_PRODUCT"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_late_reply_is_not_taken_for_the_next_request(transport: str) -> None:
    # Registers 0-1 hold the rate (1250, 0), 2-3 the VTBI (5000, 0): same size, different values.
    async with simulator(transport, PumpModel(unit=1)) as sim, line_bus(sim, 1) as bus:
        sim.answer_late(1, 0.25, replies=1)
        with pytest.raises(ModbusTimeout):
            await bus.read(1, "holding", 0, 2)
        assert await bus.read(1, "holding", 2, 2) == [5000, 0]
        await wait_for(lambda: sim.replies[1] == 2)  # the late reply did go out, and was dropped
        assert await bus.read(1, "holding", 0, 2) == [1250, 0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_late_reply_is_not_taken_for_another_units_pending_request(transport: str) -> None:
    async with simulator(transport, PumpModel(unit=1), PumpModel(unit=2, rate_ml_h=80.0)) as sim, \
            line_bus(sim, 1, 2) as bus:
        sim.answer_late(1, 0.25, replies=1)
        sim.answer_late(2, 0.12, replies=1)  # unit 1's late reply arrives while unit 2's request is pending
        with pytest.raises(ModbusTimeout):
            await bus.read(1, "holding", 0, 2)
        assert await bus.read(2, "holding", 0, 2) == [800, 0]
        assert sim.replies == {1: 1, 2: 1}


async def test_without_the_late_guard_rtu_would_misattribute() -> None:
    # The control for the test above: the fault is real, and the guard is what stops it.
    # Margins of 0.2 s either side: the stale reply (due at 0.6 s) must come after the next request went out
    # (at the 0.4 s timeout) and before that request's own timeout (0.8 s), even on a loaded machine. The next
    # request's own reply is late too (1.0 s, past its timeout), so it can never arrive first (it once did in CI).
    async with simulator("rtu", PumpModel(unit=1)) as sim, line_bus(sim, 1, late_guard_s=0.0, timeout_s=0.4) as bus:
        sim.answer_late(1, 0.6, replies=2)
        with pytest.raises(ModbusTimeout):
            await bus.read(1, "holding", 0, 2)
        assert await bus.read(1, "holding", 2, 2) == [1250, 0]  # the rate, answered as if it were the VTBI


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_comm_lost_after_n_failed_polls_and_recovery_ends_it(transport: str) -> None:
    async with simulator(transport, WasteScale(unit=2)) as sim:
        sink = ListSink()
        driver = map_driver(sim, sink, 2, "waste_scale")
        async with running(driver):
            await wait_for(lambda: driver.health().state == "connected")
            sim.silence(2)
            await wait_for(lambda: bool(sink.events("device.disconnected")))
            assert driver.health().state == "lost"
            assert driver.errors["ModbusTimeout"] >= FAST["lost_after"]
            during = len(sink.observations())
            await asyncio.sleep(0.3)
            assert len(sink.observations()) == during
            sim.heal(2)
            await wait_for(lambda: len(sink.events("device.disconnected")) == 2)
            await wait_for(lambda: len(sink.observations()) > during)
    events = [(e.event, e.phase, e.alarm_kind, e.stream) for e in sink.events()]
    assert events == [("device.disconnected", "start", "technical", "link"),
                      ("device.disconnected", "end", "technical", "link")]
    assert driver.health().state == "connected"


async def test_a_dead_unit_does_not_stall_a_live_one_on_the_same_rtu_line() -> None:
    async with simulator("rtu", WasteScale(unit=1), PumpModel(unit=2)) as sim:
        sim.silence(2)
        sink = ListSink()
        live = map_driver(sim, sink, 1, "waste_scale", backoff_max_s=1.0)
        dead = pump_driver(sim, sink, unit=2, backoff_max_s=1.0)
        async with running(live, dead):
            await wait_for(lambda: live.polls_ok > 0)
            polls_before, requests_before = live.polls_ok, sim.requests[2]
            await asyncio.sleep(2.0)
            live_polls, dead_requests = live.polls_ok - polls_before, sim.requests[2] - requests_before
    # 2 s at one poll per 50 ms is 40 polls; the dead unit may cost one timeout per backoff period.
    assert live_polls >= 28, live_polls
    assert dead_requests <= 6, dead_requests
    assert dead.health().state == "lost"
    assert live.health().state == "connected"
    assert [e.device for e in sink.events("device.disconnected")] == ["pump-2"]


async def test_two_devices_may_not_share_a_unit_id_on_one_line() -> None:
    async with simulator("rtu", WasteScale(unit=1)) as sim:
        sink = ListSink()
        first, second = map_driver(sim, sink, 1, "waste_scale"), map_driver(sim, sink, 1, "fridge_logger")
        async with running(first, second):
            await wait_for(lambda: first.polls_ok > 0 and second.health().state == "lost")
    assert second.polls_ok == 0
    assert first.health().frames_bad == 0


async def test_a_missing_serial_port_is_a_lost_link_not_a_crash() -> None:
    spec = DeviceSpec(id="pump-x", kind="modbus_pump", gateway="gw-t",
                      connection={"transport": "rtu", "serial_port": "/dev/does-not-exist", **FAST})
    sink = ListSink()
    driver = ModbusPumpDriver(spec, sink)
    async with running(driver):
        await wait_for(lambda: driver.health().state == "lost")
    assert driver.errors["CommLost"] >= FAST["lost_after"]
    assert [e.event for e in sink.events()] == ["device.disconnected"]
    assert sink.observations() == []


async def test_a_rebooted_tcp_device_is_reconnected() -> None:
    pump = PumpModel(unit=1)
    sink = ListSink()
    async with simulator("tcp", pump) as sim:
        driver = pump_driver(sim, sink)
        async with running(driver):
            await wait_for(lambda: driver.health().state == "connected")
            await sim.stop()
            await wait_for(lambda: driver.health().state == "lost")
            before = len(sink.observations())
            async with ModbusSimulator([pump], transport="tcp", port=sim.port):
                await wait_for(lambda: len(sink.events("device.disconnected")) == 2)
                await wait_for(lambda: len(sink.observations()) > before)
    assert len(sink.infos) == 2  # identity read again after the reconnection: it may be another pump
