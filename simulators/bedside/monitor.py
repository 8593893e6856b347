"""A simulated bedside monitor that sends WLB/1 on a pseudo-terminal, as a real one does on RS-232.

The gateway opens ``SimulatedMonitor.port`` with pyserial exactly as it would open ``/dev/ttyUSB0``.
Fault injection: :meth:`SimulatedMonitor.inject` writes raw bytes (garbage, half frames);
:meth:`~SimulatedMonitor.unplug` and :meth:`~SimulatedMonitor.replug` model a pulled and re-seated
cable: the port path stays the same, the monitor keeps running and counting frames, and whatever it
sends meanwhile (or had in flight) never arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import time
from types import TracebackType
from typing import Final

from simulators.bedside import protocol
from simulators.bedside.patient import PatientModel

logger = logging.getLogger(__name__)

# Patient vital -> WLB/1 parameter id, in the order a NUMERICS frame carries them.
VITAL_PARAMS: Final[tuple[tuple[str, int], ...]] = (
    ("hr", protocol.PARAM_HR),
    ("spo2", protocol.PARAM_SPO2),
    ("pr", protocol.PARAM_PULSE),
    ("pi", protocol.PARAM_PERF_INDEX),
    ("nibp_sys", protocol.PARAM_NIBP_SYS),
    ("nibp_dia", protocol.PARAM_NIBP_DIA),
    ("nibp_mean", protocol.PARAM_NIBP_MEAN),
    ("rr", protocol.PARAM_RESP),
    ("temp", protocol.PARAM_TEMP),
    ("etco2", protocol.PARAM_ETCO2),
)
ST_II_MM: Final = 0.12  # the vendor-extension value sent when ``unknown_param`` is on


def _make_raw(fd: int) -> None:
    """Put a terminal in raw mode like cfmakeraw(3), so every byte passes unchanged (no XON/XOFF, CR/LF)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class SimulatedMonitor:
    """One monitor on a pty pair: IDENT on start and every 30 s, NUMERICS every interval, HEARTBEAT every 5 s.

    Output never blocks and never queues without bound: bytes the reader has not taken wait in the
    kernel's pty buffer and then in a small backlog (``max_backlog`` bytes); beyond that whole frames
    are dropped and counted, as a real monitor's UART would lose them.
    """

    def __init__(
        self,
        serial_number: str,
        model: str,
        firmware: str,
        patient: PatientModel,
        interval_s: float = 1.0,
        unknown_param: bool = True,
        *,
        ident_interval_s: float = 30.0,
        heartbeat_interval_s: float = 5.0,
        time_scale: float = 1.0,
        clock_offset_ms: int = 0,
        max_backlog: int = 4096,
    ) -> None:
        if min(interval_s, ident_interval_s, heartbeat_interval_s, time_scale) <= 0:
            raise ValueError("intervals and time_scale must be positive")
        # Validate the texts once here rather than on every IDENT.
        protocol.encode_ident(0, model, serial_number, firmware)
        self.serial_number = serial_number
        self.model = model
        self.firmware = firmware
        self.patient = patient
        self.interval_s = interval_s
        self.unknown_param = unknown_param
        self.ident_interval_s = ident_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.time_scale = time_scale  # simulated seconds per real second
        self.clock_offset_ms = clock_offset_ms  # the monitor's clock error, to exercise skew detection
        self.max_backlog = max_backlog
        self.frames_sent = 0
        self.frames_dropped = 0  # reader too slow or absent: backlog full
        self.frames_lost = 0  # sent while unplugged
        self._counter = 0
        self._backlog = bytearray()
        self._plugged = True
        self._closed = False
        self._closing: asyncio.Event | None = None  # created by run(), inside its event loop
        self._status: dict[int, int] = {}
        self._started = time.monotonic()
        self._epoch_ms = time.time_ns() // 1_000_000
        self._master, self._slave = os.openpty()
        try:
            _make_raw(self._slave)
            os.set_blocking(self._master, False)
            self.port: str = os.ttyname(self._slave)
        except OSError:
            self.close()
            raise

    def __enter__(self) -> SimulatedMonitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def backlog_bytes(self) -> int:
        """Bytes waiting in the monitor's own output buffer (never more than ``max_backlog``)."""
        return len(self._backlog)

    @property
    def plugged(self) -> bool:
        """False between :meth:`unplug` and :meth:`replug`."""
        return self._plugged

    def elapsed_s(self) -> float:
        """Simulated seconds since :meth:`run` started (or since construction, before it)."""
        return (time.monotonic() - self._started) * self.time_scale

    def device_time_ms(self, t_s: float | None = None) -> int:
        """The monitor's clock at simulated time ``t_s`` (default: now), offset included."""
        sim_s = self.elapsed_s() if t_s is None else t_s
        return self._epoch_ms + round(sim_s * 1000) + self.clock_offset_ms

    def set_status(self, param: int, status: int) -> None:
        """Send ``status`` bits with ``param`` from now on (0 restores normal); e.g. sensor off."""
        if status:
            self._status[param] = status
        else:
            self._status.pop(param, None)

    def send_alarm(self, code: int, priority: int, kind: int, phase: int, param: int = 0, text: str = "") -> None:
        """Send one ALARM frame now; the monitor raises no alarms by itself."""
        frame = protocol.encode_alarm(
            self.device_time_ms(),
            self._next_counter(),
            code=code,
            priority=priority,
            kind=kind,
            phase=phase,
            param=param,
            text=text,
        )
        self._send(frame)

    def inject(self, data: bytes) -> None:
        """Write raw bytes to the line (garbage, truncated frames), subject to the same bounds as frames."""
        self._send(bytes(data))

    def unplug(self) -> None:
        """Pull the cable: nothing reaches the line, and bytes already in flight are lost."""
        self._plugged = False
        self._backlog.clear()
        with contextlib.suppress(OSError):
            termios.tcflush(self._slave, termios.TCIFLUSH)  # drop what the reader has not taken yet

    def replug(self) -> None:
        """Re-seat the cable: output resumes with the next frame; the counter shows what was missed."""
        self._plugged = True

    def close(self) -> None:
        """Stop :meth:`run` and close both pty ends; the gateway's reads then fail as if its adapter left."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Send frames on schedule until ``stop`` is set or :meth:`close` is called."""
        stop = stop if stop is not None else asyncio.Event()
        self._closing = asyncio.Event()
        if self._closed:
            return
        self._started = time.monotonic()
        self._epoch_ms = time.time_ns() // 1_000_000
        self._send(protocol.encode_ident(self._next_counter(), self.model, self.serial_number, self.firmware))
        next_numerics, next_ident, next_heartbeat = 0.0, self.ident_interval_s, self.heartbeat_interval_s
        stopped = asyncio.ensure_future(stop.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while not (stopped.done() or closing.done()):
                now = self.elapsed_s()
                if now >= next_numerics:
                    self._send_numerics(next_numerics)
                    next_numerics = self._advance(next_numerics, self.interval_s, now)
                if now >= next_ident:
                    self._send(
                        protocol.encode_ident(self._next_counter(), self.model, self.serial_number, self.firmware)
                    )
                    next_ident = self._advance(next_ident, self.ident_interval_s, now)
                if now >= next_heartbeat:
                    self._send(protocol.encode_heartbeat(self.device_time_ms(now), self._next_counter()))
                    next_heartbeat = self._advance(next_heartbeat, self.heartbeat_interval_s, now)
                self._discard_input()
                self._flush()
                delay = (min(next_numerics, next_ident, next_heartbeat) - self.elapsed_s()) / self.time_scale
                if self._backlog:
                    delay = min(delay, 0.05)  # retry the write soon rather than at the next tick
                await asyncio.wait((stopped, closing), timeout=max(delay, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            closing.cancel()
            await asyncio.gather(stopped, closing, return_exceptions=True)

    @staticmethod
    def _advance(due: float, interval: float, now: float) -> float:
        # A monitor that fell behind (suspended process) skips the missed ticks instead of bursting them.
        due += interval
        if due <= now:
            due += interval * ((now - due) // interval + 1)
        return due

    def _next_counter(self) -> int:
        counter = self._counter
        self._counter = (self._counter + 1) & 0xFFFF
        return counter

    def _send_numerics(self, t_s: float) -> None:
        vitals = self.patient.vitals(t_s)
        values = [(param, vitals[name], self._status.get(param, 0)) for name, param in VITAL_PARAMS]
        if self.unknown_param:
            values.append((protocol.PARAM_ST_II, ST_II_MM, self._status.get(protocol.PARAM_ST_II, 0)))
        self._send(protocol.encode_numerics(self.device_time_ms(t_s), self._next_counter(), values))

    def _send(self, frame: bytes) -> None:
        if self._closed:
            return
        if not self._plugged:
            self.frames_lost += 1
            return
        self._flush()
        if len(self._backlog) + len(frame) > self.max_backlog:
            self.frames_dropped += 1
            logger.debug("monitor %s: output backlog full, frame dropped", self.serial_number)
            return
        self._backlog += frame
        self.frames_sent += 1
        self._flush()

    def _flush(self) -> None:
        while self._backlog and not self._closed:
            try:
                written = os.write(self._master, self._backlog)
            except BlockingIOError:
                return  # the pty buffer is full: nobody is reading, or slowly
            except OSError as exc:
                logger.warning("monitor %s: write to pty failed: %s", self.serial_number, exc)
                self._backlog.clear()
                return
            del self._backlog[:written]

    def _discard_input(self) -> None:
        # WLB/1 is send-only; reading what the host writes keeps the host from blocking on a full pty.
        while not self._closed:
            try:
                if not os.read(self._master, 4096):
                    return
            except OSError:  # BlockingIOError when empty
                return
