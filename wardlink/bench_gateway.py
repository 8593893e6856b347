"""``wardlink bench gateway``: readings/s of each driver kind through parse, outbox and uplink, beside the raw broker.

For every driver kind the same realistic payload (a monitor frame of 10 parameters, a PCD-01 message of 10
NM rows, a pump poll, a scale poll, an RFID report of 20 tags, a waste scan) goes, device after device of
20, through three paths:

``parse``   the driver's I/O-free path only (bytes, message or registers in, contract items out);
``outbox``  the same plus ``accept`` into a real :class:`~gateway.outbox.Outbox` in a temporary directory,
            handing over what one frame, message or poll yields per call, as the driver does (the RFID
            driver gathers reports up to its ``batch_max`` of 500 tag reads, so that is what it hands over);
``full``    parse -> :meth:`Gateway.accept` -> the real uplink -> the broker -> a commit responder that
            answers every batch with :class:`~devices.contract.Commit` ranges -> the gateway releases the
            rows; timed until every reading accepted was published and released.

Baselines from the same run: the broker relaying pre-encoded 100-observation batches at QoS 1 from a
paho publisher to a subscriber that counts them, and SQLite inserting pre-built rows without secondary
indexes. The broker is a Mosquitto of the benchmark's own (the embedded amqtt broker when Mosquitto is
not installed); it and the commit responder/counter run in processes of their own, so the CPU time
reported (``time.process_time``, all threads of this process) is the gateway's work alone and
"per CPU-s" is the per-core figure. Ratios are readings/s over the broker baseline's observations/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import select
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Final

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Batch, Commit, DeviceInfo, Item, encode
from devices.site import DeviceSpec, GatewaySpec, Site, Unit
from gateway.driver import Sink
from gateway.drivers.bedside_serial.driver import frames_to_items
from gateway.drivers.bedside_serial.parser import FrameParser
from gateway.drivers.hl7_pcd.config import load_settings
from gateway.drivers.hl7_pcd.driver import Hl7PcdDriver
from gateway.drivers.hl7_pcd.mllp import MllpFramer, wrap
from gateway.drivers.hl7_pcd.pcd import answer, decode
from gateway.drivers.modbus_common.decode import MapState, identity, to_items
from gateway.drivers.modbus_common.regmap import Block, RegisterMap, Snapshot
from gateway.drivers.modbus_map.parser import resolve_map
from gateway.drivers.modbus_pump.parser import pump_map
from gateway.drivers.rfid_mqtt import parser as rfid_parser
from gateway.drivers.rfid_mqtt.driver import RfidMqttDriver
from gateway.drivers.waste_mqtt import parser as waste_parser
from gateway.drivers.waste_mqtt.driver import WasteMqttDriver
from gateway.outbox import Outbox
from gateway.service import Gateway, GatewaySettings
from ingest.service import ranges
from simulators.bedside import protocol
from simulators.bedside.patient import PatientModel
from simulators.hl7.messages import STYLES, MessageBuilder, Monitor
from wardlink.bench_support import Clock, Rate, free_port, stop

log = logging.getLogger(__name__)

SITE: Final = "bench"
UNIT: Final = "ICU"
DEVICES: Final = 20  # devices of each kind on its gateway, fed round robin
PAYLOADS: Final = 16  # distinct payloads per device, cycled, so values and sequence of frames change
RAW_TOPIC: Final = "wardlink-bench/raw"
DONE_TOPIC: Final = "wardlink-bench/done"
END_MARK: Final = b"END"
OBS_PER_MESSAGE: Final = 100
TAGS_PER_REPORT: Final = 20
PUBLISH_WINDOW: Final = 1_000  # baseline messages queued in paho beyond those acknowledged
OUTBOX_WINDOW: Final = 5_000  # full path: the producer waits while the outbox holds more than this
NO_SHEDDING: Final = 10**9  # outbox bound in the benchmark: a shed row would make the figures lie
DRAIN_TIMEOUT_S: Final = 120.0
NODELAY: Final = "true"  # Mosquitto's set_tcp_nodelay; see broker()
BEDS: Final = [f"{UNIT}-{i:02d}" for i in range(DEVICES)]

KINDS: Final[dict[str, str]] = {
    "bedside_serial": "monitor frame, 10 parameters",
    "hl7_pcd": "PCD-01 message, 10 NM rows (MLLP, ACK built)",
    "modbus_pump": "pump poll, 5 values",
    "modbus_map": "waste scale poll, 4 values",
    "rfid_mqtt": "RFID report, 20 tags (accepted 500 at a time)",
    "waste_mqtt": "waste bag scan, 1 event",
}
STAGES: Final[dict[str, str]] = {"parse": "parse", "outbox": "parse + outbox", "full": "full path"}


@dataclass(frozen=True, slots=True)
class Durations:
    """Seconds each measurement runs for."""

    parse: float
    outbox: float
    full: float
    broker: float
    sqlite: float


QUICK: Final = Durations(parse=0.1, outbox=0.15, full=0.25, broker=0.3, sqlite=0.1)
FULL: Final = Durations(parse=1.5, outbox=2.5, full=4.0, broker=3.0, sqlite=1.0)


def gateway_of(kind: str) -> str:
    """The benchmark gateway serving one kind (a gateway per kind keeps each run's sessions apart)."""
    return f"gw-bench-{kind.replace('_', '-')}"


# -- sinks ---------------------------------------------------------------------------------------------------
class OutboxSink:
    """A driver's sink that is only the outbox (``Gateway.accept`` minus the uplink), registering once per identity."""

    def __init__(self, outbox: Outbox) -> None:
        """Write into ``outbox``."""
        self.outbox = outbox
        self._announced: dict[str, DeviceInfo] = {}

    def accept(self, items: Sequence[Item]) -> None:
        """Store items durably, as the gateway does."""
        self.outbox.accept(items)

    def accept_soon(self, items: Sequence[Item]) -> _Durable:
        """Store items now (this stage measures one transaction per payload); already durable."""
        self.outbox.accept(items)
        return _Durable()


    def register(self, info: DeviceInfo) -> None:
        """Store a device's identity once, as the gateway does."""
        key = msgspec.structs.replace(info, ts=0, seq=0)
        if self._announced.get(info.device) != key:
            self._announced[info.device] = key
            self.outbox.accept([info])


class _Durable:
    """An awaitable that is already done (this stage runs without an event loop)."""

    def __await__(self) -> Generator[None, None, None]:
        yield from ()


# -- workloads: one per driver kind ----------------------------------------------------------------------------
class Workload:
    """Payloads of one driver kind and the driver's code paths over them, device after device."""

    kind: str = ""
    per_tick: int = 1  # payloads arriving in one event-loop iteration on the full path
    grouped: bool = False  # the full path: drivers that can use the gateway's group commit do

    def __init__(self) -> None:
        """Build the devices; payloads are built by the subclass."""
        self.gateway = gateway_of(self.kind)
        self.specs = [self.spec(i) for i in range(DEVICES)]
        self._order = itertools.cycle(range(DEVICES))

    def spec(self, index: int) -> DeviceSpec:
        """The ``index``-th device of this kind."""
        return DeviceSpec(id=f"{self.kind.replace('_', '-')}-{index:02d}", kind=self.kind, gateway=self.gateway,
                          bed=BEDS[index])

    def site_devices(self) -> list[DeviceSpec]:
        """Devices the site must declare for the gateway to speak for them."""
        return self.specs

    def next_device(self) -> int:
        """The device whose turn it is."""
        return next(self._order)

    def parse(self) -> int:
        """One payload through the I/O-free path; the number of readings it gave."""
        raise NotImplementedError

    def bind(self, sink: Sink) -> None:
        """Start over (fresh parsers and drivers) feeding ``sink``."""
        raise NotImplementedError

    def feed(self) -> int:
        """One payload through the driver's path into the bound sink; the number of readings it gave."""
        raise NotImplementedError

    def flush(self) -> None:
        """Hand over what the driver still holds (only drivers that gather readings hold any)."""


class BedsideWorkload(Workload):
    """WLB/1 numerics frames of 10 parameters: FrameParser, then frames_to_items."""

    kind = "bedside_serial"
    per_tick = DEVICES  # every monitor's frame of the round arrives in one select() round: one group commit
    PARAMS: Final = (("hr", protocol.PARAM_HR), ("spo2", protocol.PARAM_SPO2), ("pr", protocol.PARAM_PULSE),
                     ("pi", protocol.PARAM_PERF_INDEX), ("nibp_sys", protocol.PARAM_NIBP_SYS),
                     ("nibp_dia", protocol.PARAM_NIBP_DIA), ("nibp_mean", protocol.PARAM_NIBP_MEAN),
                     ("rr", protocol.PARAM_RESP), ("temp", protocol.PARAM_TEMP), ("etco2", protocol.PARAM_ETCO2))

    def __init__(self) -> None:
        """Encode PAYLOADS consecutive frames per monitor with the simulator's encoder."""
        super().__init__()
        start = now_ms()
        self.frames: list[itertools.cycle[bytes]] = []
        for index in range(DEVICES):
            patient = PatientModel("stable", index)
            frames = []
            for n in range(PAYLOADS):
                vitals = patient.vitals(float(n))
                frames.append(protocol.encode_numerics(start + 1000 * n, n,
                                                       [(param, vitals[name], 0) for name, param in self.PARAMS]))
            self.frames.append(itertools.cycle(frames))
        self.parsers = [FrameParser() for _ in range(DEVICES)]
        self.sink: Sink | None = None

    def next_items(self) -> list[Item]:
        """The next monitor's next frame, parsed and normalised."""
        index = self.next_device()
        frames = self.parsers[index].feed(next(self.frames[index]))
        return frames_to_items(self.specs[index], frames, now_ms())

    def parse(self) -> int:
        """Parse one frame."""
        return len(self.next_items())

    def bind(self, sink: Sink) -> None:
        """Fresh parsers."""
        self.parsers = [FrameParser() for _ in range(DEVICES)]
        self.sink = sink

    def feed(self) -> int:
        """Parse one frame and accept its readings (BedsideSerialDriver._feed minus the port)."""
        assert self.sink is not None
        items = self.next_items()
        if items:
            self.sink.accept_soon(items)  # as the driver does: the loop iteration's group commit
        return len(items)


class Hl7Workload(Workload):
    """PCD-01 ORU^R01 messages over MLLP from 20 monitors to one listener: de-frame, map, ACK."""

    kind = "hl7_pcd"
    per_tick = DEVICES  # every sender's message of the round arrives in one select() round
    _tasks: ClassVar[set[asyncio.Task[bytes]]] = set()

    def __init__(self) -> None:
        """Build PAYLOADS messages per monitor with the simulator's message builder (vendor A style)."""
        super().__init__()
        self.listener = DeviceSpec(id="hl7-bench-listener", kind=self.kind, gateway=self.gateway,
                                   connection={"listen": "127.0.0.1:0"})
        builder = MessageBuilder(STYLES["A"])
        start = now_ms()
        self.wire: list[itertools.cycle[bytes]] = []
        self.discovered: list[DeviceSpec] = []
        self.routing = load_settings(self.listener).routing(self.listener)
        for index in range(DEVICES):
            monitor = Monitor(bed=BEDS[index], eui64=f"0030E6FFFE{index:06X}", patient=PatientModel("stable", index),
                              unit=UNIT)
            messages = [builder.vitals(f"M{index}-{n}", monitor, float(n), start + 1000 * n) for n in range(PAYLOADS)]
            decoded = decode(messages[0], self.routing, start)
            if decoded.error or decoded.warnings or len(decoded.items) != 10 or len(decoded.discovered) != 1:
                raise RuntimeError(f"hl7 bench message does not map cleanly: {decoded.error} {decoded.warnings}")
            info = decoded.discovered[0]
            # Declared in the site, so the gateway announces them without logging a discovery each run.
            self.discovered.append(DeviceSpec(id=info.device, kind=self.kind, gateway=self.gateway, bed=info.bed))
            self.wire.append(itertools.cycle([wrap(m) for m in messages]))
        self.framers = [MllpFramer() for _ in range(DEVICES)]
        self.driver: Hl7PcdDriver | None = None
        self._acks = itertools.count(1)

    def site_devices(self) -> list[DeviceSpec]:
        """The listener and the monitors behind it."""
        return [self.listener, *self.discovered]

    def parse(self) -> int:
        """De-frame, map and acknowledge one message (pcd.decode and pcd.answer, as the driver calls them)."""
        index = self.next_device()
        count = 0
        for frame in self.framers[index].feed(next(self.wire[index])):
            received = now_ms()
            decoded = decode(frame.payload, self.routing, received, oversize=frame.oversize)
            answer(decoded, f"WL{received}.{next(self._acks)}", received)
            count += len(decoded.items)
        return count

    def bind(self, sink: Sink) -> None:
        """A fresh driver (its registrations start over) and fresh de-framers."""
        self.driver = Hl7PcdDriver(self.listener, sink)
        self.framers = [MllpFramer() for _ in range(DEVICES)]

    def feed(self) -> int:
        """De-frame one message and let the driver register, store and acknowledge it (Hl7PcdDriver.handle)."""
        assert self.driver is not None
        index = self.next_device()
        count = 0
        for frame in self.framers[index].feed(next(self.wire[index])):
            if self.grouped:  # as a TCP connection does: the message joins the loop iteration's group commit
                task = asyncio.ensure_future(self.driver.handle_soon(frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.driver.handle(frame)
            count += 10  # checked when the payloads were built: every message maps to 10 observations
        return count


class ModbusWorkload(Workload):
    """Register polls through a map: the words of each block as the bus returns them, then to_items."""

    def __init__(self, regmap: RegisterMap, polls: list[list[int]], identity_words: list[int] | None) -> None:
        """``polls`` are the words of the map's one block, poll after poll."""
        super().__init__()
        if len(regmap.blocks) != 1:
            raise RuntimeError(f"map {regmap.name}: the bench expects one value block")
        self.regmap = regmap
        self.block: Block = regmap.blocks[0]
        self.polls = [itertools.cycle(polls) for _ in range(DEVICES)]
        self.identity: Snapshot = {}
        if identity_words is not None:
            ident = regmap.identity_blocks[0]
            self.identity = {ident.table: dict(zip(range(ident.address, ident.address + ident.count),
                                                   identity_words, strict=True))}
        self.states = [MapState() for _ in range(DEVICES)]
        self.identified = [False] * DEVICES
        self.sink: Sink | None = None

    def spec(self, index: int) -> DeviceSpec:
        """A device on Modbus TCP."""
        return DeviceSpec(id=f"{self.kind.replace('_', '-')}-{index:02d}", kind=self.kind, gateway=self.gateway,
                          bed=BEDS[index], connection={"transport": "tcp", "host": "127.0.0.1"})

    def _items(self, index: int) -> list[Item]:
        block = self.block
        snapshot: Snapshot = {}
        # As ModbusDevice._read assembles a poll from the words of each block.
        snapshot.setdefault(block.table, {}).update(zip(range(block.address, block.address + block.count),
                                                        next(self.polls[index]), strict=True))
        return to_items(self.specs[index], self.regmap, snapshot, self.states[index], now_ms())

    def parse(self) -> int:
        """Decode one poll."""
        return len(self._items(self.next_device()))

    def bind(self, sink: Sink) -> None:
        """Fresh map states; identities are read again on first contact."""
        self.states = [MapState() for _ in range(DEVICES)]
        self.identified = [not self.identity] * DEVICES
        self.sink = sink

    def feed(self) -> int:
        """Decode one poll and accept its items; announce the device on its first poll (ModbusDevice)."""
        assert self.sink is not None
        index = self.next_device()
        if not self.identified[index]:
            self.sink.register(identity(self.specs[index], self.regmap, self.identity, self.kind, now_ms()))
            self.identified[index] = True
        items = self._items(index)
        if items:
            self.sink.accept(items)
        return len(items)


def _float32_cdab(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [low, high]


def _ascii_words(text: str, words: int) -> list[int]:
    data = text.encode("ascii").ljust(2 * words, b"\0")
    return list(struct.unpack(f">{words}H", data))


class PumpWorkload(ModbusWorkload):
    """A PV-300 infusing at 125 mL/h, the volume infused growing poll after poll (map.md)."""

    kind = "modbus_pump"

    def __init__(self) -> None:
        """Rate, VTBI, volume infused (float32 CDAB), state infusing, no alarm, battery 87 %."""
        polls = [[1250, 0, 5000, 0, *_float32_cdab(42.5 + 0.035 * n), 0x11, 0, 87] for n in range(PAYLOADS)]
        ident = _ascii_words("PV-300", 8) + _ascii_words("PV3-000123", 8) + _ascii_words("2.4.1", 4)
        super().__init__(pump_map(), polls, ident)


class ScaleWorkload(ModbusWorkload):
    """A waste scale (modbus_map, shipped map waste_scale): gross and net weight, 3 decimals, stable, tare."""

    kind = "modbus_map"

    def __init__(self) -> None:
        """Weights that change a little from poll to poll."""
        polls = [[0, 12345 + 7 * n, 0, 11145 + 7 * n, 3, 9] for n in range(PAYLOADS)]
        super().__init__(resolve_map("waste_scale"), polls, None)

    def spec(self, index: int) -> DeviceSpec:
        """A scale on Modbus TCP, no bed."""
        return DeviceSpec(id=f"scale-{index:02d}", kind=self.kind, gateway=self.gateway,
                          connection={"transport": "tcp", "host": "127.0.0.1", "map": "waste_scale"})


class RfidWorkload(Workload):
    """Fixed UHF readers publishing reports of 20 tags (rfid_reader format)."""

    kind = "rfid_mqtt"

    def __init__(self) -> None:
        """PAYLOADS reports per reader, each of 20 tags with peak RSSI and first/last seen times."""
        super().__init__()
        self.settings = [rfid_parser.load_settings(spec) for spec in self.specs]
        start_us = now_ms() * 1000
        self.payloads: list[itertools.cycle[bytes]] = []
        for index in range(DEVICES):
            reports = []
            for n in range(PAYLOADS):
                seen = start_us + n * 1_000_000
                reads = [{"epc": f"E2801160600002{index:02X}{n:02X}{tag:06X}", "antennaPort": 1 + tag % 4,
                          "peakRssi": -40 - (tag * 7 + n) % 35, "firstSeenTimestamp": seen - 400_000,
                          "lastSeenTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seen // 1_000_000))
                          + f".{(seen // 1000) % 1000:03d}Z"} for tag in range(TAGS_PER_REPORT)]
                reports.append(json.dumps({"reader_name": f"Speedway-{index:02d}",
                                           "mac_address": f"00:16:25:12:34:{index:02X}",
                                           "tag_reads": [*reads, {"isHeartBeat": True}]}).encode())
                parsed = rfid_parser.parse(reports[-1], self.specs[index], self.settings[index], now_ms())
                if len(parsed) != TAGS_PER_REPORT:
                    raise RuntimeError(f"rfid bench report gives {len(parsed)} reads, not {TAGS_PER_REPORT}")
            self.payloads.append(itertools.cycle(reports))
        self.drivers: list[RfidMqttDriver] = []

    def spec(self, index: int) -> DeviceSpec:
        """A reader in a corridor, no bed."""
        return DeviceSpec(id=f"rdr-{index:02d}", kind=self.kind, gateway=self.gateway,
                          connection={"format": "rfid_reader", "broker": "mqtt://127.0.0.1:1883",
                                      "topic": f"site/rfid/rdr-{index:02d}", "reader_id": f"Speedway-{index:02d}"})

    def parse(self) -> int:
        """Decode one report."""
        index = self.next_device()
        return len(rfid_parser.parse(next(self.payloads[index]), self.specs[index], self.settings[index], now_ms()))

    def bind(self, sink: Sink) -> None:
        """Fresh drivers (nothing connects: only their feeds' I/O-free ``offer`` is used)."""
        self.drivers = [RfidMqttDriver(spec, sink) for spec in self.specs]

    def feed(self) -> int:
        """Offer one report to the driver's feed, which accepts its buffer once it holds batch_max reads."""
        index = self.next_device()
        self.drivers[index].feed.offer(next(self.payloads[index]), now_ms())
        return TAGS_PER_REPORT  # checked when the payloads were built

    def flush(self) -> None:
        """Hand over every reader's partial batch."""
        for driver in self.drivers:
            driver.feed.flush()


class WasteWorkload(Workload):
    """Ward scan points publishing one bag scan each."""

    kind = "waste_mqtt"

    def __init__(self) -> None:
        """PAYLOADS scans per scan point."""
        super().__init__()
        self.settings = [waste_parser.load_settings(spec) for spec in self.specs]
        self.payloads: list[itertools.cycle[bytes]] = []
        for index in range(DEVICES):
            scans = [json.dumps({"scanner": self.specs[index].id, "point": "ward",
                                 "bag": f"MW-{UNIT}-20260101-{index:02d}{n:03d}", "category": "infectious",
                                 "weight_kg": round(1.5 + 0.05 * n, 2), "handler": "N-1042", "department": UNIT,
                                 "time": now_ms()}).encode() for n in range(PAYLOADS)]
            self.payloads.append(itertools.cycle(scans))
        self.drivers: list[WasteMqttDriver] = []

    def spec(self, index: int) -> DeviceSpec:
        """A ward scan point, no bed."""
        return DeviceSpec(id=f"wst-{index:02d}", kind=self.kind, gateway=self.gateway,
                          connection={"point": "ward", "unit": UNIT, "broker": "mqtt://127.0.0.1:1883",
                                      "topic": f"site/waste/wst-{index:02d}"})

    def parse(self) -> int:
        """Decode and validate one scan."""
        index = self.next_device()
        waste_parser.parse(next(self.payloads[index]), self.specs[index], self.settings[index], now_ms())
        return 1

    def bind(self, sink: Sink) -> None:
        """Fresh drivers (only their feeds' I/O-free ``offer`` is used)."""
        self.drivers = [WasteMqttDriver(spec, sink) for spec in self.specs]

    def feed(self) -> int:
        """Offer one scan; the driver accepts each scan at once (batch_max 1)."""
        index = self.next_device()
        self.drivers[index].feed.offer(next(self.payloads[index]), now_ms())
        return 1


WORKLOADS: Final[dict[str, Callable[[], Workload]]] = {
    "bedside_serial": BedsideWorkload, "hl7_pcd": Hl7Workload, "modbus_pump": PumpWorkload,
    "modbus_map": ScaleWorkload, "rfid_mqtt": RfidWorkload, "waste_mqtt": WasteWorkload,
}


def bench_site(workloads: Sequence[Workload]) -> Site:
    """A site with one unit of DEVICES beds and a gateway per workload serving its devices."""
    return Site(id=SITE, name="benchmark", units=[Unit(id=UNIT, name="bench ward", beds=list(BEDS))],
                gateways=[GatewaySpec(id=w.gateway, unit=UNIT) for w in workloads],
                devices=[spec for w in workloads for spec in w.site_devices()])


# -- measurements ------------------------------------------------------------------------------------------------
def _warm(workload: Workload) -> None:
    """A round over every device: first contact (registrations, caches) stays out of the timing."""
    for _ in range(DEVICES):
        workload.feed()
    workload.flush()


def measure_parse(workload: Workload, seconds: float) -> Rate:
    """Readings/s of the I/O-free path alone."""
    for _ in range(DEVICES):
        workload.parse()
    count, clock = 0, Clock()
    while clock.elapsed() < seconds:
        count += workload.parse()
    return clock.rate(count)


def measure_outbox(workload: Workload, seconds: float) -> Rate:
    """Readings/s of the driver's path into a real outbox in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        outbox = Outbox(Path(tmp) / "outbox.db", max_rows=NO_SHEDDING)
        try:
            workload.bind(OutboxSink(outbox))
            _warm(workload)
            count, clock = 0, Clock()
            while clock.elapsed() < seconds:
                for _ in range(workload.per_tick):
                    count += workload.feed()
            workload.flush()
            return clock.rate(count)
        finally:
            outbox.close()


async def _until(done: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench gateway: gave up after {limit_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.002)


async def measure_full(workload: Workload, site: Site, address: BrokerAddress, seconds: float) -> Rate:
    """Readings/s from payload to released outbox row through the real gateway, broker and a commit responder."""
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        gateway = Gateway(site, workload.gateway, Path(tmp) / "outbox.db", address,
                          GatewaySettings(outbox_max_rows=NO_SHEDDING), drivers=False)
        task = asyncio.create_task(gateway.run(), name=f"bench {workload.gateway}")
        try:
            await _until(lambda: gateway.uplink_up, 15, f"gateway {workload.gateway} to connect")

            def drained() -> bool:
                return gateway.released >= gateway.accepted

            workload.bind(gateway)
            workload.grouped = True
            _warm(workload)
            await _until(drained, DRAIN_TIMEOUT_S, "the warm-up round to be committed")
            count, clock = 0, Clock()
            while clock.elapsed() < seconds:
                for _ in range(workload.per_tick):
                    count += workload.feed()
                # Each payload is one event-loop callback in a driver; yielding lets the uplink and commits run.
                await asyncio.sleep(0)
                if gateway.outbox.depth() > OUTBOX_WINDOW:
                    await _until(lambda: gateway.outbox.depth() <= OUTBOX_WINDOW // 2, DRAIN_TIMEOUT_S,
                                 "the outbox to drain")
            workload.flush()
            await _until(drained, DRAIN_TIMEOUT_S, "every reading to be published and committed")
            rate = clock.rate(count)
            if gateway.outbox.shed_total or gateway.outbox.depth():
                raise RuntimeError(f"bench gateway: outbox shed {gateway.outbox.shed_total}, "
                                   f"holds {gateway.outbox.depth()}")
            return rate
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def measure_sqlite(rows: list[tuple[Any, ...]], seconds: float) -> Rate:
    """Rows/s of plain SQLite inserts (WAL file, no secondary index, 1,000 rows per transaction)."""
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        db = sqlite3.connect(Path(tmp) / "plain.db", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE plain (lane INTEGER, shed_rank INTEGER, device TEXT, stream TEXT, "
                       "first_seq INTEGER, last_seq INTEGER, count INTEGER, payload BLOB)")
            count, clock = 0, Clock()
            while clock.elapsed() < seconds:
                db.execute("BEGIN")
                db.executemany("INSERT INTO plain VALUES (?,?,?,?,?,?,?,?)", rows)
                db.execute("COMMIT")
                count += len(rows)
            return clock.rate(count)
        finally:
            db.close()


def _message_and_rows(workload: BedsideWorkload) -> tuple[bytes, list[tuple[Any, ...]]]:
    """A 100-observation batch as the uplink would send it, and 1,000 outbox-shaped rows of one reading each."""
    items: list[Item] = []
    seq = itertools.count(1)
    while len(items) < 1000:
        items += [msgspec.structs.replace(i, seq=next(seq)) for i in workload.next_items()]
    message = encode(Batch(gateway=workload.gateway, sent=now_ms(), items=items[:OBS_PER_MESSAGE]))
    encoder = msgspec.json.Encoder()
    rows = [(1, 1, i.device, i.stream, i.seq, i.seq, 1, encoder.encode(i)) for i in items[:1000]]
    return message, rows


def _paho(client_id: str) -> mqtt.Client:
    """A paho client of the benchmark's own, with 100 messages in flight as the services' clients have."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.max_inflight_messages_set(100)
    return client


def _no_delay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off: these clients are test equipment, and a small commit or PUBACK of theirs
    held back behind a delayed ACK would show up as gateway time."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def measure_broker(address: BrokerAddress, message: bytes, seconds: float) -> Rate:
    """Messages relayed per second at QoS 1 from a paho publisher here to the counting subscriber (helper process).

    Timed from the first publish until the subscriber reports it counted the end mark (published after
    the last message on the same topic, so it arrives last).
    """
    ready, done = threading.Event(), threading.Event()
    acked = threading.Semaphore(PUBLISH_WINDOW)  # bounds what paho queues in memory
    counted: list[int] = []
    client = _paho("wardlink-bench-publisher")

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        _no_delay(c)
        c.subscribe(DONE_TOPIC, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: ready.set()
    client.on_publish = lambda _c, _u, _m, _rc, _p: acked.release()

    def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        counted.append(int(msg.payload))
        done.set()

    client.on_message = on_message
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        if not ready.wait(15):
            raise RuntimeError("bench gateway: the baseline publisher could not subscribe")
        sent, clock = 0, Clock()
        while clock.elapsed() < seconds:
            acked.acquire()
            client.publish(RAW_TOPIC, message, qos=1)
            sent += 1
        client.publish(RAW_TOPIC, END_MARK, qos=1)
        if not done.wait(DRAIN_TIMEOUT_S):
            raise RuntimeError("bench gateway: the baseline subscriber did not report")
        rate = clock.rate(counted[0])
    finally:
        client.disconnect()
        client.loop_stop()
    if counted[0] != sent:
        raise RuntimeError(f"bench gateway: {sent} baseline messages published, {counted[0]} arrived")
    return rate


# -- processes of the benchmark's own: broker and commit responder ---------------------------------------------
def _helper(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m wardlink.bench_gateway ARGS``; wait for its ready line and return what follows "ready"."""
    proc = subprocess.Popen([sys.executable, "-m", "wardlink.bench_gateway", *args],  # noqa: S603 - our own module
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if readable else b""
    if not line.startswith(b"ready"):
        stop(proc)
        raise RuntimeError(f"bench gateway: helper {args[0]} did not start")
    return proc, line[len(b"ready"):].strip().decode()


def mosquitto_binary() -> str | None:
    """The installed Mosquitto, or None."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return binary if Path(binary).exists() else None


@contextlib.contextmanager
def broker() -> Iterator[tuple[BrokerAddress, str]]:
    """A Mosquitto of the benchmark's own on a free loopback port, else the embedded amqtt broker in a process."""
    binary = mosquitto_binary()
    if binary is None:
        log.warning("mosquitto is not installed: measuring against the embedded amqtt broker, which is far slower")
        proc, reported = _helper("amqtt")
        try:
            yield BrokerAddress("127.0.0.1", int(reported)), "amqtt (embedded, own process)"
        finally:
            stop(proc)
        return
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        # The fault tests' settings (no persistence, deep queues, 100 messages in flight per client), and no
        # Nagle delay: with Mosquitto's default the gateway's one publish in flight waits up to 40 ms for each
        # PUBACK behind a delayed ACK, and the figures would measure that instead of the gateway.
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"max_queued_messages 100000\nmax_inflight_messages 100\nset_tcp_nodelay {NODELAY}\n",
                        encoding="utf-8")
        proc = subprocess.Popen([binary, "-c", str(conf)],  # noqa: S603 - the installed broker, our config
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"bench gateway: mosquitto did not start on port {port}") from None
                    time.sleep(0.05)
            yield BrokerAddress("127.0.0.1", port), f"mosquitto (own process, set_tcp_nodelay {NODELAY})"
        finally:
            proc.kill()
            proc.wait(5)


# -- the benchmark --------------------------------------------------------------------------------------------
def _put(figures: dict[str, float], name: str, rate: Rate, baseline: float) -> None:
    figures[f"{name}_per_s"] = rate.per_s
    figures[f"{name}_per_cpu_s"] = rate.per_cpu_s
    figures[f"{name}_vs_baseline"] = rate.per_s / baseline


@contextlib.contextmanager
def _quiet_gateway() -> Iterator[None]:
    """Keep the gateway's per-device INFO lines (discoveries, connects of each run) out of the bench output."""
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)


def run(quick: bool = False) -> dict[str, float]:
    """Every figure of ``wardlink bench gateway`` (``quick``: a few seconds in all, for tests)."""
    with _quiet_gateway():
        return _run(QUICK if quick else FULL)


def _run(durations: Durations) -> dict[str, float]:
    workloads = [factory() for factory in WORKLOADS.values()]
    site = bench_site(workloads)
    message, rows = _message_and_rows(BedsideWorkload())
    figures: dict[str, float] = {}
    with broker() as (address, broker_name):
        responder, _ = _helper("responder", address.host, str(address.port), SITE)
        try:
            log.info("bench gateway: baseline, %s relaying %d-observation batches", broker_name, OBS_PER_MESSAGE)
            messages = measure_broker(address, message, durations.broker)
            observations = Rate(messages.count * OBS_PER_MESSAGE, messages.wall_s, messages.cpu_s)
            baseline = observations.per_s
            figures["baseline_broker_msgs_per_s"] = messages.per_s
            figures["baseline_broker_obs_per_s"] = observations.per_s
            figures["baseline_broker_obs_per_cpu_s"] = observations.per_cpu_s
            sqlite_rate = measure_sqlite(rows, durations.sqlite)
            figures["baseline_sqlite_rows_per_s"] = sqlite_rate.per_s
            figures["baseline_sqlite_rows_per_cpu_s"] = sqlite_rate.per_cpu_s
            if broker_name.startswith("amqtt"):
                figures["broker_embedded_amqtt"] = 1.0
            for workload in workloads:
                log.info("bench gateway: %s (%s)", workload.kind, KINDS[workload.kind])
                _put(figures, f"{workload.kind}_parse", measure_parse(workload, durations.parse), baseline)
                _put(figures, f"{workload.kind}_outbox", measure_outbox(workload, durations.outbox), baseline)
                full = asyncio.run(measure_full(workload, site, address, durations.full))
                _put(figures, f"{workload.kind}_full", full, baseline)
        finally:
            stop(responder)
    return figures


def table(figures: dict[str, float]) -> str:
    """Figure, readings/s, readings per CPU-second and the ratio to the broker baseline, one row each."""
    broker_name = ("embedded amqtt (mosquitto not installed)" if "broker_embedded_amqtt" in figures
                   else f"mosquitto, set_tcp_nodelay {NODELAY}")
    head = f"{'figure':<52}{'readings/s':>14}{'per CPU-s':>14}{'ratio':>9}"
    lines = ["wardlink bench gateway: readings through parse, outbox and uplink, beside the raw broker",
             f"broker: {broker_name}, own process; per CPU-s counts this process only (per core)",
             "", head, "-" * len(head)]
    msgs = figures["baseline_broker_msgs_per_s"]
    lines.append(f"{f'baseline: broker, QoS 1, {OBS_PER_MESSAGE} obs/msg ({msgs:,.0f} msg/s)':<52}"
                 f"{figures['baseline_broker_obs_per_s']:>14,.0f}{figures['baseline_broker_obs_per_cpu_s']:>14,.0f}"
                 f"{1.0:>9.3f}")
    lines.append(f"{'baseline: SQLite insert, no index (rows)':<52}{figures['baseline_sqlite_rows_per_s']:>14,.0f}"
                 f"{figures['baseline_sqlite_rows_per_cpu_s']:>14,.0f}{'':>9}")
    for kind, what in KINDS.items():
        lines.append(f"{kind} ({what})")
        for stage, label in STAGES.items():
            key = f"{kind}_{stage}"
            if f"{key}_per_s" in figures:
                lines.append(f"{'  ' + label:<52}{figures[f'{key}_per_s']:>14,.0f}"
                             f"{figures[f'{key}_per_cpu_s']:>14,.0f}{figures[f'{key}_vs_baseline']:>9.3f}")
    return "\n".join(lines)


# -- helper processes -------------------------------------------------------------------------------------------
class _Key(msgspec.Struct):
    device: str
    stream: str
    seq: int


class _Keys(msgspec.Struct):
    gateway: str
    items: list[_Key]


def _ready(out: IO[str], detail: str = "") -> None:
    out.write(f"ready {detail}\n")
    out.flush()


def responder_main(host: str, port: int, site: str) -> None:
    """Count baseline messages (report the count on the end mark) and answer gateway batches with commits."""
    decoder = msgspec.json.Decoder(_Keys)
    client = _paho("wardlink-bench-responder")
    counted = 0

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        _no_delay(c)
        c.subscribe([(RAW_TOPIC, 1), (topics.gateway_filter(site, "data"), 1),
                     (topics.gateway_filter(site, "alarm"), 1)])

    def on_message(c: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal counted
        if msg.topic == RAW_TOPIC:
            if msg.payload == END_MARK:
                c.publish(DONE_TOPIC, str(counted).encode(), qos=1)
                counted = 0
            else:
                counted += 1
            return
        batch = decoder.decode(msg.payload)
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        for key in batch.items:
            seqs[(key.device, key.stream)].append(key.seq)
        commit = Commit(gateway=batch.gateway, ts=now_ms(), ranges=ranges(seqs))
        c.publish(topics.gateway_topic(site, batch.gateway, "commit"), encode(commit), qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: _ready(sys.stdout)
    client.on_message = on_message
    client.connect(host, port)
    client.loop_forever()


async def _amqtt_main() -> None:
    from wardlink.broker import EmbeddedBroker

    embedded = EmbeddedBroker(port=free_port())
    address = await embedded.start()
    _ready(sys.stdout, str(address.port))
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    """Entry of the helper processes: ``responder HOST PORT SITE`` or ``amqtt``."""
    logging.basicConfig(level=logging.WARNING)
    if argv[0] == "responder":
        responder_main(argv[1], int(argv[2]), argv[3])
    elif argv[0] == "amqtt":
        asyncio.run(_amqtt_main())
    else:
        raise SystemExit(f"unknown helper {argv[0]!r}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
