"""The hl7_pcd driver: fuzzed framing and parsing, and real MLLP over TCP and a pty with the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import socket
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import mdc
from devices.contract import (
    FLAG_CLOCK_SKEW,
    FLAG_DEMO,
    FLAG_IMPLAUSIBLE,
    DeviceEvent,
    DeviceInfo,
    Item,
    Observation,
)
from devices.site import DeviceSpec
from devices.topics import check_name
from gateway.drivers.hl7_pcd import context, parser, rows
from gateway.drivers.hl7_pcd.ack import ack_fields, read_header, salvage_header
from gateway.drivers.hl7_pcd.config import ConfigError, load_settings
from gateway.drivers.hl7_pcd.context import sender_of
from gateway.drivers.hl7_pcd.driver import Hl7PcdDriver
from gateway.drivers.hl7_pcd.mllp import MllpFramer, wrap
from gateway.drivers.hl7_pcd.parser import (
    CACHE_SIZE,
    Hl7Error,
    Segment,
    Separators,
    escape,
    parse,
    parse_ts,
    split_message,
    unescape,
)
from gateway.drivers.hl7_pcd.pcd import Decoded, Routing, answer, decode
from gateway.drivers.hl7_pcd.rows import Equipment, equipment_of
from gateway.outbox import OutboxError
from simulators.bedside.patient import PatientModel
from simulators.hl7.messages import STYLES, MessageBuilder, Monitor
from simulators.hl7.sender import Alarm, Hl7Sender, PtyWire, TcpWire, monitors_for

SEPARATORS = [Separators(), Separators(truncation="#")]
TEXT = st.text(st.characters(codec="utf-8"), max_size=60)


class ListSink:
    """Collects what the driver registers and accepts, in order; can be told to fail like a full disk."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.fail_next = 0

    def accept(self, items: Sequence[Item]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OutboxError("outbox test.db: disk I/O error")
        self.items.extend(items)

    def accept_soon(self, items: Sequence[Item]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self.accept(items)
        except OutboxError as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def register(self, info: DeviceInfo) -> None:
        self.items.append(info)

    def observations(self) -> list[Observation]:
        return [i for i in self.items if isinstance(i, Observation)]

    def events(self) -> list[DeviceEvent]:
        return [i for i in self.items if isinstance(i, DeviceEvent) and i.stream == "alarms"]

    def infos(self) -> list[DeviceInfo]:
        return [i for i in self.items if isinstance(i, DeviceInfo)]


async def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(connection: dict[str, Any], *, wait: bool = True,
                  **spec: Any) -> AsyncIterator[tuple[Hl7PcdDriver, ListSink]]:
    sink = ListSink()
    driver = Hl7PcdDriver(DeviceSpec(**{"id": "hl7-test", "kind": "hl7_pcd", "gateway": "gw-t",
                                        "connection": connection, **spec}), sink)
    task = asyncio.create_task(driver.run())
    try:
        if wait and "listen" in connection:
            await wait_for(lambda: driver.port is not None, 3)
        yield driver, sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def listening(**connection: Any) -> AsyncIterator[tuple[Hl7PcdDriver, ListSink]]:
    async with running({"listen": "127.0.0.1:0", **connection}) as pair:
        yield pair


@contextlib.asynccontextmanager
async def sender(driver: Hl7PcdDriver, style: str = "A", beds: int = 1, **options: Any) -> AsyncIterator[Hl7Sender]:
    assert driver.port is not None
    wire = await TcpWire.connect("127.0.0.1", driver.port)
    try:
        yield Hl7Sender(wire, monitors_for(beds), style, ack_timeout_s=2.0, **options)
    finally:
        wire.close()


# -- properties of the I/O-free parts ------------------------------------------------------------

@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_framer_takes_any_bytes_in_any_chunks(data: bytes, cuts: list[int]) -> None:
    framer = MllpFramer(max_size=256)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        for frame in framer.feed(data[start:end]):
            assert len(frame.payload) <= 256
    assert framer.pending() <= 257


@given(st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")), max_size=6),
       st.lists(st.integers(0, 5000), max_size=6))
def test_framer_gives_back_what_was_framed_whatever_the_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wrap(p) for p in payloads)
    framer = MllpFramer()
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    frames = [f for start, end in itertools.pairwise(bounds) for f in framer.feed(stream[start:end])]
    assert [f.payload for f in frames] == payloads
    assert (framer.frames_bad, framer.bytes_discarded, framer.pending()) == (0, 0, 0)


def test_an_oversized_frame_keeps_its_head_and_the_stream_recovers() -> None:
    framer = MllpFramer(max_size=64)
    frames = framer.feed(wrap(b"MSH|" + b"x" * 500) + wrap(b"MSH|small"))
    assert [(len(f.payload), f.oversize) for f in frames] == [(64, True), (9, False)]


MESSAGE_PARTS = st.lists(st.sampled_from(["MSH", "OBX", "OBR", "PV1", "|", "^", "~", "\\", "&", "#", "\r", "\n",
                                          "NM", "ORU", "R01", "R40", "1", "97", "MDC_EVT_ALARM", "X", "F", "\\F\\",
                                          "urn:uuid:", "0030E6FFFE000001", "\x00", "é"]), max_size=60)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), MESSAGE_PARTS.map(lambda p: ("MSH|^~\\&|" + "".join(p)).encode()),
                 MESSAGE_PARTS.map(lambda p: "".join(p).encode("utf-8"))))
