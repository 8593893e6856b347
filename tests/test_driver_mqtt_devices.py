"""MQTT device drivers (rfid_mqtt, waste_mqtt): parsers under arbitrary input, and the real path on Mosquitto.

The simulators publish on a real broker exactly as readers and scan points would; the drivers
subscribe through the gateway's bus client. The broker is killed and restarted on the same port to
check the link's lost and recovered events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.bus import BrokerAddress
from devices.contract import FLAG_CLOCK_SKEW, DeviceEvent, DeviceInfo, Item, TagRead, WasteEvent, check_item, encode
from devices.site import DeviceSpec
from gateway.drivers import mqtt_feed as feed_module
from gateway.drivers.mqtt_feed import MqttFeed, Rejection
from gateway.drivers.rfid_mqtt import parser as rfid_parser
from gateway.drivers.rfid_mqtt.driver import RfidMqttDriver
from gateway.drivers.waste_mqtt import parser as waste_parser
from gateway.drivers.waste_mqtt.driver import WasteMqttDriver
from simulators.mqtt_devices.rfid import Asset, BleGatewaySim, RfidReaderSim, Ward, publish_once
from simulators.mqtt_devices.waste import CATEGORIES, JOURNEY, Bag, ScanPointSim, WasteRound
from tests.conftest import Mosquitto

NOW = 1_767_225_600_000


class ListSink:
    """Collects what drivers accept, and the size of every accept call."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.calls: list[int] = []
        self.registered: list[DeviceInfo] = []

    def accept(self, items: Sequence[Item]) -> None:
        self.items.extend(items)
        self.calls.append(len(items))

    def register(self, info: DeviceInfo) -> None:
        self.registered.append(info)

    def tags(self, device: str | None = None) -> list[TagRead]:
        return [i for i in self.items if isinstance(i, TagRead) and device in (None, i.device)]

    def waste(self) -> list[WasteEvent]:
        return [i for i in self.items if isinstance(i, WasteEvent)]

    def events(self, event: str | None = None) -> list[DeviceEvent]:
        return [i for i in self.items if isinstance(i, DeviceEvent) and event in (None, i.event)]


def rfid_spec(device: str, connection: dict[str, Any]) -> DeviceSpec:
    return DeviceSpec(id=device, kind="rfid_mqtt", gateway="gw-t", connection=connection)


def waste_spec(device: str, connection: dict[str, Any]) -> DeviceSpec:
    return DeviceSpec(id=device, kind="waste_mqtt", gateway="gw-t", connection=connection)


