"""A simulated IHE PCD device gateway: PCD-01 vitals and PCD-04 alarms over MLLP, on TCP or a pseudo-terminal.

Messages come from :mod:`simulators.hl7.messages` (two vendor styles, ``A`` and ``B``); framing and
ACK handling are this module's own, independent of the gateway. Acknowledgements: ``AA``/``CA`` is
done; ``AE``/``CE`` or no answer sends the same message (same MSH-10) again, up to 3 times;
``AR``/``CR`` gives up. Run it with ``python -m simulators.hl7.sender --tcp 127.0.0.1:2575 --alarms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from simulators.bedside.patient import PatientModel
from simulators.hl7.messages import STYLES, Alarm, MessageBuilder, Monitor, read_ack

logger = logging.getLogger(__name__)

__all__ = ["Ack", "Alarm", "Hl7Sender", "Monitor", "PtyWire", "TcpWire", "Wire", "monitors_for"]

VT: Final = b"\x0b"
FS_CR: Final = b"\x1c\r"


@dataclass(frozen=True, slots=True)
class Ack:
    """What the receiver answered, and after how many attempts."""

    code: str  # AA CA AE CE AR CR, or "" when nothing came back
    control_id: str
    errors: tuple[str, ...]
    attempts: int

    @property
    def accepted(self) -> bool:
        """True for AA or CA."""
        return self.code in ("AA", "CA")


class Wire:
    """A byte pipe to the receiver with MLLP framing; subclasses provide the transport."""

    def __init__(self) -> None:
        """Start with an empty receive buffer."""
        self._buffer = bytearray()
        self._arrived = asyncio.Event()

    def _received(self, data: bytes) -> None:
        self._buffer += data
        self._arrived.set()

    async def send_frame(self, payload: bytes) -> None:
        """Write one framed message."""
        await self.write(VT + payload + FS_CR)

    async def write(self, data: bytes) -> None:
        """Write raw bytes (half messages and garbage too)."""
        raise NotImplementedError

    async def read_frame(self, within_s: float) -> bytes | None:
        """The next complete frame's payload, or None after ``within_s`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            start = self._buffer.find(VT)
            end = self._buffer.find(FS_CR, start + 1) if start >= 0 else -1
            if end >= 0:
                payload = bytes(self._buffer[start + 1:end])
                del self._buffer[:end + 2]
                return payload
            self._arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def close(self) -> None:
        """Release the transport."""