def test_parser_and_mapping_raise_nothing_but_their_own_error(data: bytes) -> None:
    with contextlib.suppress(Hl7Error):
        message = parse(data)
        for segment in message.segments:
            for n in range(len(segment.fields) + 1):
                segment.get(n, 2, 1, 2)
    for routing in (Routing("hl7-x"), Routing("hl7-x", discover=False)):
        decoded = decode(data, routing, 1_767_225_600_000)
        ack = answer(decoded, "WL1", 1_767_225_600_000)
        fields = ack_fields(ack)
        assert fields["msa"][0] in ("AA", "AR", "CA", "CR")  # type: ignore[index]
        assert (decoded.error is None) == (fields["msa"][0] in ("AA", "CA"))  # type: ignore[index]


@given(st.lists(TEXT, min_size=1, max_size=4))
def test_derived_device_ids_are_valid_names(components: list[str]) -> None:
    found = equipment_of(components)
    if found is not None:
        assert check_name(found.device_id(), "device id")


@pytest.mark.parametrize(("components", "kind", "value"), [
    (["0030e6fffe000001", "EUI-64"], "eui64", "0030E6FFFE000001"),
    (["PAT_DEVICE", "0003B10000000001", "EUI-64"], "eui64", "0003B10000000001"),
    (["urn:uuid:DF041F5C-A3C9-11E9-8D8A-0050B612AFEB", "", "x", "URN"], "uuid", "df041f5c-a3c9-11e9-8d8a-0050b612afeb"),
    (["MINDRAY_", "00A037000000", "EUI-64"], "equipment_id", "00A037000000"),
    (["MONITOR 7"], "equipment_id", "MONITOR 7"),
])
def test_equipment_ids_in_the_forms_vendors_send(components: list[str], kind: str, value: str) -> None:
    assert equipment_of(components) == Equipment(kind, value)


@pytest.mark.parametrize("seps", SEPARATORS, ids=["4-chars", "5-chars"])
@given(text=TEXT)
def test_escape_then_unescape_gives_the_text_back(seps: Separators, text: str) -> None:
    escaped = escape(text, seps)
    assert unescape(escaped, seps) == text
    assert not any(c in escaped for c in (seps.field, seps.component, seps.repetition, seps.subcomponent, "\r", "\n"))
    message = parse(f"MSH|{seps.encoding}|A|B\rOBX|1|ST|X^Y^MDC|1|{escaped}|R\r")
    assert message.segments[1].get(5) == text


@pytest.mark.parametrize(("escaped", "plain"), [
    (r"a\F\b\S\c\T\d\R\e\E\f", "a|b^c&d~e\\f"), (r"x\X0D0A\y", "x\r\ny"), (r"\H\bold\N\ \.br\next", "bold \nnext"),
    (r"keep \Z99\ and \unterminated", r"keep \Z99\ and \unterminated"),
])
def test_unescape_known_sequences(escaped: str, plain: str) -> None:
    assert unescape(escaped, Separators()) == plain


@given(st.text(max_size=40))
def test_timestamps_never_raise(text: str) -> None:
    parse_ts(text)


def _get_as_before(segment: Segment, n: int, component: int, rep: int, sub: int) -> str:
    """Segment.get as it was before fields were split once and cached: every read splits afresh."""
    value = segment.fields[n] if 0 <= n < len(segment.fields) else ""
    reps = [value] if segment.id == "MSH" and n <= 2 else value.split(segment.seps.repetition)
    if rep >= len(reps):
        return ""
    comps = reps[rep].split(segment.seps.component)
    if not 1 <= component <= len(comps):
        return ""
    subs = comps[component - 1].split(segment.seps.subcomponent)
    if not 1 <= sub <= len(subs):
        return ""
    return unescape(subs[sub - 1], segment.seps)


def _components_as_before(segment: Segment, n: int, rep: int) -> list[str]:
    """Segment.components as it was before the split cache."""
    reps = segment.repetitions(n)
    if rep >= len(reps) or not reps[rep]:
        return []
    seps = segment.seps
    return [unescape(c.split(seps.subcomponent)[0], seps) for c in reps[rep].split(seps.component)]