async def wait_for(predicate: Callable[[], bool], seconds: float, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, f"{what} not reached within {seconds} s"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(*runs: Callable[[], Any]) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run coroutines (drivers, simulators) as tasks; cancel them all at the end."""
    tasks = [asyncio.create_task(run()) for run in runs]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


async def connected(*drivers: RfidMqttDriver | WasteMqttDriver) -> None:
    await wait_for(lambda: all(d.health().state == "connected" for d in drivers), 5, "drivers subscribed")


# -- parsers under arbitrary input ---------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
TIMES = st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=45) | st.sampled_from(
    ["2026-01-01T00:00:00Z", "2026-01-01T08:00:00.5+08:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
HEX = st.text("0123456789abcdefABCDEF:-", max_size=30)


def _entry(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects made of the format's own keys (each with plausible and implausible values) and junk keys."""
    return st.fixed_dictionaries({}, optional={k: v | JSON_VALUES for k, v in keys.items()}).map(dict)


READER_PAYLOADS = _entry({
    "reader_name": st.sampled_from(["rdr-1", "RDR-1", "other"]),
    "mac_address": HEX,
    "tag_reads": st.lists(_entry({"epc": HEX, "antennaPort": st.integers(-1, 5),
                                  "peakRssi": st.floats() | st.integers(), "isHeartBeat": st.booleans(),
                                  "firstSeenTimestamp": TIMES, "lastSeenTimestamp": TIMES}), max_size=5),
})
BLE_PAYLOADS = st.lists(_entry({"type": st.sampled_from(["Gateway", "iBeacon", "gateway", ""]),
                                "mac": st.sampled_from(["AC233FC07DA5", "ac:23:3f:c0:7d:a5"]) | HEX,
                                "rssi": st.floats() | st.integers(), "timestamp": TIMES}), max_size=6)
SCANS = _entry({
    "scanner": st.sampled_from(["wst-1", "WST-1 ", "other"]),
    "point": st.sampled_from(["ward", "storage"]),
    "bag": st.text(max_size=70),
    "category": st.sampled_from([*CATEGORIES, "感染性废物", "药物性", "Sharps", "radioactive"]),
    "weight_g": st.floats() | st.integers(),
    "weight_kg": st.floats() | st.integers(),
    "handler": st.text(max_size=70),
    "department": st.text(max_size=10),
    "time": TIMES,
})


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()  # NaN and Infinity come out as invalid JSON tokens


def _tags_or_refusal(payload: bytes, spec: DeviceSpec) -> list[TagRead] | rfid_parser.PayloadError:
    try:
        return rfid_parser.parse(payload, spec, rfid_parser.load_settings(spec), NOW)
    except rfid_parser.PayloadError as exc:
        return exc


def _check_tags(payload: bytes, fmt: str, reader_id: str) -> None:
    spec = rfid_spec("rdr-1", {"format": fmt, "reader_id": reader_id, "max_payload": 4096})
    result = _tags_or_refusal(payload, spec)
    if isinstance(result, rfid_parser.PayloadError):
        assert result.reason in ("oversize", "malformed", "foreign-reader")
        assert "device rdr-1" in str(result)
        return
    for read in result:
        check_item(read)  # finite RSSI, non-negative seq
        encode(read)  # the outbox can store it
        assert (read.device, read.stream, read.ts) == ("rdr-1", "tags", NOW)
        assert read.tag == read.tag.upper()
        assert -150 <= read.rssi <= 30


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_rfid_parser_takes_any_bytes(payload: bytes) -> None:
    _check_tags(payload, "rfid_reader", "rdr-1")
    _check_tags(payload, "ble_gateway", "AC233FC07DA5")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(READER_PAYLOADS)
def test_rfid_parser_takes_any_reader_report(report: dict[str, Any]) -> None:
    _check_tags(_dumps(report), "rfid_reader", "rdr-1")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BLE_PAYLOADS)
def test_rfid_parser_takes_any_ble_array(adverts: list[dict[str, Any]]) -> None:
    _check_tags(_dumps(adverts), "ble_gateway", "AC233FC07DA5")


def _scan_or_refusal(payload: bytes, spec: DeviceSpec) -> WasteEvent | waste_parser.ScanError:
    try:
        return waste_parser.parse(payload, spec, waste_parser.load_settings(spec), NOW)
    except waste_parser.ScanError as exc:
        return exc


def _check_scan(payload: bytes) -> None:
    result = _scan_or_refusal(payload, waste_spec("wst-1", {"point": "ward", "max_payload": 4096}))
    if isinstance(result, waste_parser.ScanError):
        assert result.reason in ("oversize", "malformed", "invalid", "foreign-scanner")
        assert "device wst-1" in str(result)
        return
    check_item(result)  # finite, non-negative weight
    encode(result)
    assert result.point == "ward"
    assert result.category in CATEGORIES
    assert 0 <= result.weight_g <= 1_000_000
    assert result.handler.strip() == result.handler != ""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_waste_parser_takes_any_bytes(payload: bytes) -> None:
    _check_scan(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCANS)
def test_waste_parser_takes_any_scan(scan: dict[str, Any]) -> None:
    _check_scan(_dumps(scan))


def test_a_bad_connection_table_fails_at_start_naming_the_field() -> None:
    with pytest.raises(rfid_parser.ConfigError, match=r"device rdr-x: connection: field broker is missing"):
        RfidMqttDriver(rfid_spec("rdr-x", {"format": "rfid_reader", "topic": "t"}), ListSink())
    with pytest.raises(rfid_parser.ConfigError, match=r"device rdr-x: connection: .*`\$.format`"):
        RfidMqttDriver(rfid_spec("rdr-x", {"format": "zebra", "broker": "mqtt://h:1", "topic": "t"}), ListSink())
    with pytest.raises(waste_parser.ConfigError, match=r"device wst-x: connection: topic 'a/#/b'"):
        WasteMqttDriver(waste_spec("wst-x", {"point": "ward", "broker": "mqtt://h:1", "topic": "a/#/b"}), ListSink())
    with pytest.raises(waste_parser.ConfigError, match=r"device wst-x: connection: .*point"):
        WasteMqttDriver(waste_spec("wst-x", {"broker": "mqtt://h:1", "topic": "t"}), ListSink())


