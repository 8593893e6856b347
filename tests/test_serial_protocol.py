"""WLB/1: the simulator's encoder against the gateway's parser, hostile input, mapping, patient and pty."""

from __future__ import annotations

import asyncio
import binascii
import itertools
import math
import struct
import tomllib
from pathlib import Path

import msgspec
import pytest
import serial
from hypothesis import assume, given
from hypothesis import strategies as st

from devices.contract import FLAG_DEMO, FLAG_INVALID
from devices.mdc import BY_REFID
from devices.site import DeviceSpec
from gateway.drivers.bedside_serial import mapping
from gateway.drivers.bedside_serial.parser import (
    MAX_WIRE,
    AlarmFrame,
    Frame,
    FrameError,
    FrameParser,
    HeartbeatFrame,
    IdentFrame,
    NumericsFrame,
    decode_frame,
)
from simulators.bedside import protocol
from simulators.bedside.monitor import SimulatedMonitor
from simulators.bedside.patient import NIBP_INTERVAL_S, PatientModel

SPECIAL = {0xC0, 0xC1, 0xDB}
KNOWN_PARAMS = sorted(set(protocol.RESOLUTION) - {protocol.PARAM_ST_II})

u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, 2**64 - 1)
texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
readings = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(sorted(protocol.RESOLUTION)), u16),
        st.floats(min_value=-1e30, max_value=1e30, allow_nan=False),
        st.integers(0, 255),
    ),
    max_size=62,
)
idents = st.builds(protocol.encode_ident, u16, texts, texts, texts)
numerics = st.builds(protocol.encode_numerics, u64, u16, readings)
alarms = st.builds(
    protocol.encode_alarm,
    u64,
    u16,
    code=u16,
    priority=st.integers(0, 3),
    kind=st.integers(0, 1),
    phase=st.integers(0, 2),
    param=u16,
    text=texts,
)
heartbeats = st.builds(protocol.encode_heartbeat, u64, u16)
any_frame = st.one_of(idents, numerics, alarms, heartbeats)