SEGMENT_TEXT = st.lists(st.sampled_from(["|", "^", "~", "\\", "&", "#", "A", "1", " ", "X0D", "F", "\\F\\"]),
                        max_size=40).map("".join)
READS = st.lists(st.tuples(st.integers(-1, 6), st.integers(0, 4), st.integers(0, 3), st.integers(0, 3)), max_size=12)


@pytest.mark.parametrize("seps", SEPARATORS, ids=["4-chars", "5-chars"])
@given(seg_id=st.sampled_from(["MSH", "OBX"]), text=SEGMENT_TEXT, reads=READS)
def test_split_once_reads_what_splitting_every_time_read(seps: Separators, seg_id: str, text: str,
                                                           reads: list[tuple[int, int, int, int]]) -> None:
    segment = Segment([seg_id, *text.split(seps.field)], seps)
    for n, component, rep, sub in reads:  # in any order: reads of fields split earlier and of fields not yet split
        assert segment.get(n, component, rep, sub) == _get_as_before(segment, n, component, rep, sub)
        assert segment.components(n, rep) == _components_as_before(segment, n, rep)
        assert segment.get(n) == _get_as_before(segment, n, 1, 0, 1)


ROW_FIELD = st.one_of(
    st.sampled_from(["150456^MDC_PULS_OXIM_SAT_O2^MDC", "262688^MDC_DIM_PERCENT^MDC", "mmHg^^UCUM", "DEMO", "A~DEMO",
                     "0030E6FFFE000001^EUI-64", "urn:uuid:df041f5c-a3c9-11e9-8d8a-0050b612afeb", "X", "P", "", "bpm"]),
    SEGMENT_TEXT)


@pytest.mark.parametrize("seps", SEPARATORS, ids=["4-chars", "5-chars"])
@given(fields=st.lists(ROW_FIELD, min_size=19, max_size=19))
def test_cached_row_readings_equal_reading_the_row(seps: Separators, fields: list[str]) -> None:
    segment = Segment(["OBX", *fields], seps)
    # The reference: the uncached readers (by_field_text keeps them as __wrapped__) applied to the row itself.
    uncached: dict[str, Callable[[Segment, int], Any]] = {
        name: getattr(rows, name).__wrapped__ for name in ("_identity", "_sent_unit", "_has_demo", "equipment")}
    ident = uncached["_identity"](segment, 3)
    sent = uncached["_sent_unit"](segment, 6)
    known = ident.known
    fallback = known.unit if known else ""
    unit = fallback if known is not None and (not sent or sent == known.unit) else sent or fallback
    demo = uncached["_has_demo"](segment, 8)
    flags = rows.status_flags(segment.get(11)) | (FLAG_DEMO if demo else 0)
    for _ in range(2):  # cold, then from the caches
        assert rows.identity(segment) == ident
        assert rows.unit(segment, known) == unit
        assert rows.is_demo(segment) == demo
        assert rows.equipment(segment, 18) == uncached["equipment"](segment, 18)
        assert rows.reading(segment) == rows.Reading(ident, unit, flags)


def test_caches_of_network_text_stay_bounded() -> None:
    seps = Separators()
    for n in range(CACHE_SIZE + 10):
        fields = ["OBX", "1", "NM", f"{n}^VENDOR_{n}^MDC", "", "1", f"u{n}", *[""] * 12]
        rows.row_of(fields, seps)
        rows.equipment(Segment(fields, seps), 3)
        sender = [f"MSH|^~\\&|APP{n}", "PV1||I|ICU^^B1"]
        sender_of(*split_message("\r".join(sender)))
    assert 0 < len(rows._ROWS) <= CACHE_SIZE
    assert 0 < len(context._SENDERS) <= CACHE_SIZE
    assert 0 < len(rows.equipment.cache) <= CACHE_SIZE  # type: ignore[attr-defined]
    long_text = "9" * 10_000
    rows.identity(Segment(["OBX", "1", "NM", long_text], seps))
    assert all(long_text not in key for key in rows._identity.cache)  # type: ignore[attr-defined]
    assert parse_ts(" " * 10_000 + "20260101") == 1_767_225_600_000  # too long to cache, still read


@pytest.mark.parametrize(("text", "ms"), [
    ("20260101000000", 1_767_225_600_000), ("20260101010000+0100", 1_767_225_600_000),
    ("20260101000000.25", 1_767_225_600_250), ("20260101000000250+0000", 1_767_225_600_250),
    ("202601", 1_767_225_600_000), ("20261301000000", None), ("2026-01-01", None), ("", None),
])
def test_timestamp_forms(text: str, ms: int | None) -> None:
    assert parse_ts(text) == ms


