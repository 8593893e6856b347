"""The poll loop both Modbus drivers run: read a unit through its map, retry, back off, report comm lost.

Per poll every block of the map is read; a poll succeeds only when every block did (all or nothing, so a
value scaled by an exponent in another block is never combined with a stale one). A failed attempt is
retried ``retries`` times while the unit is healthy; once a poll has failed, the unit gets one attempt per
poll and waits ``backoff_s`` doubling up to ``backoff_max_s`` between polls, so a dead unit costs the line
one timeout per backoff period instead of holding it. Every request sent again within a poll is counted
(``retries``, reported in the device's health). ``lost_after`` failed polls in a row raise the
``device.disconnected`` technical event (:class:`gateway.driver.Link`); the next good poll ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import ClassVar, Literal

import msgspec

from devices.contract import DeviceHealth, DeviceInfo, Item
from devices.site import DeviceSpec
from gateway.driver import Link, Sink, now_ms
from gateway.drivers.modbus_common.bus import Bus, Endpoint, LineTiming, Transport, acquire, release
from gateway.drivers.modbus_common.decode import MapState, identity, to_items
from gateway.drivers.modbus_common.errors import (
    CommLost,
    ModbusBadResponse,
    ModbusConfigError,
    ModbusError,
    ModbusExceptionCode,
    RegisterError,
)
from gateway.drivers.modbus_common.regmap import Block, RegisterMap, Snapshot

log = logging.getLogger(__name__)

RTU_PAUSE_S = 0.02  # silence between requests on a serial line; well above 3.5 characters at 9600 baud


class ModbusSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``connection`` table of a Modbus device (see the drivers' sample.toml)."""

    transport: Transport
    unit: int = 1
    map: str = ""
    poll_s: float = 1.0
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    timeout_s: float = 0.5
    retries: int = 2
    lost_after: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    pause_s: float | None = None  # default: RTU_PAUSE_S on rtu, 0 on tcp
    late_guard_s: float | None = None  # default: timeout_s on rtu (unused on tcp)

    def endpoint(self) -> Endpoint:
        """The line this device is on."""
        return Endpoint(self.transport, host=self.host, port=self.port, serial_port=self.serial_port,
                        baudrate=self.baudrate, parity=self.parity, bytesize=self.bytesize, stopbits=self.stopbits)

    def timing(self) -> LineTiming:
        """The line timing this device asks for."""
        rtu = self.transport == "rtu"
        pause = self.pause_s if self.pause_s is not None else (RTU_PAUSE_S if rtu else 0.0)
        guard = self.late_guard_s if self.late_guard_s is not None else (self.timeout_s if rtu else 0.0)
        return LineTiming(self.timeout_s, pause, guard)


def parse_settings(spec: DeviceSpec) -> ModbusSettings:
    """Validate a device's connection table; ModbusConfigError naming the device and field otherwise."""
    try:
        settings = msgspec.convert(spec.connection, ModbusSettings)
    except msgspec.ValidationError as exc:
        raise ModbusConfigError(f"device {spec.id}: connection: {exc}") from exc
    problems = []
    if settings.transport == "tcp" and not settings.host:
        problems.append("host is required for transport tcp")
    if settings.transport == "rtu" and not settings.serial_port:
        problems.append("serial_port is required for transport rtu")
    if not 1 <= settings.unit <= 247:
        problems.append(f"unit {settings.unit} is not 1..247")
    if min(settings.poll_s, settings.timeout_s, settings.backoff_s) <= 0 or settings.backoff_max_s < settings.backoff_s:
        problems.append("poll_s, timeout_s and backoff_s must be positive and backoff_max_s >= backoff_s")
    if settings.retries < 0 or settings.lost_after < 1:
        problems.append("retries must be >= 0 and lost_after >= 1")
    if min(settings.pause_s or 0.0, settings.late_guard_s or 0.0) < 0:
        problems.append("pause_s and late_guard_s must not be negative")
    if problems:
        raise ModbusConfigError(f"device {spec.id}: connection: {'; '.join(problems)}")
    return settings