def raw_frame(frame_type: int, counter: int, payload: bytes, *, length: int | None = None) -> bytes:
    """A third, deliberately naive WLB/1 framer, for frames the encoder refuses to make."""
    body = struct.pack(">HBH", len(payload) if length is None else length, frame_type, counter) + payload
    body += binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
    stuffed = bytearray()
    for byte in body:
        stuffed += bytes((0xDB, byte ^ 0x20)) if byte in SPECIAL else bytes((byte,))
    return b"\xc0" + bytes(stuffed) + b"\xc1"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given positions (any order, duplicates allowed)."""
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(parser: FrameParser, pieces: list[bytes]) -> list[Frame]:
    frames: list[Frame] = []
    for piece in pieces:
        frames += parser.feed(piece)
        assert parser.pending() <= MAX_WIRE
    return frames


# --- framing and round trips --------------------------------------------------------------------


def test_both_sides_compute_the_crc_check_value() -> None:
    assert protocol.crc16_ccitt_false(b"123456789") == 0x29B1
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1  # what the parser uses


def test_heartbeat_matches_the_example_in_the_spec() -> None:
    wire = bytes.fromhex("c0 0008 48 0007 0000018bcfe56800 41d3 c1")
    assert protocol.encode_heartbeat(1_700_000_000_000, 7) == wire
    assert decode_frame(wire) == HeartbeatFrame(device_time_ms=1_700_000_000_000, counter=7)


@given(u64, u16, readings)
def test_numerics_round_trip_within_the_encoding_precision(
    device_time: int, counter: int, values: list[tuple[int, float, int]]
) -> None:
    frame = decode_frame(protocol.encode_numerics(device_time, counter, values))
    assert isinstance(frame, NumericsFrame)
    assert (frame.device_time_ms, frame.counter) == (device_time, counter)
    assert [(v.param, v.status) for v in frame.values] == [(p, s) for p, _, s in values]
    for decoded, (param, value, _) in zip(frame.values, values, strict=True):
        tolerance = 0.5 * 10.0 ** protocol.exponent_for(param, value) + 2 * math.ulp(value)
        assert abs(decoded.value - value) <= tolerance


@given(st.lists(st.tuples(st.sampled_from(KNOWN_PARAMS), st.integers(-(10**6), 10**6)), max_size=62))
def test_values_at_the_parameter_resolution_come_back_exactly(pairs: list[tuple[int, int]]) -> None:
    values = [(param, units / 10 ** protocol.RESOLUTION[param], 0) for param, units in pairs]
    frame = decode_frame(protocol.encode_numerics(0, 0, values))
    assert isinstance(frame, NumericsFrame)
    assert [v.value for v in frame.values] == [value for _, value, _ in values]


def test_temperature_travels_with_one_decimal() -> None:
    assert protocol.exponent_for(protocol.PARAM_TEMP, 37.0) == -1
    frame = decode_frame(protocol.encode_numerics(0, 0, [(protocol.PARAM_TEMP, 36.64, 0)]))
    assert isinstance(frame, NumericsFrame)
    assert frame.values[0].value == 36.6


@given(u16, texts, texts, texts)
def test_ident_round_trip(counter: int, model: str, serial_number: str, firmware: str) -> None:
    frame = decode_frame(protocol.encode_ident(counter, model, serial_number, firmware))
    assert frame == IdentFrame(counter, protocol.PROTOCOL_VERSION, model, serial_number, firmware)


@given(u64, u16, u16, st.integers(0, 3), st.integers(0, 1), st.integers(0, 2), u16, texts)
def test_alarm_round_trip(
    device_time: int, counter: int, code: int, priority: int, kind: int, phase: int, param: int, text: str
) -> None:
    wire = protocol.encode_alarm(
        device_time, counter, code=code, priority=priority, kind=kind, phase=phase, param=param, text=text
    )
    assert decode_frame(wire) == AlarmFrame(device_time, counter, code, priority, kind, phase, param, text)


@given(st.lists(any_frame, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=30))
def test_a_stream_cut_anywhere_gives_the_same_frames(wires: list[bytes], cuts: list[int]) -> None:
    expected = [decode_frame(w) for w in wires]
    parser = FrameParser()
    assert feed_all(parser, split(b"".join(wires), cuts)) == expected
    assert (parser.frames_ok, parser.frames_bad, parser.bytes_discarded, parser.pending()) == (len(wires), 0, 0, 0)


def test_encoder_refuses_what_the_protocol_cannot_carry() -> None:
    with pytest.raises(ValueError, match="not finite"):
        protocol.encode_numerics(0, 0, [(1, math.nan, 0)])
    with pytest.raises(ValueError, match="exceeds"):
        protocol.encode_numerics(0, 0, [(1, 1.0, 0)] * 63)
    with pytest.raises(ValueError, match="printable ASCII"):
        protocol.encode_ident(0, "Monitör", "1", "1")
    with pytest.raises(ValueError, match="counter"):
        protocol.encode_heartbeat(0, 65536)


# --- hostile input ------------------------------------------------------------------------------


@given(st.binary(max_size=3000), st.lists(st.integers(0, 10**6), max_size=20))
def test_arbitrary_bytes_never_raise_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    parser = FrameParser()
    frames = feed_all(parser, split(data, cuts))
    assert parser.frames_ok == len(frames)
    assert parser.bytes_discarded + parser.pending() <= len(data)


@given(st.lists(any_frame, min_size=1, max_size=6), st.data())
def test_mutated_valid_streams_never_raise(wires: list[bytes], data: st.DataObject) -> None:
    stream = bytearray(b"".join(wires))
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        index = data.draw(st.integers(0, len(stream) - 1), label="index")
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]), label="action")
        if action == "flip":
            stream[index] ^= data.draw(st.integers(1, 255), label="mask")
        elif action == "insert":
            stream[index:index] = data.draw(st.binary(min_size=1, max_size=4), label="inserted")
        elif len(stream) > 1:
            del stream[index]
    parser = FrameParser()
    frames = feed_all(parser, split(bytes(stream), data.draw(st.lists(st.integers(0, 10**6)), label="cuts")))
    assert parser.frames_ok == len(frames) <= len(wires) + 1


@given(st.lists(st.tuples(st.binary(max_size=200), any_frame), min_size=1, max_size=6), st.binary(max_size=50))
def test_garbage_before_and_between_frames_is_skipped(chunks: list[tuple[bytes, bytes]], tail: bytes) -> None:
    stream = b"".join(garbage + wire for garbage, wire in chunks) + tail
    parser = FrameParser()
    frames = parser.feed(stream)
    assert frames == [decode_frame(wire) for _, wire in chunks]
    garbage_len = sum(len(garbage) for garbage, _ in chunks) + len(tail)
    assert parser.bytes_discarded + parser.pending() == garbage_len


@given(any_frame, heartbeats, st.data())
def test_a_corrupted_byte_is_counted_as_bad_crc_and_skipped(wire: bytes, after: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(4, len(wire) - 2), label="index")
    flipped = wire[index] ^ data.draw(st.integers(1, 255), label="mask")
    # Keep the framing intact: corrupting SOF, EOF or an escape is resynchronisation, tested elsewhere.
    assume(wire[index] not in SPECIAL and flipped not in SPECIAL and wire[index - 1] != 0xDB)
    corrupted = wire[:index] + bytes((flipped,)) + wire[index + 1 :]
    parser = FrameParser()
    assert parser.feed(corrupted + after) == [decode_frame(after)]
    assert (parser.frames_bad_crc, parser.frames_malformed, parser.frames_oversize) == (1, 0, 0)
    assert parser.last_error is not None
    assert "CRC" in parser.last_error
    with pytest.raises(FrameError) as caught:
        decode_frame(corrupted)
    assert caught.value.reason == "crc"


def test_an_oversize_length_field_is_rejected_without_buffering() -> None:
    parser = FrameParser()
    frames = feed_all(parser, [b"\xc0\x7f\xff", *[bytes(1000)] * 200])
    heartbeat = protocol.encode_heartbeat(1, 2)
    frames += parser.feed(heartbeat)
    assert frames == [decode_frame(heartbeat)]
    assert parser.frames_oversize == 1
    assert parser.bytes_discarded == 3 + 200_000


def test_a_body_running_past_its_length_field_is_rejected_early() -> None:
    parser = FrameParser()
    feed_all(parser, [b"\xc0\x00\x08\x48", bytes(5000)])
    assert parser.frames_malformed == 1
    assert parser.pending() == 0


def test_an_unknown_frame_type_is_skipped_and_counted() -> None:
    parser = FrameParser()
    heartbeat = protocol.encode_heartbeat(1, 2)
    assert parser.feed(raw_frame(0x5A, 1, b"future") + heartbeat) == [decode_frame(heartbeat)]
    assert (parser.frames_unknown, parser.frames_bad) == (1, 0)
    with pytest.raises(FrameError) as caught:
        decode_frame(raw_frame(0x5A, 1, b""))
    assert caught.value.reason == "unknown-type"


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (raw_frame(0x4E, 0, bytes(8) + b"\x02" + bytes(8)), "count says 2 values, one is there"),
        (raw_frame(0x4E, 0, bytes(8) + b"\x00" + b"x"), "a trailing byte"),
        (raw_frame(0x41, 0, bytes(10) + b"\x04\x00\x00" + bytes(2) + b"\x00"), "priority 4"),
        (raw_frame(0x41, 0, bytes(10) + b"\x03\x02\x00" + bytes(2) + b"\x00"), "kind 2"),
        (raw_frame(0x49, 0, b"\x01\x02A\x07\x00\x00"), "a control character in a text"),
        (raw_frame(0x49, 0, b"\x01\x05AB"), "a text longer than the payload"),
        (raw_frame(0x48, 0, bytes(8), length=9), "length field and payload disagree"),
        (b"\xc0\x00\x00\x48\xc1", "too short for a CRC"),
        (b"\xc0\x00\x00\xdb\x41\xc1", "an invalid escape"),
    ],
)
def test_malformed_frames_are_counted_and_skipped(wire: bytes, why: str) -> None:
    parser = FrameParser()
    heartbeat = protocol.encode_heartbeat(1, 2)
    assert parser.feed(wire + heartbeat) == [decode_frame(heartbeat)], why
    assert (parser.frames_malformed, parser.frames_bad_crc) == (1, 0), why
    with pytest.raises(FrameError):
        decode_frame(wire)


def test_counter_gaps_and_reset() -> None:
    parser = FrameParser()
    parser.feed(protocol.encode_heartbeat(0, 65535) + protocol.encode_heartbeat(0, 0))
    assert parser.counter_gaps == 0  # 65535 -> 0 is the normal wrap
    parser.feed(protocol.encode_heartbeat(0, 5))
    assert parser.counter_gaps == 1
    half = protocol.encode_heartbeat(0, 6)[:7]
    parser.feed(half)
    assert parser.pending() == 7
    parser.reset()
    assert (parser.pending(), parser.bytes_discarded) == (0, 7)
    parser.feed(protocol.encode_heartbeat(0, 99))
    assert parser.counter_gaps == 1  # after a reset the counter starts afresh


def test_escaped_bytes_are_accounted_once() -> None:
    wire = protocol.encode_heartbeat(0xC0C1DBC0, 0xC0DB)  # counter and time full of reserved bytes
    assert len(wire) > 17  # so the frame really is stuffed
    parser = FrameParser()
    parser.feed(wire[:-1])
    assert parser.pending() == len(wire) - 1
    parser.feed(b"\xc0")  # cut short: every byte of the stuffed frame is discarded, once
    assert (parser.bytes_discarded, parser.pending()) == (len(wire) - 1, 1)
    bad = bytearray(wire)
    bad[-2] ^= 0x01  # last CRC byte
    parser = FrameParser()
    parser.feed(bytes(bad))
    assert (parser.frames_bad_crc, parser.bytes_discarded, parser.last_reason) == (1, len(wire), "crc")


# --- mapping ------------------------------------------------------------------------------------


def test_every_parameter_the_simulator_sends_is_known_to_the_gateway_except_the_extension() -> None:
    for param in KNOWN_PARAMS:
        refid, code, unit = mapping.to_mdc(param)
        assert (code, unit) == (BY_REFID[refid].code, BY_REFID[refid].unit)
    assert mapping.to_mdc(protocol.PARAM_HR) == ("MDC_ECG_HEART_RATE", 147842, "/min")
    assert mapping.to_mdc(protocol.PARAM_TEMP) == ("MDC_TEMP", 150344, "Cel")


@given(u16.filter(lambda p: p not in mapping.PARAM_REFIDS))
def test_unknown_params_pass_through(param: int) -> None:
    assert mapping.to_mdc(param) == (f"WLB_PARAM_{param}", 0, "")


def test_unknown_param_survives_the_whole_path() -> None:
    frame = decode_frame(protocol.encode_numerics(0, 0, [(protocol.PARAM_ST_II, -0.25, 0)]))
    assert isinstance(frame, NumericsFrame)
    assert mapping.to_mdc(frame.values[0].param) == ("WLB_PARAM_256", 0, "")
    assert frame.values[0].value == -0.25


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        (0, 0),
        (protocol.STATUS_INVALID, FLAG_INVALID),
        (protocol.STATUS_ARTEFACT, FLAG_INVALID),
        (protocol.STATUS_SENSOR_OFF, FLAG_INVALID),
        (protocol.STATUS_DEMO, FLAG_DEMO),
        (protocol.STATUS_SENSOR_OFF | protocol.STATUS_DEMO, FLAG_INVALID | FLAG_DEMO),
        (0xF0, 0),  # reserved bits are ignored
    ],
)
def test_status_bits_become_contract_flags(status: int, flags: int) -> None:
    assert mapping.status_flags(status) == flags


def test_alarm_numbers_become_contract_literals() -> None:
    assert [mapping.alarm_priority(p) for p in range(4)] == ["info", "low", "medium", "high"]
    assert [mapping.alarm_kind(k) for k in range(2)] == ["physiological", "technical"]
    assert [mapping.alarm_phase(p) for p in range(3)] == ["start", "continue", "end"]
    assert mapping.alarm_event(protocol.ALARM_LOW_LIMIT) == "MDC_EVT_LO"
    assert mapping.alarm_event(0x7777) == "WLB_ALARM_30583"
    with pytest.raises(ValueError, match="priority"):
        mapping.alarm_priority(4)


def test_sample_config_is_a_valid_device() -> None:
    sample = Path(__file__).resolve().parent.parent / "gateway/drivers/bedside_serial/sample.toml"
    devices = tomllib.loads(sample.read_text(encoding="utf-8"))["devices"]
    specs = [msgspec.convert(device, DeviceSpec) for device in devices]
    assert [(s.kind, s.connection["baudrate"]) for s in specs] == [("bedside_serial", 115200)]


# --- patient model ------------------------------------------------------------------------------


def test_patient_is_deterministic_whatever_the_call_order() -> None:
    times = [0.0, 0.5, 17.3, 31.0, 600.0]
    forward = [PatientModel("desaturating", seed=5).vitals(t) for t in times]
    model = PatientModel("desaturating", seed=5)
    assert [model.vitals(t) for t in reversed(times)] == list(reversed(forward))
    assert PatientModel("desaturating", seed=6).vitals(0.0) != forward[0]


def test_desaturating_patient_falls_to_about_85_within_20_seconds() -> None:
    model = PatientModel("desaturating", seed=42, onset_s=30.0)
    before = [model.vitals(float(t)) for t in range(30)]
    after = [model.vitals(float(t)) for t in range(50, 300)]
    assert all(94.0 <= v["spo2"] <= 99.0 for v in before)
    assert all(84.0 <= v["spo2"] <= 86.0 for v in after)
    assert sum(v["hr"] for v in after) / len(after) > sum(v["hr"] for v in before) / len(before) + 5


def test_artefact_patient_dips_for_two_seconds_every_period() -> None:
    model = PatientModel("artefact", seed=1, onset_s=20.0, period_s=60.0)
    spo2 = {t: model.vitals(float(t))["spo2"] for t in range(150)}
    dips = sorted(t for t, value in spo2.items() if value < 85.0)
    assert dips == [20, 21, 80, 81, 140, 141]
    assert all(76.0 <= spo2[t] <= 80.0 for t in dips)


def test_bradycardic_and_stable_patients() -> None:
    assert PatientModel("bradycardic", seed=2, onset_s=10.0).vitals(60.0)["hr"] < 45.0
    stable = PatientModel("stable", seed=2)
    for t in range(0, 3600, 7):
        v = stable.vitals(float(t))
        assert 55 < v["hr"] < 95
        assert 94 <= v["spo2"] <= 100
        assert 36 < v["temp"] < 37.5
        assert v["nibp_dia"] < v["nibp_mean"] < v["nibp_sys"]
    with pytest.raises(ValueError, match="unknown patient profile"):
        PatientModel("zombie", seed=1)


def test_nibp_changes_only_with_a_new_cuff_measurement() -> None:
    model = PatientModel("stable", seed=9)
    cycles = [{model.vitals(c * NIBP_INTERVAL_S + s)["nibp_sys"] for s in range(0, 300, 10)} for c in range(6)]
    assert all(len(values) == 1 for values in cycles)
    assert len(set().union(*cycles)) > 1


# --- the monitor on a real pty ------------------------------------------------------------------


async def read_for(port: serial.Serial, seconds: float) -> bytes:
    """Everything the port delivers in ``seconds``, read in a thread as a gateway would."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    data = bytearray()
    while loop.time() < deadline:
        data += await asyncio.to_thread(port.read, 4096)
    return bytes(data)