def test_the_sample_configuration_loads() -> None:
    sample = tomllib.loads((Path(__file__).parent.parent / "gateway/drivers/hl7_pcd/sample.toml").read_text())
    listener, serial_line = (load_settings(msgspec.convert(d, DeviceSpec)) for d in sample["devices"])
    assert (listener.listening, listener.port, listener.discover) == (True, 2575, True)
    assert listener.devices["6F1C2A9E-0D4B-4C3E-9A51-2B7C8D9E0F12"] == "pump-icu-02"
    assert (serial_line.listening, serial_line.discover, serial_line.baudrate) == (False, False, 9600)


@pytest.mark.parametrize(("connection", "problem"), [
    ({"listen": ":2575", "serial_port": "/dev/ttyS0"}, "exactly one"),
    ({}, "exactly one"),
    ({"listen": ":2575", "bogus": 1}, "unknown keys"),
    ({"listen": "host:99999"}, "out of range"),
    ({"listen": ":2575", "devices": {"0030E6FFFE000001": "bad id!"}}, "device id"),
    ({"listen": ":2575", "partial_timeout_s": 0}, "positive"),
])
def test_bad_connection_settings_name_the_device(connection: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=f"device hl7-x: connection.*{problem}"):
        load_settings(DeviceSpec(id="hl7-x", kind="hl7_pcd", gateway="gw", connection=connection))


# -- real transports -----------------------------------------------------------------------------

async def test_vitals_from_the_simulator_become_mdc_observations_after_registration() -> None:
    async with listening() as (driver, sink), sender(driver, "A", beds=2, unknown_param=True) as sim:
        acks = [await sim.send_vitals(monitor) for monitor in sim.monitors]
    assert [(a.code, a.attempts) for a in acks] == [("CA", 1), ("CA", 1)]
    assert [a.control_id for a in acks] == ["SIMA000001", "SIMA000002"]
    devices = [info.device for info in sink.infos()]
    assert devices == [f"hl7-{m.eui64.lower()}" for m in sim.monitors]
    for info, monitor in zip(sink.infos(), sim.monitors, strict=True):
        assert (info.bed, info.identifiers, info.discovered, info.driver) == (monitor.bed, {"eui64": monitor.eui64},
                                                                              True, "hl7_pcd")
        first_reading = next(i for i, item in enumerate(sink.items)
                             if isinstance(item, Observation) and item.device == info.device)
        assert sink.items.index(info) < first_reading
    by_metric = {(o.device, o.metric): o for o in sink.observations()}
    spo2 = by_metric[(devices[0], "MDC_PULS_OXIM_SAT_O2")]
    assert (spo2.code, spo2.unit, spo2.bed, spo2.stream, spo2.flags) == (150456, "%", "ICU-01", "numerics", 0)
    assert by_metric[(devices[1], "MDC_PRESS_BLD_NONINV_SYS")].unit == "mm[Hg]"
    assert by_metric[(devices[1], "MDC_TEMP")].unit == "Cel"
    st_i = by_metric[(devices[0], "MDC_ECG_AMPL_ST_I")]
    assert (st_i.code, st_i.unit, st_i.value) == (131841, "mV", 0.08)
    assert len(sink.observations()) == 2 * 11
    assert driver.health().state == "connected"
    assert driver.health().frames_ok == 2


async def test_alarms_of_the_other_vendor_style_get_original_mode_acks() -> None:
    async with listening() as (driver, sink), sender(driver, "B") as sim:
        monitor = sim.monitors[0]
        alarm = Alarm(196648, "MDC_EVT_LO", "SpO2 low | 85%", 150456, "MDC_PULS_OXIM_SAT_O2", "PH", "SP")
        start = await sim.send_alarm(monitor, alarm)
        end = await sim.send_alarm(monitor, Alarm(196648, "MDC_EVT_LO", "SpO2 low", 150456, "MDC_PULS_OXIM_SAT_O2",
                                                  "PH", "SP", "continue", "inactive", alert_id=alarm.alert_id))
    assert (start.code, end.code) == ("AA", "AA")
    first, last = sink.events()
    assert (first.event, first.priority, first.alarm_kind, first.phase, first.source) == (
        "MDC_EVT_LO", "high", "physiological", "start", "MDC_PULS_OXIM_SAT_O2")
    assert first.text == "SpO2 low | 85% [active, enabled]"
    assert first.alert_uuid == last.alert_uuid == alarm.alert_id
    assert (last.phase, last.bed, last.device) == ("end", "ICU-01", f"hl7-{monitor.eui64.lower()}")


