"""The Modbus line shared by every unit on it: one pymodbus client and one lock per serial port or TCP endpoint.

Rules (docs/modbus.md, RELIABILITY.md item 9):

- One :class:`Bus` per line, kept in a module-level registry keyed by serial port path (or TCP host and
  port) and created lazily inside the running event loop; every driver on that line shares it.
- One request on the line at a time, and ``pause_s`` of silence after each reply before the next request.
- Each request is one attempt with a bounded timeout. Retries and backoff belong to the unit (the poll
  loop), and each attempt takes the lock anew, so the other units' requests interleave with a dead unit's.
- A timeout, an exception code or a reply that does not fit the request is a typed error, never a value.
- A reply that comes after its timeout must not answer the next request. On TCP, pymodbus numbers every
  request (MBAP transaction id) and drops replies whose id is not the pending one; after a run of timeouts
  the connection is also reopened. RTU has no transaction id, but pymodbus drops replies from any other
  unit id than the one asked; so after a timeout the unit that failed waits ``late_guard_s`` before its
  next request (without holding the lock: the other units use the line meanwhile), and its late reply
  lands while no request of its own is pending. Every reply is also checked against the request's unit,
  function and size. Two devices may not share a unit id on one line.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from gateway.drivers.modbus_common.errors import (
    CommLost,
    ModbusBadResponse,
    ModbusConfigError,
    ModbusExceptionCode,
    ModbusTimeout,
)
from gateway.drivers.modbus_common.regmap import BIT_TABLES, Table

log = logging.getLogger(__name__)

Transport = Literal["tcp", "rtu"]
Client = AsyncModbusTcpClient | AsyncModbusSerialClient

FUNCTION_CODES: Final[dict[Table, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
HARD_MARGIN_S: Final = 1.0  # our own bound on top of pymodbus's timeout, should it ever not fire
RECONNECT_MIN_S: Final = 0.5
RECONNECT_MAX_S: Final = 10.0
TCP_RECONNECT_AFTER: Final = 3  # timeouts in a row on a TCP line (no reply from any unit): reopen the socket
NO_RESPONSE_LIMIT: Final = 1_000_000  # pymodbus would close the line after retries+3 silences; we decide instead


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a line is: a TCP host and port, or a serial port and its settings."""

    transport: Transport
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    bytesize: int = 8
    stopbits: int = 1

    @property
    def key(self) -> tuple[str, str, int]:
        """Registry key: devices with the same key share one bus."""
        if self.transport == "tcp":
            return ("tcp", self.host, self.port)
        return ("rtu", self.serial_port, 0)

    def __str__(self) -> str:
        """``tcp://host:port`` or ``rtu:<port>@<baud>``, for logs and event texts."""
        if self.transport == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"rtu:{self.serial_port}@{self.baudrate}"


@dataclass(frozen=True, slots=True)
class LineTiming:
    """Timing of a line: reply timeout, pause between requests, quiet time after a timeout (RTU)."""

    timeout_s: float
    pause_s: float
    late_guard_s: float

    def merge(self, other: LineTiming) -> LineTiming:
        """Devices on one line may ask for different timings; the slowest (largest) wins."""
        return LineTiming(max(self.timeout_s, other.timeout_s), max(self.pause_s, other.pause_s),
                          max(self.late_guard_s, other.late_guard_s))