class TcpWire(Wire):
    """MLLP over a TCP connection to the gateway's listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Use an open connection (see :meth:`connect`)."""
        super().__init__()
        self._writer = writer
        self._pump = asyncio.create_task(self._read(reader))

    @classmethod
    async def connect(cls, host: str, port: int) -> TcpWire:
        """Open a connection."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                self._received(data)

    async def write(self, data: bytes) -> None:
        """Write and drain."""
        self._writer.write(data)
        await self._writer.drain()

    def close(self) -> None:
        """Close the connection."""
        self._pump.cancel()
        self._writer.close()


class PtyWire(Wire):
    """MLLP on a pseudo-terminal: the gateway opens :attr:`port` as it would open ``/dev/ttyUSB1``."""

    def __init__(self) -> None:
        """Open a pty pair in raw mode (no CR/LF translation, which would corrupt HL7)."""
        super().__init__()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port: str = os.ttyname(self._slave)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            if data:
                self._received(data)

    async def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting while the pty buffer is full."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._master, self._readable)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def close(self) -> None:
        """Stop watching and close both ends."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._master)
        self._loop = None
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class Hl7Sender:
    """Sends vitals for a few beds periodically (and alarms, optionally), one message at a time, with retries."""

    def __init__(self, wire: Wire, monitors: list[Monitor], style: str = "A", *, interval_s: float = 5.0,
                 alarms: bool = False, ack_timeout_s: float = 5.0, max_retries: int = 3, demo: bool = False,
                 unknown_param: bool = False) -> None:
        """``style`` is ``A`` or ``B`` (see the module docstring)."""
        self.wire = wire
        self.monitors = monitors
        self.builder = MessageBuilder(STYLES[style])
        self.interval_s = interval_s
        self.alarms = alarms
        self.ack_timeout_s = ack_timeout_s
        self.max_retries = max_retries
        self.demo = demo
        self.unknown_param = unknown_param
        self.sent = self.retries = self.gave_up = 0
        self.acks: list[Ack] = []
        self._counter = 0
        self._lock = asyncio.Lock()

    def next_control_id(self) -> str:
        """A fresh MSH-10."""
        self._counter += 1
        return f"SIM{self.builder.style.name}{self._counter:06d}"

    async def send(self, build: Callable[[str], bytes]) -> Ack:
        """Send one message and wait for its ACK; resend on AE/CE or silence, up to ``max_retries`` times."""
        async with self._lock:  # MLLP is one message in flight per connection
            control_id = self.next_control_id()
            payload = build(control_id)
            code, attempt = "", 0
            errors: tuple[str, ...] = ()
            for attempt in range(1, self.max_retries + 2):
                self.sent += 1
                if attempt > 1:
                    self.retries += 1
                await self.wire.send_frame(payload)
                code, errors = await self._await_ack(control_id)
                if code in ("AA", "CA", "AR", "CR"):
                    break
                logger.info("sender: %s answered %r; sending again", control_id, code or "nothing")
            else:
                self.gave_up += 1
            ack = Ack(code, control_id, errors, attempt)
            self.acks.append(ack)
            return ack

    async def send_raw(self, payload: bytes) -> Ack:
        """Send bytes as one frame without retrying (malformed input for tests); the first ACK is returned."""
        async with self._lock:
            await self.wire.send_frame(payload)
            frame = await self.wire.read_frame(self.ack_timeout_s)
            code, control, errors = read_ack(frame) if frame is not None else ("", "", ())
            return Ack(code, control, errors, 1)

    async def _await_ack(self, control_id: str) -> tuple[str, tuple[str, ...]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        while (left := deadline - loop.time()) > 0:
            frame = await self.wire.read_frame(left)
            if frame is None:
                break
            code, control, errors = read_ack(frame)
            if control == control_id:
                return code, errors
            logger.debug("sender: ignoring an ACK for %s while waiting for %s", control, control_id)
        return "", ()

    async def send_vitals(self, monitor: Monitor, t_s: float = 0.0) -> Ack:
        """One PCD-01 message for ``monitor``."""
        ms = _now_ms()
        return await self.send(lambda cid: self.builder.vitals(cid, monitor, t_s, ms, demo=self.demo,
                                                               unknown_param=self.unknown_param))

    async def send_alarm(self, monitor: Monitor, alarm: Alarm) -> Ack:
        """One PCD-04 message for ``monitor``."""
        ms = _now_ms()
        return await self.send(lambda cid: self.builder.alarm(cid, monitor, alarm, ms))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Send every monitor's vitals each interval (and a desaturation alarm cycle when enabled) until ``stop``."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        start = loop.time()
        alarm_open: dict[str, Alarm] = {}
        while not stop.is_set():
            t_s = loop.time() - start
            for monitor in self.monitors:
                await self.send_vitals(monitor, t_s)
                if self.alarms:
                    await self._alarm_cycle(monitor, t_s, alarm_open)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def _alarm_cycle(self, monitor: Monitor, t_s: float, alarm_open: dict[str, Alarm]) -> None:
        spo2 = monitor.patient.vitals(t_s)["spo2"]
        current = alarm_open.get(monitor.bed)
        if spo2 < 90 and current is None:
            alarm_open[monitor.bed] = current = Alarm(196648, "MDC_EVT_LO", f"SpO2 low {spo2:.0f}%",
                                                      150456, "MDC_PULS_OXIM_SAT_O2")
            await self.send_alarm(monitor, current)
        elif spo2 >= 90 and current is not None:
            del alarm_open[monitor.bed]
            await self.send_alarm(monitor, dataclasses.replace(current, phase="end", state="inactive",
                                                               counter=current.counter + 1))


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def monitors_for(count: int, profile: str = "stable") -> list[Monitor]:
    """``count`` monitors at beds ICU-01... with distinct EUI-64s."""
    return [Monitor(f"ICU-{i:02d}", f"00A0C9FFFE{i:06X}", PatientModel(profile, seed=i), room=f"R{i:02d}")
            for i in range(1, count + 1)]


async def _main(args: argparse.Namespace) -> None:
    wire: Wire
    if args.pty:
        pty_wire = PtyWire()
        logger.info("sender: open %s as the gateway's serial_port", pty_wire.port)
        wire = pty_wire
    else:
        host, _, port = args.tcp.rpartition(":")
        wire = await TcpWire.connect(host or "127.0.0.1", int(port))
    sender = Hl7Sender(wire, monitors_for(args.beds, args.profile), args.style, interval_s=args.interval,
                       alarms=args.alarms, unknown_param=True)
    try:
        await sender.run()
    finally:
        wire.close()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--tcp", help="HOST:PORT of the gateway's HL7 listener")
    target.add_argument("--pty", action="store_true", help="create a pseudo-terminal and write to it")
    parser.add_argument("--beds", type=int, default=3)
    parser.add_argument("--style", choices=sorted(STYLES), default="A")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--profile", default="stable")
    parser.add_argument("--alarms", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
