"""Hostile input: every parser of untrusted bytes gives a value or its own documented error, in bounded work.

What other files already prove is not repeated here:

- WLB/1 frames (tests/test_serial_protocol.py): arbitrary bytes never raise and stay bounded, any chunking gives the
  same frames, mutated streams never raise, garbage and corrupted bytes are skipped, every frame type round-trips
  through the simulator's encoder.
- MLLP and HL7 (tests/test_driver_hl7_pcd.py): arbitrary bytes in any chunks, arbitrary message parts through parse
  and PCD mapping (only Hl7Error, always a well-formed ACK), escape round trip, PCD-01 against a reference reading.
- Modbus registers (tests/test_driver_modbus.py): encode/decode round trip per type, any words decode or raise
  RegisterError, any register contents of every shipped map give valid items.
- RFID and waste MQTT payloads (tests/test_driver_mqtt_devices.py): arbitrary bytes and arbitrary reports.
- Batches (tests/test_contract.py): arbitrary bytes raise only ContractError.

Added here: structured mutation of real messages (the simulators' output), nesting past the interpreter's
recursion limit (the bug this file found in decode_batch, decode_batch_lenient and the TOML loaders), resync after
adversarial prefixes, round trips of HL7 alarms and pump registers through the simulators' encoders, register dumps
of any shape, and site, scenario and site-map files of any bytes or any mutated field.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.contract import (
    Batch,
    ContractError,
    DeviceEvent,
    Observation,
    check_item,
    decode_batch,
    decode_batch_lenient,
    encode,
)
from devices.site import DeviceSpec, SiteError, load_site, site_from_dict
from facilities.sitemap import SiteMapError, load_site_map, site_map_from_dict
from gateway.drivers.bedside_serial.parser import EOF, ESC, MAX_WIRE, SOF, FrameParser
from gateway.drivers.hl7_pcd.context import Routing
from gateway.drivers.hl7_pcd.pcd import answer, decode
from gateway.drivers.modbus_common.errors import RegisterError
from gateway.drivers.modbus_pump import parser as pump_parser
from gateway.drivers.rfid_mqtt import parser as rfid_parser
from gateway.drivers.waste_mqtt import parser as waste_parser
from simulators.bedside import protocol
from simulators.hl7.messages import STYLES, Alarm, MessageBuilder, read_ack
from simulators.hl7.sender import monitors_for
from simulators.modbus.pump import PumpModel
from simulators.scenario import ScenarioError, load_scenario
from wardlink.config import load

NOW = 1_767_225_600_000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
DEEP = st.sampled_from([b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                        b"[" * 200_000, b'{"a":' * 200_000])


def _obs(seq: int, device: str = "mon-1") -> Observation:
    return Observation(device=device, stream="numerics", seq=seq, ts=NOW, metric="MDC_PULS_OXIM_SAT_O2", value=97.0,
                       unit="%", code=150456, bed="ICU-01")


VALID_BATCH = msgspec.json.decode(encode(Batch(gateway="gw-1", sent=1, items=[_obs(1), _obs(2), _obs(3)])))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON tree a mutation can land (the root excluded)."""
    found: list[tuple[Any, ...]] = []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


def _mutate(tree: Any, data: st.DataObject, replacement: st.SearchStrategy[Any] = JSON_VALUES) -> Any:
    """Replace, delete or add one value somewhere in a copy of ``tree``."""
    tree = copy.deepcopy(tree)
    path = data.draw(st.sampled_from(_paths(tree)))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(replacement)
    else:
        parent[path[-1]] = data.draw(replacement)
    return tree


# -- batches (MQTT payloads from gateways) ----------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_a_mutated_batch_decodes_or_raises_only_contract_error(data: st.DataObject) -> None:
    tree = VALID_BATCH
    for _ in range(data.draw(st.integers(1, 3))):
        tree = _mutate(tree, data)
    payload = msgspec.json.encode(tree)
    with contextlib.suppress(ContractError):
        decode_batch(payload)
    try:
        batch, bad = decode_batch_lenient(payload)
    except ContractError:
        return
    raw_items = msgspec.json.decode(payload)["items"]
    assert len(batch.items) + len(bad) == len(raw_items)  # every item is either kept or set apart, never lost
    for broken in bad:
        assert broken.reason.startswith(f"device {broken.device}: invalid item")
    for item in batch.items:
        with contextlib.suppress(ContractError):
            check_item(item)  # NaN/Inf from 1e999 are refused here, naming device and field


@pytest.mark.parametrize("where", ["whole", "item", "field"])
@given(deep=DEEP)
def test_nesting_past_the_recursion_limit_is_a_contract_error(where: str, deep: bytes) -> None:
    # Found by this file: msgspec raises RecursionError past the interpreter's limit, which reached ingest.
    payload = {"whole": deep,
               "item": b'{"gateway":"gw-1","sent":1,"items":[' + deep + b"]}",
               "field": b'{"gateway":"gw-1","sent":1,"items":[{"kind":"obs","device":"mon-1","seq":1,"x":' + deep
                        + b"}]}"}[where]
    with pytest.raises(ContractError):
        decode_batch(payload)
    try:
        batch, bad = decode_batch_lenient(payload)
    except ContractError:
        return
    assert batch.items == []
    assert len(bad) == 1
    assert "invalid item" in bad[0].reason