class Bus:
    """One line shared by every unit on it: one client, one lock, counters."""

    def __init__(self, endpoint: Endpoint) -> None:
        """Create the bus in the running loop; the client connects on the first request."""
        self.endpoint = endpoint
        self.loop = asyncio.get_running_loop()
        self.timing = LineTiming(0.0, 0.0, 0.0)
        self.units: set[int] = set()
        self.requests = 0
        self.replies = 0  # exception replies included: the unit answered
        self.timeouts = 0
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        self._ready_at = 0.0
        self._reconnect_at = 0.0
        self._reconnect_delay = RECONNECT_MIN_S
        self._silent_in_row = 0
        self._quiet_until: dict[int, float] = {}

    def join(self, unit: int, timing: LineTiming) -> None:
        """A device (its unit id) starts using the line; ModbusConfigError if another device has that id."""
        if unit in self.units:
            raise ModbusConfigError(f"two devices on {self.endpoint} have unit id {unit}")
        self.units.add(unit)
        self.timing = self.timing.merge(timing)

    def close(self) -> None:
        """Close the client (the next request reconnects)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, unit: int, table: Table, address: int, count: int) -> list[int]:
        """One read attempt: registers as words, or bits as 0/1; raises a ModbusError subclass on failure."""
        quiet = self._quiet_until.get(unit, 0.0) - self.loop.time()
        if quiet > 0:
            await asyncio.sleep(quiet)  # outside the lock: the other units keep the line meanwhile
        async with self._lock:
            client = await self._connect()
            wait = self._ready_at - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                return await self._request(client, unit, table, address, count)
            except ModbusTimeout:
                self._silent_in_row += 1
                if self.endpoint.transport == "rtu":
                    # This unit's late reply must arrive before its next request is on the line.
                    self._quiet_until[unit] = self.loop.time() + self.timing.late_guard_s
                elif self._silent_in_row >= TCP_RECONNECT_AFTER:
                    self._drop(f"{self._silent_in_row} requests in a row unanswered")
                raise
            finally:
                self._ready_at = self.loop.time() + self.timing.pause_s

    def _new_client(self) -> Client:
        ep, timeout = self.endpoint, max(self.timing.timeout_s, 0.01)
        if ep.transport == "tcp":
            return AsyncModbusTcpClient(ep.host, port=ep.port, timeout=timeout, retries=0, reconnect_delay=0,
                                        name=str(ep))
        return AsyncModbusSerialClient(ep.serial_port, baudrate=ep.baudrate, bytesize=ep.bytesize, parity=ep.parity,
                                       stopbits=ep.stopbits, timeout=timeout, retries=0, reconnect_delay=0,
                                       name=str(ep))

    async def _connect(self) -> Client:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        now = self.loop.time()
        if now < self._reconnect_at:
            raise CommLost(f"{self.endpoint}: not connected (next attempt in {self._reconnect_at - now:.1f} s)")
        client = self._new_client()
        try:
            connected = await client.connect()
        except (ModbusException, OSError) as exc:  # pymodbus catches most of these itself and returns False
            log.debug("%s: connect raised %s", self.endpoint, exc)
            connected = False
        if not connected:
            client.close()
            self._reconnect_at = now + self._reconnect_delay
            self._reconnect_delay = min(self._reconnect_delay * 2, RECONNECT_MAX_S)
            raise CommLost(f"cannot open {self.endpoint}")
        client.set_max_no_responses(NO_RESPONSE_LIMIT)
        self._client = client
        self._reconnect_delay = RECONNECT_MIN_S
        self._silent_in_row = 0
        log.info("modbus line %s open", self.endpoint)
        return client

    def _drop(self, reason: str) -> None:
        log.warning("modbus line %s: %s; reopening it", self.endpoint, reason)
        self.close()
        self._silent_in_row = 0

    async def _call(self, client: Client, unit: int, table: Table, address: int, count: int) -> ModbusPDU:
        if table == "holding":
            return await client.read_holding_registers(address, count=count, device_id=unit)
        if table == "input":
            return await client.read_input_registers(address, count=count, device_id=unit)
        if table == "coil":
            return await client.read_coils(address, count=count, device_id=unit)
        return await client.read_discrete_inputs(address, count=count, device_id=unit)

    async def _request(self, client: Client, unit: int, table: Table, address: int, count: int) -> list[int]:
        what = f"unit {unit} {table} {address}+{count} on {self.endpoint}"
        self.requests += 1
        try:
            async with asyncio.timeout(self.timing.timeout_s + HARD_MARGIN_S):
                pdu = await self._call(client, unit, table, address, count)
        except ConnectionException as exc:
            self._drop(f"connection failed: {exc}")
            raise CommLost(f"{what}: {exc}") from exc
        except ModbusIOException as exc:
            # In a read, pymodbus raises this when no reply came within its timeout (retries=0: one attempt).
            self.timeouts += 1
            raise ModbusTimeout(f"{what}: no reply within {self.timing.timeout_s:g} s") from exc
        except TimeoutError as exc:
            self.timeouts += 1
            raise ModbusTimeout(f"{what}: no reply within {self.timing.timeout_s + HARD_MARGIN_S:g} s") from exc
        except ModbusException as exc:
            raise ModbusBadResponse(f"{what}: {exc}") from exc
        except OSError as exc:
            self._drop(f"I/O error: {exc}")
            raise CommLost(f"{what}: {exc}") from exc
        self._silent_in_row = 0
        self.replies += 1
        return _check(pdu, what, unit, table, count)


def _check(pdu: ModbusPDU, what: str, unit: int, table: Table, count: int) -> list[int]:
    """The reply's values if it answers this very request; typed errors otherwise."""
    if isinstance(pdu, ExceptionResponse) or pdu.isError():
        raise ModbusExceptionCode(int(getattr(pdu, "exception_code", 0)), what)
    if pdu.function_code != FUNCTION_CODES[table] or pdu.dev_id != unit:
        raise ModbusBadResponse(f"{what}: reply is function {pdu.function_code} from unit {pdu.dev_id}")
    if table in BIT_TABLES:
        bits = list(pdu.bits)
        if len(bits) != 8 * ((count + 7) // 8):  # bits come in whole bytes
            raise ModbusBadResponse(f"{what}: reply holds {len(bits)} bits")
        return [int(bool(b)) for b in bits[:count]]
    registers = list(pdu.registers)
    if len(registers) != count:
        raise ModbusBadResponse(f"{what}: reply holds {len(registers)} registers")
    return registers


_BUSES: dict[tuple[str, str, int], Bus] = {}


def acquire(endpoint: Endpoint, unit: int, timing: LineTiming) -> Bus:
    """The bus of ``endpoint`` for ``unit`` in the running loop, created on first use; pair with :func:`release`."""
    loop = asyncio.get_running_loop()
    bus = _BUSES.get(endpoint.key)
    if bus is not None and bus.loop is not loop:
        bus = None  # left behind by an event loop that has ended (tests run one loop per test)
    if bus is None:
        bus = _BUSES[endpoint.key] = Bus(endpoint)
    elif bus.endpoint != endpoint:
        raise ModbusConfigError(f"devices on {endpoint} disagree on the line's settings: {bus.endpoint!r} "
                                f"and {endpoint!r}")
    bus.join(unit, timing)
    return bus


def release(bus: Bus, unit: int) -> None:
    """A device (its unit id) stops using its bus; the last one out closes it."""
    bus.units.discard(unit)
    if not bus.units:
        bus.close()
        if _BUSES.get(bus.endpoint.key) is bus:
            del _BUSES[bus.endpoint.key]