async def test_monitor_on_a_pty_sends_ident_numerics_and_alarms() -> None:
    patient = PatientModel("stable", seed=7)
    with SimulatedMonitor("SN0001", "WLB-M1", "1.0.0", patient, interval_s=0.2) as monitor:
        monitor.set_status(protocol.PARAM_PERF_INDEX, protocol.STATUS_SENSOR_OFF)
        with serial.Serial(monitor.port, 115200, timeout=0.05) as port:
            stop = asyncio.Event()
            task = asyncio.create_task(monitor.run(stop))
            data = await read_for(port, 1.2)
            monitor.send_alarm(protocol.ALARM_LOW_LIMIT, 2, 0, 0, protocol.PARAM_SPO2, "SpO2 LOW")
            data += await read_for(port, 1.3)
            stop.set()
            await task
    parser = FrameParser()
    frames = parser.feed(data)
    assert (parser.frames_bad, parser.counter_gaps, parser.bytes_discarded) == (0, 0, 0)
    assert frames[0] == IdentFrame(0, 1, "WLB-M1", "SN0001", "1.0.0")
    readings = [f for f in frames if isinstance(f, NumericsFrame)]
    assert len(readings) >= 10
    for reading in readings:
        by_param = {v.param: v for v in reading.values}
        assert 90 <= by_param[protocol.PARAM_SPO2].value <= 100
        assert 50 <= by_param[protocol.PARAM_HR].value <= 110
        assert mapping.status_flags(by_param[protocol.PARAM_PERF_INDEX].status) == FLAG_INVALID
        assert mapping.to_mdc(protocol.PARAM_ST_II)[0] == "WLB_PARAM_256"
        assert protocol.PARAM_ST_II in by_param
    steps = {b.device_time_ms - a.device_time_ms for a, b in itertools.pairwise(readings)}
    assert steps == {200}
    assert [f.text for f in frames if isinstance(f, AlarmFrame)] == ["SpO2 LOW"]


