"""Simulated units on one Modbus line: a pymodbus server on TCP, or on a pty RS-485 line (RTU), with fault hooks.

Every read refreshes the unit's registers from its model first, so values evolve with time. Faults per
unit, for tests: :meth:`ModbusSimulator.silence` (the unit never answers: a timeout),
:meth:`~ModbusSimulator.raise_exception` (it answers with a Modbus exception code) and
:meth:`~ModbusSimulator.answer_late` (its replies come ``delay_s`` late). A unit answers its requests in
order, as a real one does: a reply due after a late one waits for it. Requests to unit ids that nobody
has are not answered, as on a real RS-485 line.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.modbus.line import PtyLine
from simulators.modbus.registers import Image

log = logging.getLogger(__name__)

TABLE_OF_FUNCTION = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 6: "holding", 16: "holding"}
BIT_TABLES = ("coil", "discrete")


class UnitModel(Protocol):
    """A simulated device: its unit id and its register image at a monotonic time."""

    unit: int

    def registers(self, now: float) -> Image:
        """Table -> address -> word (bits 0/1)."""
        ...


@dataclass
class Fault:
    """What a unit does wrong right now."""

    silent: bool = False
    exception: int | None = None
    late_s: float = 0.0
    late_replies: int | None = None  # how many more replies come late (None: all of them)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _runs(addresses: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous (start, count) runs of sorted addresses."""
    runs: list[tuple[int, int]] = []
    for address in sorted(addresses):
        if runs and address == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((address, 1))
    return runs


class _Handler(ServerRequestHandler):
    """One connection (TCP) or the line (RTU): applies the simulator's faults to replies."""

    simulator: ModbusSimulator

    async def handle_request(self) -> None:
        """Ignore unit ids nobody has; count the rest and let pymodbus answer."""
        pdu = self.last_pdu
        if pdu is None or pdu.dev_id not in self.simulator.units:
            return
        self.simulator.requests[pdu.dev_id] += 1
        await super().handle_request()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped

    def server_send(self, pdu: ModbusPDU | None, addr: Any) -> None:
        """Send a reply now, later, or never, as the unit's fault says."""
        if pdu is None:
            return
        delay = self.simulator.reply_delay(pdu.dev_id)
        if delay is None:
            return
        if delay <= 0:
            self._send(pdu, addr)
        else:
            self.loop.call_later(delay, self._send, pdu, addr)

    def _send(self, pdu: ModbusPDU, addr: Any) -> None:
        if self.transport is None:  # the connection closed while the reply waited
            return
        self.simulator.replies[pdu.dev_id] += 1
        super().server_send(pdu, addr)  # type: ignore[no-untyped-call]


class _TcpServer(ModbusTcpServer):
    simulator: ModbusSimulator

    def callback_new_connection(self) -> _Handler:
        handler = _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]
        handler.simulator = self.simulator
        return handler


class _RtuServer(ModbusSerialServer):
    simulator: ModbusSimulator

    def callback_new_connection(self) -> _Handler:
        handler = _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]
        handler.simulator = self.simulator
        return handler