async def test_malformed_input_is_rejected_with_err_and_the_connection_goes_on() -> None:
    async with listening() as (driver, sink), sender(driver) as sim:
        garbage = await sim.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        adt = await sim.send_raw(b"MSH|^~\\&|ADT|X|||20260101000000||ADT^A01|M-7|P|2.6\rPID|||1\r")
        good = await sim.send_vitals(sim.monitors[0])
    assert (garbage.code, garbage.control_id) == ("AR", "")
    assert "MSH" in garbage.errors[0]
    assert (adt.code, adt.control_id) == ("AR", "M-7")
    assert "ADT" in adt.errors[0]
    assert good.code == "CA"
    assert driver.health().frames_bad == 2
    assert len(sink.observations()) == 10


async def test_a_store_failure_is_answered_ae_and_the_sender_retries() -> None:
    async with listening() as (driver, sink), sender(driver, "B") as sim:
        sink.fail_next = 2
        ack = await sim.send_vitals(sim.monitors[0])
        assert (ack.code, ack.attempts, sim.retries) == ("AA", 3, 2)
        assert len(sink.observations()) == 10  # stored once, by the attempt that succeeded
        sink.fail_next = 10
        ack = await sim.send_vitals(sim.monitors[0])
    assert (ack.code, ack.attempts, sim.gave_up) == ("AE", 4, 1)
    assert "send again" in ack.errors[0]
    assert driver.store_failures == 6