async def test_accelerated_monitor_shows_the_desaturation() -> None:
    patient = PatientModel("desaturating", seed=3, onset_s=2.0)
    with (
        SimulatedMonitor("SN0002", "WLB-M1", "1.0.0", patient, time_scale=20.0) as monitor,
        serial.Serial(monitor.port, 115200, timeout=0.05) as port,
    ):
        stop = asyncio.Event()
        task = asyncio.create_task(monitor.run(stop))
        data = await read_for(port, 2.0)
        stop.set()
        await task
    spo2 = [
        v.value
        for f in FrameParser().feed(data)
        if isinstance(f, NumericsFrame)
        for v in f.values
        if v.param == protocol.PARAM_SPO2
    ]
    assert len(spo2) >= 30
    assert spo2[0] >= 94
    assert 84 <= spo2[-1] <= 86


async def test_unplug_silences_the_line_and_replug_resumes_with_a_counter_gap() -> None:
    patient = PatientModel("stable", seed=8)
    with (
        SimulatedMonitor("SN0003", "WLB-M1", "1.0.0", patient, interval_s=0.1) as monitor,
        serial.Serial(monitor.port, 115200, timeout=0.05) as port,
    ):
        task = asyncio.create_task(monitor.run())
        before = await read_for(port, 0.5)
        monitor.unplug()
        during = await read_for(port, 0.5)
        monitor.replug()
        after = await read_for(port, 0.5)
        monitor.close()
        await asyncio.wait_for(task, 1.0)  # close() ends run() without waiting for a tick
    assert during == b""
    assert monitor.frames_lost >= 3
    parser = FrameParser()
    assert len(parser.feed(before)) >= 3
    assert len(parser.feed(after)) >= 3
    assert parser.counter_gaps == 1


def test_monitor_without_a_reader_drops_frames_within_its_bound() -> None:
    with SimulatedMonitor("SN0004", "WLB-M1", "1.0.0", PatientModel("stable", seed=1)) as monitor:
        for _ in range(400):
            monitor.inject(bytes(1000))
        assert monitor.frames_dropped > 0
        assert monitor.backlog_bytes <= monitor.max_backlog