class FakeClock:
    """Stands in for the feed's ``time`` module: a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_bad_payload_event_is_raised_once_a_minute_and_ended_after_a_clean_minute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(feed_module, "time", clock)
    sink = ListSink()

    def handler(payload: bytes, received: int) -> Sequence[Item] | Rejection:
        return Rejection("malformed", "device rdr-f: not JSON") if payload == b"bad" else []

    feed = MqttFeed(rfid_spec("rdr-f", {}), sink, handler, broker=BrokerAddress("127.0.0.1", 1), topic="t", qos=0,
                    clean_session=True)
    for step in (0, 10, 30, 59):  # a burst within one minute: one event
        clock.now = 1000.0 + step
        feed.offer(b"bad", NOW)
    clock.now = 1061.0
    feed.offer(b"bad", NOW)  # still failing a minute later: one update
    clock.now = 1100.0
    feed.offer(b"good", NOW)  # too soon after the last rejection to end the episode
    clock.now = 1122.0
    feed.offer(b"good", NOW)
    assert [e.phase for e in sink.events("device.bad_payload")] == ["start", "update", "end"]
    assert sink.events()[1].text.startswith("rdr-f: 5 payloads rejected (malformed 5 since start)")
    assert (feed.link.frames_bad, feed.link.frames_ok, feed.link.state) == (5, 2, "connected")


# -- location readers on a real broker -------------------------------------------------------------

def reader_driver(mosquitto: Mosquitto, sink: ListSink, device: str, reader_id: str, fmt: str = "rfid_reader",
                  **extra: Any) -> RfidMqttDriver:
    connection = {"broker": mosquitto.address.url, "topic": f"readers/{device}", "format": fmt,
                  "reader_id": reader_id, "linger_s": 0.2, "reconnect_max_s": 0.5, **extra}
    return RfidMqttDriver(rfid_spec(device, connection), sink)


async def test_rfid_readers_turn_reports_into_tag_reads(mosquitto: Mosquitto) -> None:
    host, port = "127.0.0.1", mosquitto.port
    ward = Ward(3, [Asset("E28011606000000000000001", "rfid", 0), Asset("E28011606000000000000002", "rfid", 1),
                    Asset("E28011606000000000000003", "rfid", 2), Asset("AC233FA00001", "ble", 1)], seed=4)
    sink = ListSink()
    a = reader_driver(mosquitto, sink, "rdr-room0", "SpeedwayR-00-00-0A")
    b = reader_driver(mosquitto, sink, "rdr-room1", "00:16:25:00:00:0B")  # identified by MAC this time
    sim_a = RfidReaderSim(ward, 0, "SpeedwayR-00-00-0A", "00:16:25:00:00:0A", host=host, port=port,
                          topic="readers/rdr-room0", time_style="iso")
    sim_b = RfidReaderSim(ward, 1, "SpeedwayR-00-00-0B", "00:16:25:00:00:0B", host=host, port=port,
                          topic="readers/rdr-room1", time_style="epoch_us")
    async with running(a.run, b.run):
        await connected(a, b)
        async with running(lambda: sim_a.run(0.05), lambda: sim_b.run(0.05)):
            await wait_for(lambda: sim_a.published >= 10 and sim_b.published >= 10, 5, "ten reports each")
            await asyncio.sleep(0.4)  # the last batch lingers 0.2 s
    in_a = {t.tag for t in sink.tags("rdr-room0")}
    in_b = {t.tag for t in sink.tags("rdr-room1")}
    assert in_a == {"E28011606000000000000001", "E28011606000000000000002"}  # own room and next door
    assert in_b == {f"E2801160600000000000000{i}" for i in (1, 2, 3)}
    assert in_a & in_b, "no tag was seen by both neighbouring readers"
    reads = sink.tags()
    assert all(t.stream == "tags" and t.flags == 0 and t.device_ts is not None and abs(t.ts - t.device_ts) < 5000
               for t in reads)
    assert len({t.rssi for t in reads}) > 5, "RSSI does not vary"
    own = [t.rssi for t in sink.tags("rdr-room0") if t.tag.endswith("1")]
    neighbour = [t.rssi for t in sink.tags("rdr-room0") if t.tag.endswith("2")]
    assert sum(own) / len(own) > sum(neighbour) / len(neighbour) + 10  # the wall between rooms
    assert max(sink.calls) > 3, "reads of several reports were not batched into one accept"
    for driver in (a, b):
        health = driver.health()
        assert (health.state, health.frames_bad) == ("connected", 0)
        assert health.frames_ok >= 10
        assert health.last_seen is not None
    assert sink.events() == []


async def test_ble_gateway_with_a_wrong_clock_is_flagged_not_dropped(mosquitto: Mosquitto) -> None:
    ward = Ward(2, [Asset("AC233FA00001", "ble", 0), Asset("AC233FA00002", "ble", 1),
                    Asset("E28011606000000000000001", "rfid", 0)])
    sink = ListSink()
    driver = reader_driver(mosquitto, sink, "ble-corridor", "ac:23:3f:c0:7d:a5", fmt="ble_gateway")
    sim = BleGatewaySim(ward, 0, "AC233FC07DA5", host="127.0.0.1", port=mosquitto.port, topic="readers/ble-corridor",
                        clock_offset_ms=-3_600_000)
    async with running(driver.run):
        await connected(driver)
        async with running(lambda: sim.run(0.05)):
            await wait_for(lambda: len(sink.tags()) >= 10, 5, "ten BLE reads")
    assert {t.tag for t in sink.tags()} == {"AC233FA00001", "AC233FA00002"}
    assert all(t.flags & FLAG_CLOCK_SKEW for t in sink.tags())
    assert all(3_590_000 < t.ts - (t.device_ts or 0) < 3_700_000 for t in sink.tags())


async def test_broker_down_raises_link_lost_and_recovers(mosquitto: Mosquitto) -> None:
    ward = Ward(2, [Asset("E28011606000000000000001", "rfid", 0)])
    sink = ListSink()
    driver = reader_driver(mosquitto, sink, "rdr-r", "rdr-r")
    sim = RfidReaderSim(ward, 0, "rdr-r", "00:16:25:00:00:01", host="127.0.0.1", port=mosquitto.port,
                        topic="readers/rdr-r")
    async with running(driver.run, lambda: sim.run(0.05)):
        await wait_for(lambda: len(sink.tags()) > 0, 5, "first reads")
        await asyncio.to_thread(mosquitto.stop)
        await wait_for(lambda: driver.health().state == "lost", 10, "link lost")
        assert [(e.event, e.phase) for e in sink.events()] == [("device.disconnected", "start")]
        await asyncio.sleep(1.0)  # a few failed reconnects with backoff
        before = len(sink.tags())
        await asyncio.to_thread(mosquitto.start)
        # Generous bounds (a loaded 2-core runner once missed 8 s): both sides reconnect with backoff.
        await wait_for(lambda: driver.health().state == "connected", 20, "reconnected")
        await wait_for(lambda: len(sink.tags()) > before, 20, "reads after the restart")
    events = sink.events()
    assert [(e.event, e.phase, e.alarm_kind) for e in events] == [("device.disconnected", "start", "technical"),
                                                                 ("device.disconnected", "end", "technical")]
    assert events[0].device == "rdr-r"
    assert "disconnected" in events[0].text


async def test_a_report_from_another_reader_is_refused(mosquitto: Mosquitto) -> None:
    genuine_ward = Ward(2, [Asset("E28011606000000000000001", "rfid", 0)])
    other_ward = Ward(2, [Asset("E28011606000000000000099", "rfid", 0)])
    sink = ListSink()
    driver = reader_driver(mosquitto, sink, "rdr-g", "SpeedwayR-GG")
    genuine = RfidReaderSim(genuine_ward, 0, "SpeedwayR-GG", "00:16:25:00:00:01", host="127.0.0.1",
                            port=mosquitto.port, topic="readers/rdr-g")
    impostor = RfidReaderSim(other_ward, 0, "SpeedwayR-ZZ", "00:16:25:00:00:99", host="127.0.0.1",
                             port=mosquitto.port, topic="readers/rdr-g")
    async with running(driver.run):
        await connected(driver)
        async with running(lambda: genuine.run(0.05), lambda: impostor.run(0.05)):
            await wait_for(lambda: driver.feed.rejected["foreign-reader"] >= 5 and len(sink.tags()) >= 5, 5,
                           "reads and refusals")
    assert {t.tag for t in sink.tags()} == {"E28011606000000000000001"}
    assert driver.health().frames_bad == driver.feed.rejected["foreign-reader"]
    assert driver.health().state == "connected"
    bad = sink.events("device.bad_payload")
    assert [(e.phase, e.alarm_kind) for e in bad] == [("start", "technical")], "more than one event a minute"
    assert "SpeedwayR-ZZ" in bad[0].text


async def test_oversize_and_malformed_payloads_are_counted(mosquitto: Mosquitto) -> None:
    sink = ListSink()
    driver = reader_driver(mosquitto, sink, "rdr-o", "rdr-o", max_payload=1024, linger_s=0.0)
    topic = "readers/rdr-o"
    good = _dumps({"reader_name": "rdr-o", "tag_reads": [{"epc": "E28011606000000000000001", "peakRssi": -50}]})
    huge = _dumps({"reader_name": "rdr-o", "tag_reads": [{"epc": "E28011606000000000000001", "peakRssi": -50}] * 80})
    async with running(driver.run):
        await connected(driver)
        for payload in (huge, huge, b"\x00\xff not json", good):
            await publish_once("127.0.0.1", mosquitto.port, topic, payload)
        await wait_for(lambda: len(sink.tags()) == 1, 5, "the good payload")
    assert dict(driver.feed.rejected) == {"oversize": 2, "malformed": 1}
    health = driver.health()
    assert (health.state, health.frames_ok, health.frames_bad) == ("connected", 1, 3)
    assert [e.phase for e in sink.events("device.bad_payload")] == ["start"]


async def test_a_silent_reader_is_marked_lost_until_it_speaks_again(mosquitto: Mosquitto) -> None:
    ward = Ward(2, [Asset("E28011606000000000000001", "rfid", 0)])
    sink = ListSink()
    driver = reader_driver(mosquitto, sink, "rdr-s", "rdr-s", silence_s=0.4)
    sim = RfidReaderSim(ward, 0, "rdr-s", "00:16:25:00:00:01", host="127.0.0.1", port=mosquitto.port,
                        topic="readers/rdr-s")
    async with running(driver.run):
        await connected(driver)
        async with running(lambda: sim.run(0.05)):
            await wait_for(lambda: len(sink.tags()) > 0, 5, "first reads")
        await wait_for(lambda: driver.health().state == "lost", 3, "silence noticed")
        async with running(lambda: sim.run(0.05)):
            await wait_for(lambda: driver.health().state == "connected", 3, "reader back")
    assert [(e.event, e.phase) for e in sink.events()] == [("device.disconnected", "start"),
                                                           ("device.disconnected", "end")]
    assert "no valid message for 0.4 s" in sink.events()[0].text


# -- waste scan points on a real broker ------------------------------------------------------------

def scan_point(mosquitto: Mosquitto, point: str, *, chinese: bool = False) -> ScanPointSim:
    return ScanPointSim(f"wst-{point}", point, host="127.0.0.1", port=mosquitto.port,  # type: ignore[arg-type]
                        topic=f"waste/wst-{point}/scan", chinese_names=chinese, seed=len(point))


def waste_driver(mosquitto: Mosquitto, sink: ListSink, point: str) -> WasteMqttDriver:
    return WasteMqttDriver(waste_spec(f"wst-{point}", {"broker": mosquitto.address.url, "point": point,
                                                       "topic": f"waste/wst-{point}/scan", "unit": "3W",
                                                       "reconnect_max_s": 0.5}), sink)


async def test_bag_journeys_become_waste_events_with_matching_weights(mosquitto: Mosquitto) -> None:
    sink = ListSink()
    drivers = [waste_driver(mosquitto, sink, point) for point in JOURNEY]
    points = [scan_point(mosquitto, point, chinese=point == "storage") for point in JOURNEY]
    waste_round = WasteRound(points, department="3W", seed=7)
    async with running(*(d.run for d in drivers), *(p.run for p in points)):
        await connected(*drivers)
        await wait_for(lambda: all(p.connected for p in points), 5, "scan points online")
        await waste_round.run(len(CATEGORIES), leg_s=0.02, between_s=0.01)
        await wait_for(lambda: len(sink.waste()) == 4 * len(CATEGORIES), 5, "every scan")
    by_bag: dict[str, list[WasteEvent]] = {}
    for event in sink.waste():
        by_bag.setdefault(event.bag, []).append(event)
    assert len(by_bag) == len(CATEGORIES)
    assert {events[0].category for events in by_bag.values()} == set(CATEGORIES)
    for bag, events in by_bag.items():
        events.sort(key=lambda e: e.device_ts or 0)  # four scan points, four connections: order by scan time
        assert [e.point for e in events] == list(JOURNEY), bag
        assert [e.device for e in events] == [f"wst-{p}" for p in JOURNEY]
        assert len({e.category for e in events}) == 1, "the Chinese category name was not mapped"
        ward_weight = events[0].weight_g
        assert all(abs(e.weight_g - ward_weight) <= 0.02 * ward_weight for e in events), bag
        assert all(e.unit == "3W" and e.handler and e.device_ts is not None and not e.flags for e in events)
    assert all(d.health().frames_bad == 0 for d in drivers)


async def test_invalid_scans_are_refused_and_counted(mosquitto: Mosquitto) -> None:
    sink = ListSink()
    driver = waste_driver(mosquitto, sink, "ward")
    point = scan_point(mosquitto, "ward")
    base = {"scanner": "wst-ward", "bag": "MW-3W-1", "category": "sharps", "weight_g": 500.0, "handler": "N-1"}
    no_handler = {k: v for k, v in base.items() if k != "handler"}
    bad = [{**base, "weight_g": -1.0}, {**base, "category": "radioactive"}, no_handler,
           {**base, "weight_g": 1e308, "weight_kg": None}, {**base, "scanner": "wst-storage"}]
    async with running(driver.run, point.run):
        await connected(driver)
        for scan in bad:
            point.send_raw(_dumps(scan))
        point.send_raw(b"\xff\xfe garbage")
        point.send_raw(_dumps(base))
        await wait_for(lambda: len(sink.waste()) == 1, 5, "the valid scan")
    assert dict(driver.feed.rejected) == {"invalid": 4, "malformed": 1, "foreign-scanner": 1}
    assert driver.health().frames_bad == len(bad) + 1
    assert driver.health().state == "connected"
    assert sink.waste()[0].weight_g == 500.0
    assert [e.phase for e in sink.events("device.bad_payload")] == ["start"]


async def test_scans_published_while_the_gateway_is_away_are_delivered(mosquitto: Mosquitto) -> None:
    sink = ListSink()
    point = scan_point(mosquitto, "collector")
    first = waste_driver(mosquitto, sink, "collector")
    async with running(first.run):
        await connected(first)  # the persistent session and its subscription now exist on the broker
    bag = Bag("MW-3W-20260101-0001", "infectious", 1200.0, "3W")
    async with running(point.run):
        point.scan(bag, "C-0007")
        await wait_for(lambda: point.published == 1, 5, "scan published while the gateway is away")
    again = waste_driver(mosquitto, sink, "collector")
    async with running(again.run):
        await wait_for(lambda: len(sink.waste()) == 1, 5, "the queued scan")
    assert sink.waste()[0].bag == bag.bag


def test_the_contract_items_roundtrip_through_json() -> None:
    spec = rfid_spec("rdr-1", {"format": "rfid_reader", "reader_id": "rdr-1"})
    payload = _dumps({"reader_name": "rdr-1", "tag_reads": [{"epc": "e2801160", "peakRssi": -40,
                                                             "lastSeenTimestamp": "2026-01-01T00:00:00Z"}]})
    (read,) = rfid_parser.parse(payload, spec, rfid_parser.load_settings(spec), NOW)
    assert msgspec.json.decode(encode(read), type=TagRead) == read
