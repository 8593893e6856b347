"""A scenario: every simulated device of a hospital, each on its own wire protocol, from one TOML file.

``start`` brings the twins up (ptys, Modbus servers, MQTT publishers, an HL7 sender) and says how
to reach each one, as ``connection`` overrides keyed by device id, which the composition root merges
into the site. Simulators never import the gateway: they only know the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec

from devices.bus import BrokerAddress
from simulators.bedside.monitor import SimulatedMonitor
from simulators.bedside.patient import PatientModel
from simulators.hl7.messages import Monitor
from simulators.hl7.sender import Hl7Sender, TcpWire
from simulators.modbus.devices import FridgeLogger, O2Detector, WasteScale, WasteStoreLogger
from simulators.modbus.pump import PumpModel
from simulators.modbus.server import ModbusSimulator, UnitModel
from simulators.mqtt_devices.rfid import BleGatewaySim, RfidReaderSim, Ward
from simulators.mqtt_devices.waste import ScanPointSim, WasteRound

log = logging.getLogger(__name__)


class ScenarioError(ValueError):
    """The scenario file is invalid; the message names the entry and field."""


class BedsideSim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bedside monitor on a pty and its patient."""

    device: str
    profile: str = "stable"
    seed: int = 0
    onset_s: float = 30.0
    period_s: float = 60.0
    interval_s: float = 1.0
    firmware: str = "1.4.2"
    ident_interval_s: float = 30.0  # IDENT (model, serial number, firmware) on start and this often (WLB/1: 30 s)


class Hl7Bed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A monitor behind a vendor HL7 gateway: its bed, equipment id, patient and firmware revision."""

    bed: str
    eui64: str
    unit: str
    profile: str = "stable"
    seed: int = 0
    firmware: str = ""  # "": the monitor reports none


class Hl7Sim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A vendor gateway sending IHE PCD-01 (and PCD-04 alarms) to an hl7_pcd listener."""

    listener: str  # the device id of the listener in the site
    monitors: list[Hl7Bed]
    style: Literal["A", "B"] = "A"
    interval_s: float = 5.0
    alarms: bool = True


class ModbusUnit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One unit on a Modbus line."""

    device: str
    model: Literal["pump", "waste_scale", "fridge", "waste_store", "o2"]
    unit: int


class ModbusLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Modbus TCP server holding some units (one line, one port)."""

    units: list[ModbusUnit]


class Reader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An RFID reader or BLE gateway in a room of the ward."""

    device: str
    room: int
    tech: Literal["rfid", "ble"]
    reader_id: str  # RFID: the reader name; BLE: the gateway MAC
    mac: str = "001625000000"


class RfidSim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Tagged assets moving along a corridor of rooms, and the readers that hear them."""

    readers: list[Reader]
    rooms: int = 6
    rfid_tags: int = 12
    ble_tags: int = 6
    move_every_s: float = 10.0
    interval_s: float = 2.0
    seed: int = 0


class ScanPoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A waste scan point (scanner and scale) at one handover point."""

    device: str
    point: Literal["ward", "collector", "storage", "disposer"]


class WasteSim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bags of one department travelling through the four scan points."""

    department: str
    points: list[ScanPoint]
    bags: int = 1000
    leg_s: float = 20.0
    between_s: float = 30.0
    seed: int = 0


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every simulated device of a run."""

    name: str = ""
    bedside: list[BedsideSim] = []
    hl7: list[Hl7Sim] = []
    modbus: list[ModbusLine] = []
    rfid: list[RfidSim] = []
    waste: list[WasteSim] = []

    def devices(self) -> set[str]:
        """Device ids the scenario simulates (those of the site it must match)."""
        ids = {b.device for b in self.bedside} | {h.listener for h in self.hl7}
        ids |= {u.device for line in self.modbus for u in line.units}
        ids |= {r.device for sim in self.rfid for r in sim.readers}
        ids |= {p.device for sim in self.waste for p in sim.points}
        return ids


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name (``hospital``) or a TOML file by path."""
    path = Path(name_or_path)
    try:
        if path.suffix == ".toml" or path.exists():
            text = path.read_text(encoding="utf-8")
        else:
            text = resources.files("simulators").joinpath("scenarios", f"{name_or_path}.toml").read_text("utf-8")
        return msgspec.convert(tomllib.loads(text), Scenario)
    # Not UTF-8 is a UnicodeDecodeError; tomllib recurses once per level of nested arrays and tables.
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError, msgspec.ValidationError) as exc:
        raise ScenarioError(f"scenario {name_or_path}: {exc}") from exc


_MODELS: dict[str, type] = {"pump": PumpModel, "waste_scale": WasteScale, "fridge": FridgeLogger,
                            "waste_store": WasteStoreLogger, "o2": O2Detector}


@dataclass
class Running:
    """A started scenario: how to reach each twin, and the twins themselves (for fault injection)."""

    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    monitors: dict[str, SimulatedMonitor] = field(default_factory=dict)
    modbus: list[ModbusSimulator] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)  # (tag, "rfid" | "ble") of the simulated assets

    async def stop(self) -> None:
        """Stop every twin (once; later calls do nothing)."""
        tasks, self.tasks = self.tasks, []
        modbus, self.modbus = self.modbus, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for simulator in modbus:
            await simulator.stop()
        for monitor in self.monitors.values():
            monitor.close()