class ModbusSimulator:
    """Units on one line, served by pymodbus over TCP (``port``) or RTU on a pty line (``serial_port``)."""

    def __init__(self, units: Sequence[UnitModel], *, transport: Literal["tcp", "rtu"] = "tcp",
                 host: str = "127.0.0.1", port: int = 0, baudrate: int = 19200) -> None:
        """Describe the line; :meth:`start` (or ``async with``) serves it. ``port=0`` picks a free TCP port."""
        self.units: dict[int, UnitModel] = {}
        for model in units:
            if model.unit in self.units or not 1 <= model.unit <= 247:
                raise ValueError(f"unit id {model.unit} is a duplicate or not 1..247")
            self.units[model.unit] = model
        self.transport = transport
        self.host = host
        self.port = port or free_tcp_port(host)
        self.baudrate = baudrate
        self.faults: dict[int, Fault] = {unit: Fault() for unit in self.units}
        self.requests: Counter[int] = Counter()
        self.replies: Counter[int] = Counter()
        self.line: PtyLine | None = None
        self._server: _TcpServer | _RtuServer | None = None
        self._busy_until: dict[int, float] = {}

    @property
    def serial_port(self) -> str:
        """The gateway's end of the RTU line (after :meth:`start`)."""
        if self.line is None:
            raise RuntimeError("the RTU line exists once the simulator has started")
        return self.line.port

    def silence(self, unit: int) -> None:
        """The unit stops answering (its requests time out)."""
        self.faults[unit].silent = True

    def raise_exception(self, unit: int, code: int) -> None:
        """The unit answers every read with exception ``code`` (2 illegal address, 4 device failure, 6 busy ...)."""
        self.faults[unit].exception = int(ExcCodes(code))

    def answer_late(self, unit: int, delay_s: float, replies: int | None = None) -> None:
        """The unit's next ``replies`` replies (all, if None) come ``delay_s`` late."""
        self.faults[unit].late_s, self.faults[unit].late_replies = delay_s, replies

    def heal(self, unit: int) -> None:
        """The unit behaves again."""
        self.faults[unit] = Fault()

    def reply_delay(self, unit: int) -> float | None:
        """Seconds from now until the unit's reply goes out, or None if it never does."""
        fault = self.faults.get(unit)
        if fault is None or fault.silent:
            return None
        delay = 0.0
        if fault.late_s > 0 and fault.late_replies != 0:
            delay = fault.late_s
            if fault.late_replies is not None:
                fault.late_replies -= 1
        now = time.monotonic()
        due = max(now + delay, self._busy_until.get(unit, 0.0))  # in order: never overtake a late reply
        self._busy_until[unit] = due
        return due - now

    def _device(self, model: UnitModel) -> SimDevice:
        image = model.registers(time.monotonic())
        blocks: list[list[SimData]] = []
        for table in ("coil", "discrete", "holding", "input"):
            bits = table in BIT_TABLES
            runs = _runs(list(image.get(table, {})))
            if bits:
                data = [SimData(a, count=n, values=False, datatype=DataType.BITS) for a, n in runs]
                blocks.append(data or [SimData(0, count=1, values=False, datatype=DataType.BITS)])
            else:
                data = [SimData(a, count=n, values=0, datatype=DataType.REGISTERS) for a, n in runs]
                blocks.append(data or [SimData(0, datatype=DataType.INVALID)])

        async def action(function_code: int, start: int, address: int, count: int, registers: list[int],
                         values: list[int] | list[bool] | None) -> ExcCodes | None:
            fault = self.faults[model.unit]
            if fault.exception is not None:
                return ExcCodes(fault.exception)
            table = TABLE_OF_FUNCTION.get(function_code)
            if table is not None:
                _refresh(model.registers(time.monotonic()).get(table, {}), registers, start, table in BIT_TABLES)
            return None

        return SimDevice(model.unit, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=action)

    async def start(self) -> None:
        """Serve the line."""
        devices = [self._device(model) for model in self.units.values()]
        server: _TcpServer | _RtuServer
        if self.transport == "tcp":
            server = _TcpServer(devices, address=(self.host, self.port))
        else:
            self.line = PtyLine()
            self.line.start()
            server = _RtuServer(devices, framer=FramerType.RTU, port=self.line.device_port, baudrate=self.baudrate)
        server.simulator = self
        self._server = server
        await server.serve_forever(background=True)
        log.info("modbus simulator: units %s on %s", sorted(self.units),
                 f"tcp {self.host}:{self.port}" if self.transport == "tcp" else self.serial_port)

    async def stop(self) -> None:
        """Stop serving and close the line."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self.line is not None:
            self.line.close()

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _refresh(table: dict[int, int], registers: list[int], start: int, bits: bool) -> None:
    """Write the model's current values into pymodbus's block (bits are packed 16 to a register there)."""
    for address, value in table.items():
        if bits:
            index, mask = address // 16 - start, 1 << (address % 16)
            if 0 <= index < len(registers):
                registers[index] = registers[index] | mask if value else registers[index] & ~mask
        elif 0 <= address - start < len(registers):
            registers[address - start] = value & 0xFFFF


async def serve_forever(simulator: ModbusSimulator) -> None:
    """Run a simulator until cancelled (for demos: ``python -m simulators.modbus``)."""
    async with simulator:
        await asyncio.Event().wait()