class ModbusDevice:
    """One Modbus unit read through a register map; the two Modbus drivers are this with their own map."""

    kind: ClassVar[str] = "modbus"
    simulator: ClassVar[str] = "simulators.modbus"

    def __init__(self, spec: DeviceSpec, sink: Sink, regmap: RegisterMap, settings: ModbusSettings) -> None:
        """Bind the unit to its map and line settings (nothing connects before :meth:`run`)."""
        self.spec = spec
        self.sink = sink
        self.regmap = regmap
        self.settings = settings
        self.link = Link(spec, sink, stream="link")
        self.state = MapState()
        self.errors: Counter[str] = Counter()  # failed attempts by error class name
        self.retries = 0  # requests sent again after a failed attempt (communication quality, in the health)
        self.polls_ok = 0
        self.info: DeviceInfo | None = None
        self._failures = 0  # failed polls in a row
        self._identified = not regmap.identity_blocks

    def health(self) -> DeviceHealth:
        """Link state; frames_ok counts good polls, frames_bad failed attempts, retries the requests sent again."""
        return msgspec.structs.replace(self.link.health(), retries=self.retries)

    async def run(self) -> None:
        """Poll until cancelled; never raises for anything the line or the device does."""
        endpoint = self.settings.endpoint()
        while True:
            try:
                bus = acquire(endpoint, self.settings.unit, self.settings.timing())
            except ModbusConfigError as exc:
                log.error("device %s: %s", self.spec.id, exc)
                self.link.lost(str(exc))
                await asyncio.sleep(self.settings.backoff_max_s)
                continue
            try:
                await self._poll_forever(bus)
            finally:
                release(bus, self.settings.unit)

    async def _poll_forever(self, bus: Bus) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                items = await self.poll_once(bus)
            except ModbusError as exc:
                self._failed(bus, exc)
                await asyncio.sleep(self._backoff())
                continue
            if self._failures:
                log.info("device %s: unit %d answers again after %d failed polls", self.spec.id,
                         self.settings.unit, self._failures)
            self._failures = 0
            self.polls_ok += 1
            self.link.seen()
            if items:
                self.sink.accept(items)
            await asyncio.sleep(max(0.0, self.settings.poll_s - (loop.time() - started)))

    async def poll_once(self, bus: Bus) -> list[Item]:
        """Read the identity (when due) and every block, and decode them; a ModbusError if any read fails."""
        retries = self.settings.retries if self._failures == 0 else 0
        if not self._identified:
            await self._identify(bus, retries)
        snapshot = await self._read(bus, self.regmap.blocks, retries)
        try:
            return to_items(self.spec, self.regmap, snapshot, self.state, now_ms())
        except RegisterError as exc:  # a reply pymodbus accepted but we cannot decode: count it as bad
            raise ModbusBadResponse(f"unit {self.settings.unit}: {exc}") from exc

    async def _identify(self, bus: Bus, retries: int) -> None:
        try:
            snapshot = await self._read(bus, self.regmap.identity_blocks, retries)
        except ModbusExceptionCode as exc:
            if exc.code not in (1, 2):
                raise
            log.warning("device %s: no identity registers (%s); reading values without them", self.spec.id, exc)
            self._identified = True
            return
        try:
            info = identity(self.spec, self.regmap, snapshot, self.kind, now_ms())
        except RegisterError as exc:
            raise ModbusBadResponse(f"unit {self.settings.unit}: identity: {exc}") from exc
        self._identified = True
        if self.info is None or (info.model, info.serial_number, info.firmware) != (
                self.info.model, self.info.serial_number, self.info.firmware):
            log.info("device %s: %s serial %s firmware %s", self.spec.id, info.model, info.serial_number,
                     info.firmware)
        if self.spec.serial_number and info.serial_number != self.spec.serial_number:
            log.warning("device %s: unit reports serial %s, the site file says %s (device swapped?)", self.spec.id,
                        info.serial_number, self.spec.serial_number)
        self.info = info
        self.sink.register(info)

    async def _read(self, bus: Bus, blocks: tuple[Block, ...], retries: int) -> Snapshot:
        snapshot: Snapshot = {}
        for block in blocks:
            words = await self._attempts(bus, block, retries)
            snapshot.setdefault(block.table, {}).update(zip(range(block.address, block.address + block.count),
                                                            words, strict=True))
        return snapshot

    async def _attempts(self, bus: Bus, block: Block, retries: int) -> list[int]:
        attempt = 0
        while True:
            try:
                return await bus.read(self.settings.unit, block.table, block.address, block.count)
            except ModbusError as exc:
                self.errors[type(exc).__name__] += 1
                if not isinstance(exc, CommLost):
                    self.link.frames_bad += 1
                final = attempt >= retries or isinstance(exc, CommLost) or (
                    isinstance(exc, ModbusExceptionCode) and not exc.retryable)
                if final:
                    raise
                attempt += 1
                self.retries += 1

    def _failed(self, bus: Bus, exc: ModbusError) -> None:
        self._failures += 1
        # Logged once per burst: the first failure of a run, then only the transition to lost.
        if self._failures == 1:
            log.warning("device %s: poll failed: %s", self.spec.id, exc)
        else:
            log.debug("device %s: poll failed again (%d): %s", self.spec.id, self._failures, exc)
        if self._failures >= self.settings.lost_after:
            if self.link.state != "lost":
                log.warning("device %s: comm lost after %d failed polls", self.spec.id, self._failures)
                self._identified = not self.regmap.identity_blocks  # re-read: the unit may have been swapped
            self.link.lost(f"unit {self.settings.unit} on {bus.endpoint}: {self._failures} polls failed ({exc})")

    def _backoff(self) -> float:
        backoff = self.settings.backoff_s * 2.0 ** min(self._failures - 1, 20)
        return max(self.settings.poll_s, min(backoff, self.settings.backoff_max_s))
