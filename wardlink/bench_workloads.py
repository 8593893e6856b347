"""The benchmark workloads of ``wardlink bench gateway``: one realistic payload per driver kind and its code paths."""


from __future__ import annotations

import asyncio
import itertools
import json
import logging
import struct
import time
from collections.abc import Callable, Generator, Sequence
from typing import Final

import msgspec

from devices.clock import now_ms
from devices.contract import DeviceInfo, Item
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
from simulators.bedside import protocol
from simulators.bedside.patient import PatientModel
from simulators.hl7.messages import STYLES, MessageBuilder, Monitor

log = logging.getLogger(__name__)

SITE: Final = "bench"
UNIT: Final = "ICU"
DEVICES: Final = 20  # devices of each kind on its gateway, fed round robin
PAYLOADS: Final = 16  # distinct payloads per device, cycled, so values and sequence of frames change
TAGS_PER_REPORT: Final = 20
BEDS: Final = [f"{UNIT}-{i:02d}" for i in range(DEVICES)]

KINDS: Final[dict[str, str]] = {
    "bedside_serial": "monitor frame, 10 parameters",
    "hl7_pcd": "PCD-01 message, 10 NM rows (MLLP, ACK built)",
    "modbus_pump": "pump poll, 5 values",
    "modbus_map": "waste scale poll, 4 values",
    "rfid_mqtt": "RFID report, 20 tags (accepted 500 at a time)",
    "waste_mqtt": "waste bag scan, 1 event",
}


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
        self.pending: list[asyncio.Future[None] | None] = [None] * DEVICES  # each connection's ACKs in waiting
        self.acked = 0  # ACK writes (one per read)

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
        self.pending = [None] * DEVICES
        self.acked = 0

    def feed(self) -> int:
        """De-frame one message and let the driver register, store and acknowledge it.

        Grouped (the full path), as one TCP connection's read does (Hl7PcdDriver.receive): the message joins
        the loop iteration's group commit and its ACK is built and written once that is durable; the write
        goes nowhere. Otherwise as the serial line does (Hl7PcdDriver.handle): one transaction per message.
        """
        assert self.driver is not None
        index = self.next_device()
        frames = self.framers[index].feed(next(self.wire[index]))
        if self.grouped:
            self.pending[index] = self.driver.receive(frames, self._sent, self.pending[index])
        else:
            for frame in frames:
                self.driver.handle(frame)
        return 10 * len(frames)  # checked when the payloads were built: every message maps to 10 observations

    def _sent(self, acks: bytes) -> None:
        self.acked += 1


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