async def start(scenario: Scenario, broker: BrokerAddress, hl7_targets: dict[str, tuple[str, int]]) -> Running:
    """Start every twin; ``hl7_targets`` maps a listener's device id to where it listens."""
    running = Running()
    try:
        for sim in scenario.bedside:
            patient = PatientModel(sim.profile, seed=sim.seed, onset_s=sim.onset_s, period_s=sim.period_s)
            monitor = SimulatedMonitor(serial_number=f"SIM-{sim.device}", model="WLB-100", firmware=sim.firmware,
                                       patient=patient, interval_s=sim.interval_s,
                                       ident_interval_s=sim.ident_interval_s)
            running.monitors[sim.device] = monitor
            running.connections[sim.device] = {"port": monitor.port}
            running.tasks.append(asyncio.create_task(monitor.run(), name=f"sim {sim.device}"))
        for line in scenario.modbus:
            units: list[UnitModel] = [
                PumpModel(unit=u.unit, serial_number=f"PV3-{u.device.upper()}") if u.model == "pump"
                else _MODELS[u.model](unit=u.unit) for u in line.units]
            server = ModbusSimulator(units, transport="tcp")
            await server.start()
            running.modbus.append(server)
            for u in line.units:
                running.connections[u.device] = {"transport": "tcp", "host": server.host, "port": server.port,
                                                 "unit": u.unit}
        for rfid in scenario.rfid:
            ward = Ward.with_assets(rfid.rooms, rfid.rfid_tags, rfid.ble_tags, seed=rfid.seed)
            running.tags += [(asset.tag, asset.tech) for asset in ward.assets]
            running.tasks.append(asyncio.create_task(ward.run(rfid.move_every_s), name="sim ward assets"))
            for reader in rfid.readers:
                topic = f"edge/readers/{reader.device}"
                publisher: RfidReaderSim | BleGatewaySim
                if reader.tech == "rfid":
                    publisher = RfidReaderSim(ward, reader.room, reader.reader_id, reader.mac, host=broker.host,
                                              port=broker.port, topic=topic)
                else:
                    publisher = BleGatewaySim(ward, reader.room, reader.reader_id, host=broker.host,
                                              port=broker.port, topic=topic)
                running.connections[reader.device] = {
                    "broker": broker.url, "topic": topic, "reader_id": reader.reader_id,
                    "format": "rfid_reader" if reader.tech == "rfid" else "ble_gateway"}
                running.tasks.append(asyncio.create_task(publisher.run(rfid.interval_s), name=f"sim {reader.device}"))
        for waste in scenario.waste:
            points = []
            for point in waste.points:
                topic = f"edge/waste/{point.device}"
                points.append(ScanPointSim(point.device, point.point, host=broker.host, port=broker.port,
                                           topic=topic, seed=waste.seed))
                running.connections[point.device] = {"broker": broker.url, "topic": topic, "point": point.point,
                                                     "scanner_id": point.device, "unit": waste.department}
            running.tasks += [asyncio.create_task(p.run(), name=f"sim {p.scanner_id}") for p in points]
            round_ = WasteRound(points, department=waste.department, seed=waste.seed)
            running.tasks.append(asyncio.create_task(
                round_.run(waste.bags, leg_s=waste.leg_s, between_s=waste.between_s), name="sim waste round"))
        for hl7 in scenario.hl7:
            if hl7.listener not in hl7_targets:
                raise ScenarioError(f"hl7: listener {hl7.listener!r} is not an hl7_pcd listener of the site")
            monitors = [Monitor(m.bed, m.eui64, PatientModel(m.profile, seed=m.seed), unit=m.unit, firmware=m.firmware)
                        for m in hl7.monitors]
            running.tasks.append(asyncio.create_task(_hl7_sender(hl7, monitors, hl7_targets[hl7.listener]),
                                                     name=f"sim hl7 -> {hl7.listener}"))
    except BaseException:
        await running.stop()
        raise
    log.info("scenario %s: %d simulated devices", scenario.name or "(unnamed)", len(running.connections))
    return running


async def _hl7_sender(sim: Hl7Sim, monitors: list[Monitor], target: tuple[str, int]) -> None:
    """Connect to the listener (retrying until it is up) and send until cancelled; reconnect when dropped."""
    while True:
        try:
            wire = await TcpWire.connect(*target)
        except OSError:
            await asyncio.sleep(1.0)
            continue
        sender = Hl7Sender(wire, monitors, sim.style, interval_s=sim.interval_s, alarms=sim.alarms)
        try:
            await sender.run()
        except (ConnectionError, OSError) as exc:
            log.info("simulated HL7 sender: connection to %s:%d lost (%s)", *target, exc)
        finally:
            with contextlib.suppress(OSError):
                wire.close()
        await asyncio.sleep(1.0)