@given(st.sampled_from([b'"gw-1"', b'"mon-1"', b'"numerics"', b'"%"']),
       st.binary(min_size=1, max_size=4).filter(lambda b: not _is_utf8(b)))
def test_bytes_that_are_not_utf8_inside_a_string_are_a_contract_error(where: bytes, bad: bytes) -> None:
    # Found by atheris (make fuzz): msgspec raises UnicodeDecodeError, which escaped both decoders into ingest.
    payload = encode(Batch(gateway="gw-1", sent=1, items=[_obs(1), _obs(2)])).replace(where, where[:-1] + bad + b'"', 1)
    with pytest.raises(ContractError):
        decode_batch(payload)
    with contextlib.suppress(ContractError):
        batch, bad_items = decode_batch_lenient(payload)
        assert len(batch.items) + len(bad_items) == 2


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=30, deadline=None)
@given(deep=DEEP)
def test_device_payloads_nested_past_the_limit_are_refused_naming_the_device(deep: bytes) -> None:
    spec = DeviceSpec(id="rdr-1", kind="rfid_mqtt", gateway="gw", room="R1",
                      connection={"broker": "mqtt://127.0.0.1:1883", "topic": "t", "format": "rfid_reader",
                                  "reader_id": "rdr-1", "max_payload": 16 * 1024 * 1024})
    with contextlib.suppress(rfid_parser.PayloadError):
        rfid_parser.parse(deep, spec, rfid_parser.load_settings(spec), NOW)
    scale = DeviceSpec(id="wst-1", kind="waste_mqtt", gateway="gw",
                       connection={"broker": "mqtt://127.0.0.1:1883", "topic": "t", "point": "ward",
                                   "max_payload": 1024 * 1024})
    with contextlib.suppress(waste_parser.ScanError):
        waste_parser.parse(deep, scale, waste_parser.load_settings(scale), NOW)


# -- WLB/1 serial frames -----------------------------------------------------------------------------------------

ADVERSARIAL = st.lists(st.one_of(
    st.just(bytes([SOF])), st.just(bytes([EOF])), st.just(bytes([ESC])),
    st.integers(0, 0xFFFF).map(lambda n: bytes([SOF]) + n.to_bytes(2, "big")),  # any length field
    st.integers(0, 2000).map(lambda n: b"\x41" * n),  # long runs without an end byte
    st.builds(protocol.encode_heartbeat, st.integers(0, 2**64 - 1), st.integers(0, 0xFFFF)).map(lambda w: w[:-1]),
), max_size=20).map(b"".join)


@FUZZ
@given(ADVERSARIAL, st.integers(0, 2**64 - 1), st.integers(0, 0xFFFF))
def test_a_frame_after_any_adversarial_prefix_is_decoded(prefix: bytes, device_time: int, counter: int) -> None:
    parser = FrameParser()
    parser.feed(prefix)
    assert parser.pending() <= MAX_WIRE  # bounded: a hostile prefix never makes the parser hold more than a frame
    frames = parser.feed(protocol.encode_heartbeat(device_time, counter))
    assert frames[-1].counter == counter
    assert frames[-1].device_time_ms == device_time  # type: ignore[union-attr]


# -- HL7 v2 (PCD-01 and PCD-04 over MLLP) ------------------------------------------------------------------------

PRIORITIES = {"PH": "high", "PM": "medium", "PL": "low"}
ALARM_TEXT = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=60).map(str.strip)


@FUZZ
@given(st.sampled_from(list(STYLES)), ALARM_TEXT, st.sampled_from(list(PRIORITIES)),
       st.sampled_from(["start", "end", "continue"]), st.integers(0, 10**6))
def test_simulator_alarms_round_trip(style: str, text: str, priority: str, phase: str, counter: int) -> None:
    monitor = monitors_for(1)[0]
    alarm = Alarm(196648, "MDC_EVT_LO", text, 150456, "MDC_PULS_OXIM_SAT_O2", priority, "SP", phase=phase,
                  counter=counter)
    decoded = decode(MessageBuilder(STYLES[style]).alarm("C1", monitor, alarm, NOW), Routing("hl7-x"), NOW + 5)
    assert decoded.error is None
    [event] = decoded.items
    assert isinstance(event, DeviceEvent)
    assert (event.event, event.priority, event.bed, event.device_ts) == ("MDC_EVT_LO", PRIORITIES[priority],
                                                                         monitor.bed, NOW)
    assert event.text.startswith(text)  # every delimiter in the text was escaped and comes back as itself
    assert event.phase == ("end" if phase == "end" else "start" if phase == "start" else event.phase)


HL7_BYTES = st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"#", b"\r", b"\n", b"\x00", b"\xff", b"MSH|", b"OBX|",
                             b"\\X0D\\", b"NM", b"1e999", b"nan", b"-", b"9" * 40])