class DeferredSink(ListSink):
    """Stores at once but reports durability only when the test says (a group commit still running)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[asyncio.Future[None]] = []

    def accept_soon(self, items: Sequence[Item]) -> asyncio.Future[None]:
        if not self.groups or self.groups[-1].done():
            self.groups.append(asyncio.get_running_loop().create_future())
        self.items.extend(items)
        return self.groups[-1]


def _vitals(control_id: str) -> bytes:
    monitor = Monitor(bed="ICU-01", eui64="0030E6FFFE000001", patient=PatientModel("stable", 1), unit="ICU")
    return MessageBuilder(STYLES["A"]).vitals(control_id, monitor, 0.0, 1_767_225_600_000)


async def test_the_acks_of_a_read_wait_for_their_commit_and_keep_the_order_of_the_messages() -> None:
    sink = DeferredSink()
    driver = Hl7PcdDriver(DeviceSpec(id="hl7-test", kind="hl7_pcd", gateway="gw-t",
                                     connection={"listen": "127.0.0.1:0"}), sink)
    written: list[bytes] = []
    framer = MllpFramer()
    adt = b"MSH|^~\\&|ADT|X|||20260101000000||ADT^A01|M-2|P|2.6\rPID|||1\r"
    read = framer.feed(wrap(_vitals("M-1")) + wrap(adt) + wrap(_vitals("M-3")))
    pending = driver.receive(read, written.append)
    assert pending is sink.groups[0]
    assert written == []  # stored, not yet durable: no ACK, not even M-2's
    later = driver.receive(framer.feed(wrap(b"not hl7")), written.append, pending)
    assert later is pending
    assert written == []  # a reject after them waits too
    sink.groups[0].set_result(None)
    await asyncio.sleep(0)
    acks = [ack_fields(frame.payload)["msa"] for chunk in written for frame in MllpFramer().feed(chunk)]
    assert acks == [["CA", "M-1"], ["AR", "M-2"], ["CA", "M-3"], ["AR", ""]]
    assert len(written) == 2  # one write per read
    # A failed group commit: its messages are answered "send again", in order with the others.
    written.clear()
    driver.receive(framer.feed(wrap(_vitals("M-4")) + wrap(adt)), written.append)
    sink.groups[1].set_exception(OutboxError("outbox test.db: disk I/O error"))
    await asyncio.sleep(0)
    assert [ack_fields(f.payload)["msa"] for f in MllpFramer().feed(written[0])] == [["CE", "M-4"], ["AR", "M-2"]]
    assert driver.store_failures == 1


async def test_two_senders_at_once() -> None:
    async with listening() as (driver, sink), sender(driver, "A") as one, sender(driver, "B") as two:
        two.monitors[0] = monitors_for(2)[1]

        async def burst(sim: Hl7Sender) -> list[str]:
            return [(await sim.send_vitals(sim.monitors[0])).code for _ in range(5)]

        codes = await asyncio.gather(burst(one), burst(two))
    assert list(codes) == [["CA"] * 5, ["AA"] * 5]
    assert {o.device for o in sink.observations()} == {"hl7-00a0c9fffe000001", "hl7-00a0c9fffe000002"}
    assert len(sink.observations()) == 100


async def test_a_stalled_half_message_neither_blocks_others_nor_stays_open() -> None:
    async with listening(partial_timeout_s=0.5) as (driver, sink):
        assert driver.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", driver.port)
        writer.write(b"\x0bMSH|^~\\&|SLOW|X|||20260101000000||ORU^R01|S-1|P|2.6\rPV1||I|ICU^^IC")
        await writer.drain()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with sender(driver) as sim:
            ack = await sim.send_vitals(sim.monitors[0])
        assert ack.code == "CA"
        assert loop.time() - started < 0.5  # answered while the other sender is still stalled
        assert await asyncio.wait_for(reader.read(), 2) == b""  # the driver gave up on the stalled one
        writer.close()
        await wait_for(lambda: driver.health().frames_bad == 1, 1)
    assert len(sink.observations()) == 10


async def test_senders_beyond_the_limit_are_turned_away() -> None:
    async with listening(max_connections=1) as (driver, _), sender(driver) as sim:
        assert (await sim.send_vitals(sim.monitors[0])).code == "CA"
        assert driver.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", driver.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        assert (await sim.send_vitals(sim.monitors[0])).code == "CA"


async def test_an_oversized_message_is_rejected_and_the_next_one_accepted() -> None:
    async with listening(max_message_bytes=2048) as (driver, sink), sender(driver) as sim:
        big = b"MSH|^~\\&|BIG|X|||20260101000000||ORU^R01|BIG-1|P|2.6\r" + b"NTE|1||" + b"x" * 10_000 + b"\r"
        rejected = await sim.send_raw(big)
        accepted = await sim.send_vitals(sim.monitors[0])
    assert (rejected.code, rejected.control_id) == ("AR", "BIG-1")
    assert accepted.code == "CA"
    assert len(sink.observations()) == 10


async def test_a_port_in_use_is_a_lost_link_not_a_crash() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running({"listen": f"127.0.0.1:{port}"}, wait=False) as (driver, sink):
            await wait_for(lambda: driver.health().state == "lost", 3)
    assert [e.event for e in sink.items if isinstance(e, DeviceEvent)] == ["device.disconnected"]


async def test_serial_line_over_a_pty() -> None:
    wire = PtyWire()
    try:
        async with running({"serial_port": wire.port, "baudrate": 9600}, bed="ICU-07") as (driver, sink):
            sim = Hl7Sender(wire, monitors_for(1), "B", ack_timeout_s=1.0)
            await asyncio.sleep(0.05)  # let the driver open the port: opening it drops input already waiting
            vitals = await sim.send_vitals(sim.monitors[0])
            alarm = await sim.send_alarm(sim.monitors[0], Alarm(196650, "MDC_EVT_LEAD_OFF", "Leads off", kind="ST"))
            garbage = await sim.send_raw(b"\x00\xffnot hl7")
            assert driver.health().state == "connected"
    finally:
        wire.close()
    assert (vitals.code, vitals.attempts, alarm.code, garbage.code) == ("AA", 1, "AA", "AR")
    assert {o.device for o in sink.observations()} == {"hl7-test"}  # a serial line is its own device
    assert {o.bed for o in sink.observations()} == {"ICU-07"}
    assert len(sink.observations()) == 10
    assert sink.infos() == []
    (event,) = sink.events()
    assert (event.event, event.alarm_kind, event.priority, event.text) == (
        "MDC_EVT_LEAD_OFF", "technical", "medium", "Leads off [active, enabled]")


# The PCD-01 mapping against a plain reading of the profile; segment splitting and ACK time against references.

_OBX_TEXT = st.sampled_from([
    "", "NM", " nm ", "ST", "CWE", "NA", "NM^x", "67.4", " 96.9 ", "-1e5", "+3", "1e999", "abc", "1\\S\\2", ".5", "1#2",
    "99" * 200, "147842^MDC_ECG_HEART_RATE^MDC", "150456^MDC_PULS_OXIM_SAT_O2^MDC", "^MDC_TEMP^MDC", "8867-4^HR^LN",
    "123^^MDC", "264864^MDC_DIM_BEAT_PER_MIN^MDC", "262688^MDC_DIM_PERCENT^MDC", "kPa^kPa^UCUM", "bpm", "R", "F", "P",
    "X", "DEMO", "A~DEMO", "1.2.1.150456", "1.1\\F\\1", "20261128030547.027+0000", "2026112803", "20261399",
    "20261128030547.027", "2026\\T\\1128", "0030E6FFFE000001^EUI-64", "0030E6FFFE000002", "PUMP-7^ISO",
    "urn:uuid:6f1c2c1e-1111-4222-8333-944444444444^^^URN", "\\X41\\", "a&b", "~", "300", "٣.٥", "²", "1.2.3",
])
# Encoding characters: both forms, and delimiters that can occur in numbers and times ('.', '-', '+').
_ENCODINGS = st.sampled_from(["^~\\&", "^~\\&#", "^~\\.", "+-\\&", "^~\\&."])


@st.composite
def _pcd01_messages(draw: st.DrawFn) -> bytes:
    """ORU^R01 messages with OBX rows of arbitrary length made of the texts PCD senders (and broken ones) write."""
    encoding = draw(_ENCODINGS)
    # The message's own delimiters where a sender puts them; the drawn odd texts keep theirs (data, then).
    own = str.maketrans({"^": encoding[0], "~": encoding[1], "&": encoding[3]})
    sent = draw(st.sampled_from(["20261128030547+0000", "", "bad", "20261128030540"]))
    lines = [f"MSH|{encoding}|" + ("WLSIM^" + draw(st.sampled_from(["0030E6FFFE000000^EUI-64", "", "X"])) + "|H|||"
                                   + sent + "||ORU^R01|").translate(own)
             + draw(st.sampled_from(["C1", "C2"])) + "|P|2.6" + draw(st.sampled_from(["", "|||AL|NE"]))]
    if draw(st.booleans()):
        lines.append(("PV1||I|ICU^" + draw(st.sampled_from(["^BED-1", "R2", "^", "^B\\S\\1"])) + "^H").translate(own))
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["OBX", "OBX", "OBX", "OBR", "NTE", "PV1"]))
        if kind in ("OBR", "PV1"):
            lines.append(f"{kind}|1|x|" + draw(st.sampled_from(["x", "ICU^^BED-2"])).translate(own) + "|y|||"
                         + draw(st.sampled_from(["20261128030500", "", "junk"])))
            continue
        # Mostly what each position holds in PCD-01, sometimes any of the texts, cut at any length.
        typical = ["NM", "147842^MDC_ECG_HEART_RATE^MDC", "1.1.1.147842", "67.4", "264864^MDC_DIM_BEAT_PER_MIN^MDC",
                   "", "", "", "", "R", "", "", "20261128030547.027+0000", "", "", "", "0030E6FFFE000001^EUI-64"]
        fields = [kind, "1"] + [text.translate(own) if draw(st.integers(0, 9)) < 7 else draw(_OBX_TEXT)
                                for text in typical]
        lines.append("|".join(fields[:draw(st.one_of(st.just(len(fields)), st.integers(1, len(fields))))]))
    return draw(st.sampled_from(["\r", "\n", "\r\n"])).join(lines).encode()


def _comparable(decoded: Any) -> tuple[object, ...]:
    """A decoded result with its errors as plain tuples (exceptions compare by identity)."""
    def problem(exc: Hl7Error | None) -> object:
        return None if exc is None else (exc.code, exc.reason, exc.segment, exc.sequence, exc.field)
    return (decoded.header, decoded.items, decoded.discovered, problem(decoded.error),
            [problem(w) for w in decoded.warnings], decoded.skipped, decoded.containment)


def _pcd01_reference(payload: bytes, routing: Routing, received: int) -> Decoded:
    """PCD-01 mapped the plain way, as IHE describes it: the general parser and Segment.get on every field read,
    the uncached readers of rows.py, no per-row shortcut and no cache (written apart from pcd.py)."""
    uncached = {name: getattr(rows, name).__wrapped__ for name in ("_identity", "_sent_unit", "_has_demo", "equipment")}
    try:
        message = parse(payload)
    except Hl7Error as exc:
        return Decoded(salvage_header(payload), error=exc)
    header = read_header(message)
    result = Decoded(header)
    assert header.control_id.strip()  # as generated
    assert (header.message_code, header.trigger) == ("ORU", "R01")
    pv1 = message.first("PV1")
    pv1_bed = (pv1.get(3, 3).strip() or pv1.get(3, 2).strip()) if pv1 else ""
    message_time = parse_ts(message.header.get(7))
    skew = FLAG_CLOCK_SKEW if message_time is not None and abs(message_time - received) > 5_000 else 0
    sender = uncached["equipment"](message.header, 3)
    announced: set[str] = set()

    def route(found: Equipment | None) -> tuple[str, str | None]:
        found = found or sender
        device, discovered = routing.resolve(found)
        bed = (routing.bed if device == routing.device_id else None) or pv1_bed or None
        if discovered and found is not None and device not in announced:
            announced.add(device)
            result.discovered.append(DeviceInfo(device=device, stream="device", seq=0, ts=received, driver="hl7_pcd",
                                                bed=bed, identifiers={found.kind: found.value}, discovered=True))
        return device, bed

    obr_time: int | None = None
    current: Equipment | None = None
    number = 0
    try:
        for segment in message.segments:
            if segment.id == "OBR":
                obr_time, current = parse_ts(segment.get(7)), None
            if segment.id != "OBX":
                continue
            number += 1
            own = uncached["equipment"](segment, 18)
            value_type = segment.get(2).strip().upper()
            text = segment.get(5).strip()
            if not value_type:
                current = own or current
                continue
            if value_type != "NM" or not text:
                result.skipped += 1
                continue
            device, bed = route(own or current)
            value = float(text) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,2})?", text) else math.nan
            if not math.isfinite(value):
                result.warnings.append(Hl7Error(102, f"OBX-5 {text[:30]!r} is not a number", "OBX", number, 5))
                continue
            ident = uncached["_identity"](segment, 3)
            if not ident.metric:
                result.warnings.append(Hl7Error(101, "OBX-3 names no observation", "OBX", number, 3))
                continue
            sent = uncached["_sent_unit"](segment, 6)
            known_unit = ident.known.unit if ident.known else ""
            unit = known_unit if ident.known and (not sent or sent == known_unit) else sent or known_unit
            flags = skew | rows.status_flags(segment.get(11)) | (FLAG_DEMO if uncached["_has_demo"](segment, 8) else 0)
            if not mdc.is_plausible(ident.metric, value):
                flags |= FLAG_IMPLAUSIBLE
            stamp = segment.get(14).strip()
            device_ts = parse_ts(stamp) if stamp else None
            if device_ts is None:
                if stamp:
                    result.warnings.append(Hl7Error(102, f"OBX-14 {stamp[:30]!r} is not a valid time", "OBX",
                                                    number, 14))
                device_ts = obr_time if obr_time is not None else message_time
            containment = segment.get(4)
            result.items.append(Observation(
                device=device, stream="numerics", seq=0, ts=received, metric=ident.metric, value=value, unit=unit,
                code=ident.code, bed=bed, device_ts=device_ts, flags=flags, containment=containment.strip() or None))
            result.containment.append(containment)
    except Hl7Error as exc:
        return Decoded(header, error=exc)
    return result


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pcd01_messages(), min_size=1, max_size=3), st.booleans(), st.sampled_from([None, "BED-9"]))
def test_pcd01_maps_as_the_plain_reading_of_the_profile(payloads: list[bytes], discover: bool, bed: str | None) -> None:
    # Several messages in a row: the second reads its sender and rows from the caches the first filled.
    routing = Routing("hl7-0030e6fffe000001" if bed else "hl7-x", bed=bed, discover=discover,
                      devices={"PUMP-7": "pump-7"})
    for payload in [*payloads, *payloads]:
        assert _comparable(decode(payload, routing, 1_764_300_000_000)) == \
            _comparable(_pcd01_reference(payload, routing, 1_764_300_000_000))


def _parse_segments_reference(text: str, seps: Separators) -> list[list[str]]:
    """The segment loop of parse() before its fast path (the first line is MSH), as fields per segment."""
    out: list[list[str]] = []
    for number, line in enumerate(parser._split_segments(text), start=1):
        if not line or line.isspace():
            continue
        seg_id = line[:3]
        if ((seg_id not in parser._COMMON_IDS and not parser._SEGMENT_ID.fullmatch(seg_id))
                or (len(line) > 3 and line[3] != seps.field)):
            raise Hl7Error(100, f"line {number} is not a segment ({line[:12]!r})")
        if not out:
            header_end = 4 + len(seps.encoding)
            rest = line[header_end + 1:].split(seps.field) if len(line) > header_end else []
            out.append(["MSH", seps.field, seps.encoding, *rest])
        elif seg_id == "MSH":
            raise Hl7Error(100, f"line {number}: a second MSH (one message per MLLP block)", "MSH", 2, 0)
        else:
            out.append(line.split(seps.field))
    return out


_LINES = st.sampled_from(["OBX|1|NM", "OBX", "OBXX|1", "OBX^1", "PID||x", "ZZ1|a", "Z1|a", "zz1|a", "MSH|^~\\&|x",
                          "", " ", "\t", "NTE|1|a|b", "OB|1", "|OBX|", "EVN", "ZPD", "1AB|x", "OBX|a\nb", "\nOBX|1"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINES, max_size=8), st.sampled_from(["\r", "\n", "\r\n"]))
def test_parse_splits_segments_as_the_reference_loop(lines: list[str], terminator: str) -> None:
    text = terminator.join(["MSH|^~\\&|A|B", *lines])
    seps = Separators()
    try:
        expected: object = _parse_segments_reference(text, seps)
    except Hl7Error as exc:
        expected = (exc.code, exc.reason, exc.segment, exc.sequence)
    try:
        got: object = [s.fields for s in parse(text).segments]
    except Hl7Error as exc:
        got = (exc.code, exc.reason, exc.segment, exc.sequence)
    assert got == expected


@given(st.lists(st.integers(-10**12, 4 * 10**12), min_size=1, max_size=20))
def test_ack_time_as_formatted_afresh(moments: list[int]) -> None:
    for ms in moments + [m + 1 for m in moments]:  # neighbours hit the remembered second
        assert parser.format_ts(ms) == parser._format_ts(ms)
