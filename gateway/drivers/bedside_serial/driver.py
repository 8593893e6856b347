"""Bedside monitor on a serial line (WLB/1 protocol, docs/serial-protocol.md), read with pyserial.

The port is read without a thread: its file descriptor is watched by the event loop. A watchdog
resets a partial frame that stops arriving, marks the link lost when no valid frame came for
``silence_s``, and the driver reopens a port that failed (unplug) with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import serial

from devices import mdc
from devices.contract import (
    FLAG_CLOCK_SKEW,
    FLAG_IMPLAUSIBLE,
    DeviceEvent,
    DeviceHealth,
    DeviceInfo,
    Item,
    Observation,
)
from devices.site import DeviceSpec
from gateway.driver import Link, Sink, now_ms
from gateway.drivers.bedside_serial import mapping
from gateway.drivers.bedside_serial.parser import AlarmFrame, Frame, FrameParser, IdentFrame, NumericsFrame

log = logging.getLogger(__name__)

CLOCK_SKEW_MS = 5_000


class BedsideSerialDriver:
    """Reads one bedside monitor's serial port and turns its frames into contract items."""

    kind: ClassVar[str] = "bedside_serial"
    simulator: ClassVar[str] = "simulators.bedside"

    def __init__(self, spec: DeviceSpec, sink: Sink) -> None:
        """Take the port settings from the device's ``connection`` table."""
        self.spec = spec
        self.sink = sink
        conn = spec.connection
        self.port = str(conn.get("port", ""))
        self.baudrate = int(conn.get("baudrate", 115200))
        self.silence_s = float(conn.get("silence_s", 5.0))
        self.partial_timeout_s = float(conn.get("partial_timeout_s", 1.0))
        self.link = Link(spec, sink, stream="link")
        self.parser = FrameParser()
        self.ident: IdentFrame | None = None
        self._bad_logged = 0
        self._bad_log_at = 0.0

    def health(self) -> DeviceHealth:
        """Link state with frame counters."""
        return self.link.health()

    async def run(self) -> None:
        """Open the port, read until it fails, reopen with backoff; forever (until cancelled)."""
        backoff = 0.5
        while True:
            try:
                port = serial.Serial(self.port, self.baudrate, timeout=0)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.link.lost(f"cannot open {self.port}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            log.info("device %s: reading %s at %d baud", self.spec.id, self.port, self.baudrate)
            backoff = 0.5
            try:
                await self._read(port)
            finally:
                port.close()
            await asyncio.sleep(backoff)

    async def _read(self, port: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[str] = loop.create_future()
        last_byte = last_frame = loop.time()

        def readable() -> None:
            nonlocal last_byte, last_frame
            try:
                data = port.read(max(port.in_waiting, 1))
            except (serial.SerialException, OSError) as exc:
                if not failed.done():
                    failed.set_result(f"read failed: {exc}")
                return
            if not data:
                return
            last_byte = loop.time()
            if self._feed(data):
                last_frame = last_byte

        fd = port.fileno()
        loop.add_reader(fd, readable)
        self.parser.reset()
        try:
            while not failed.done():
                await asyncio.wait([failed], timeout=0.25)
                now = loop.time()
                if self.parser.pending() and now - last_byte > self.partial_timeout_s:
                    log.warning("device %s: partial frame timed out, %d bytes dropped", self.spec.id,
                                self.parser.pending())
                    self.parser.reset()
                    self.link.frames_bad += 1
                if now - last_frame > self.silence_s and self.link.state != "lost":
                    self.link.lost(f"no valid frame for {self.silence_s:.0f} s")
            self.link.lost(failed.result())
            log.warning("device %s: %s", self.spec.id, failed.result())
        finally:
            loop.remove_reader(fd)

    def _feed(self, data: bytes) -> bool:
        """Parse bytes into items and hand them to the sink; True if a valid frame arrived."""
        frames = self.parser.feed(data)
        bad = self.parser.frames_bad
        if bad > self._bad_logged:
            self.link.frames_bad += bad - self._bad_logged
            self._bad_logged = bad
            self._log_bad()
        if not frames:
            return False
        received = now_ms()
        for frame in frames:
            if isinstance(frame, IdentFrame):
                self._identify(frame, received)
        items = frames_to_items(self.spec, frames, received)
        self.link.seen(len(frames))
        if items:
            # Nobody acknowledges a serial monitor, so its readings can share the loop iteration's group commit.
            self.sink.accept_soon(items)
        return True

    def _identify(self, frame: IdentFrame, received: int) -> None:
        """Announce the monitor's identity (model, serial number, firmware) when it first says it or it changes."""
        known = self.ident
        self.ident = frame
        if known is not None and (known.model, known.serial_number, known.firmware) == (
                frame.model, frame.serial_number, frame.firmware):
            return
        log.info("device %s: %s serial %s firmware %s", self.spec.id, frame.model, frame.serial_number, frame.firmware)
        if self.spec.serial_number and frame.serial_number != self.spec.serial_number:
            log.warning("device %s: monitor reports serial %s, the site file says %s (device swapped?)", self.spec.id,
                        frame.serial_number, self.spec.serial_number)
        self.sink.register(ident_info(self.spec, frame, received))

    def _log_bad(self) -> None:
        """Log rejected frames once per burst (at most every 10 s), naming the device."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._bad_log_at > 10:
            self._bad_log_at = loop.time()
            log.warning("device %s: %d frames rejected so far (%s)", self.spec.id, self.link.frames_bad,
                        self.parser.last_error)


def frames_to_items(spec: DeviceSpec, frames: list[Frame], received: int) -> list[Item]:
    """Normalise parsed frames to contract items (I/O-free; the golden cases run through this)."""
    items: list[Item] = []
    for frame in frames:
        if isinstance(frame, NumericsFrame):
            items.extend(_observations(spec, frame, received))
        elif isinstance(frame, AlarmFrame):
            items.append(_alarm(spec, frame, received))
    return items


def ident_info(spec: DeviceSpec, frame: IdentFrame, received: int) -> DeviceInfo:
    """The identity an IDENT frame gives, as the gateway announces it (the site file fills what it lacks)."""
    serial = frame.serial_number or spec.serial_number
    return DeviceInfo(device=spec.id, stream="device", seq=0, ts=received, driver=BedsideSerialDriver.kind,
                      bed=spec.bed, manufacturer=spec.manufacturer, model=frame.model or spec.model,
                      serial_number=serial, firmware=frame.firmware, identifiers={"serial": serial} if serial else {})


def _skew(device_time_ms: int, received: int) -> int:
    return FLAG_CLOCK_SKEW if abs(device_time_ms - received) > CLOCK_SKEW_MS else 0


def _observations(spec: DeviceSpec, frame: NumericsFrame, received: int) -> list[Item]:
    skew = _skew(frame.device_time_ms, received)
    out: list[Item] = []
    for value in frame.values:
        refid, code, unit = mapping.to_mdc(value.param)
        flags = mapping.status_flags(value.status) | skew
        if not mdc.is_plausible(refid, value.value):
            flags |= FLAG_IMPLAUSIBLE
        out.append(Observation(device=spec.id, stream="numerics", seq=0, ts=received, metric=refid,
                               value=value.value, unit=unit, code=code, bed=spec.bed,
                               device_ts=frame.device_time_ms, flags=flags))
    return out


def _alarm(spec: DeviceSpec, frame: AlarmFrame, received: int) -> DeviceEvent:
    return DeviceEvent(
        device=spec.id, stream="alarms", seq=0, ts=received, event=mapping.alarm_event(frame.code),
        alarm_kind=mapping.alarm_kind(frame.kind), priority=mapping.alarm_priority(frame.priority),
        phase=mapping.alarm_phase(frame.phase), source=mapping.to_mdc(frame.param)[0] if frame.param else None,
        text=frame.text, bed=spec.bed, device_ts=frame.device_time_ms,
        flags=_skew(frame.device_time_ms, received),
    )