@FUZZ
@given(st.sampled_from(list(STYLES)), st.booleans(), st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 3),
                                                                         HL7_BYTES), min_size=1, max_size=8))
def test_mutated_simulator_messages_map_or_are_refused_with_an_ack(style: str, alarm: bool,
                                                                   edits: list[tuple[int, int, bytes]]) -> None:
    builder, monitor = MessageBuilder(STYLES[style]), monitors_for(1)[0]
    message = bytearray(builder.alarm("C1", monitor, Alarm(196648, "MDC_EVT_LO", "low"), NOW) if alarm
                        else builder.vitals("C1", monitor, 1.0, NOW))
    for position, cut, insert in edits:
        at = position % (len(message) + 1)
        message[at:at + cut] = insert
    decoded = decode(bytes(message), Routing("hl7-x"), NOW)
    ack_code, _, _ = read_ack(answer(decoded, "WL1", NOW))
    assert ack_code in ("AA", "AE", "AR", "CA", "CE", "CR")
    assert (decoded.error is None) == (ack_code in ("AA", "CA"))
    for item in decoded.items:
        check_item(item)  # a value that came through is finite: 1e999 and nan never become readings


# -- Modbus register replies -------------------------------------------------------------------------------------

PUMP = DeviceSpec(id="pump-1", kind="modbus_pump", gateway="gw", bed="ICU-01")


@FUZZ
@given(st.integers(0, 9999), st.integers(1, 99999), st.integers(0, 100), st.booleans())
def test_pump_registers_round_trip(rate_tenths: int, vtbi_tenths: int, battery: int, gauge_ok: bool) -> None:
    pump = PumpModel(rate_ml_h=rate_tenths / 10, vtbi_ml=vtbi_tenths / 10, battery_pct=battery,
                     battery_gauge_ok=gauge_ok, on_mains=True)
    image = pump.registers(pump._last)
    items = pump_parser.decode(PUMP, [{t: {str(a): w for a, w in c.items()} for t, c in image.items()}], NOW)
    values = {i.metric: i.value for i in items if isinstance(i, Observation)}
    assert values["MDC_FLOW_FLUID_PUMP"] == pytest.approx(rate_tenths / 10)
    assert values["MDC_VOL_FLUID_TBI"] == pytest.approx(vtbi_tenths / 10)
    assert values.get("WARDLINK_BATTERY_CHARGE") == (battery if gauge_ok else None)  # 65535 is no value


DUMPS = st.lists(st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from(["holding", "input", "coil", "discrete", "other"]),
                    st.dictionaries(st.one_of(st.integers(-5, 130).map(str), st.text(max_size=3)),
                                    st.one_of(st.integers(-(2**17), 2**17), st.lists(st.integers(-5, 0x10005),
                                                                                      max_size=130), JSON_SCALARS),
                                    max_size=6), max_size=3)), min_size=1, max_size=3)


@FUZZ
@given(DUMPS)
def test_register_dumps_of_any_shape_give_items_or_register_error(dumps: list[Any]) -> None:
    try:
        items = pump_parser.decode(PUMP, dumps, NOW)
    except RegisterError:
        return
    for item in items:
        check_item(item)


# -- site, scenario and site-map files ---------------------------------------------------------------------------

SITE = msgspec.to_builtins(load(env={}).site)
SITE_MAP = msgspec.to_builtins(load_site_map())
NOT_TOML = st.one_of(st.binary(max_size=300), st.sampled_from([b"\xff\xfe[units]", b"a = " + b"[" * 5000,
                                                               b"a = " + b"{b=" * 2000 + b"1" + b"}" * 2000,
                                                               b"[[units]]\nid = 1", b"units = 'x'"]))


def _load_all(path: Path) -> None:
    with contextlib.suppress(SiteError):
        load_site(path)
    with contextlib.suppress(ScenarioError):
        load_scenario(str(path))
    with contextlib.suppress(SiteMapError):
        load_site_map(path)


@FUZZ
@given(NOT_TOML)
def test_files_of_any_bytes_raise_only_their_loaders_error(tmp_path_factory: pytest.TempPathFactory,
                                                           content: bytes) -> None:
    # Found by this file: bytes that are not UTF-8 and nesting past the recursion limit escaped every loader.
    path = tmp_path_factory.mktemp("files") / "input.toml"
    path.write_bytes(content)
    _load_all(path)


@FUZZ
@given(st.data())
def test_a_mutated_site_is_valid_or_a_site_error_naming_a_field(data: st.DataObject) -> None:
    tree = _mutate(SITE, data)
    try:
        site = site_from_dict(tree)
    except SiteError:
        return
    assert {d.id for d in site.devices} <= {d["id"] for d in tree.get("devices", [])}


@FUZZ
@given(st.data())
def test_a_mutated_site_map_is_valid_or_a_site_map_error(data: st.DataObject) -> None:
    tree = _mutate(SITE_MAP, data)
    try:
        site_map_from_dict(tree)
    except SiteMapError:
        return

