"""HL7 v2 / IHE PCD-01 and PCD-04 receiver over MLLP: a TCP listener (many senders) or a serial line.

Every message is persisted before it is acknowledged: devices first seen are registered, the items
go to ``sink.accept`` (durable when it returns), and only then does the sender get ``AA``/``CA``;
if storing fails it gets ``AE``/``CE`` and sends again. Unusable messages get ``AR``/``CR`` with ERR.

TCP: each connection has its own task, de-framer and timeouts. Every complete message of a read joins
the gateway's group commit at once (:meth:`Hl7PcdDriver.receive`); their ACKs are written together, in
order, by a callback once the group is durable, so the connection task is not woken per message and
goes on reading. A slow, stalled or hostile sender only holds its own connection: a partial message
with no byte for ``partial_timeout_s`` is dropped and its connection closed, an idle connection is
closed after ``idle_timeout_s``, a sender that does not read its ACKs is dropped after
``write_timeout_s``, and at most ``max_connections`` are served at once. The listener being up is what
"connected" means for this device's link.

Serial: the port is read without a thread (its descriptor is watched by the event loop, as in the
bedside driver) and ACKs are written back on the same line without blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

import serial

from devices.contract import DeviceHealth, DeviceInfo
from devices.site import DeviceSpec
from gateway.driver import Link, Sink, now_ms
from gateway.drivers.hl7_pcd.config import load_settings
from gateway.drivers.hl7_pcd.context import changed
from gateway.drivers.hl7_pcd.mllp import Frame, MllpFramer, wrap
from gateway.drivers.hl7_pcd.pcd import Decoded, answer, decode
from gateway.outbox import OutboxError

log = logging.getLogger(__name__)

READ_CHUNK: Final = 65536
WRITE_HIGH_WATER: Final = 65536  # ACK bytes queued for a connection past which reading waits for the sender
MAX_SERIAL_BACKLOG: Final = 65536  # ACK bytes waiting for a serial line nobody drains: then the line is dead
LOG_EVERY_S: Final = 10.0


@dataclass(slots=True)  # not frozen: one is made per message, and a frozen one costs three setattr calls
class _Step:
    """A decoded message on its way to the outbox."""

    decoded: Decoded
    control_id: str
    received: int
    stored: asyncio.Future[None] | None = None  # the group commit holding its readings (receive only)


class Hl7PcdDriver:
    """Receives PCD-01/PCD-04 messages for one listener or serial line and hands them to the sink."""

    kind: ClassVar[str] = "hl7_pcd"
    simulator: ClassVar[str] = "simulators.hl7"

    def __init__(self, spec: DeviceSpec, sink: Sink) -> None:
        """Validate the ``connection`` table (raises ``ConfigError``); nothing is opened yet."""
        self.spec = spec
        self.sink = sink
        self.settings = load_settings(spec)
        self.routing = self.settings.routing(spec)
        self.link = Link(spec, sink, stream="link")
        self.port: int | None = None  # the bound TCP port while listening (useful with port 0)
        self.rejected = 0
        self.store_failures = 0
        self._registered: dict[str, DeviceInfo] = {}
        self._clients: set[asyncio.Task[None]] = set()
        self._ack_ids = itertools.count(1)
        self._logged_at: dict[str, float] = {}

    def health(self) -> DeviceHealth:
        """Link state with message counters."""
        return self.link.health()

    async def run(self) -> None:
        """Listen or read the serial line until cancelled, re-opening with backoff after failures."""
        if self.settings.listening:
            await self._listen()
        else:
            await self._serial()

    # -- one message: persist, then ACK --------------------------------------------------------------
    def handle(self, frame: Frame) -> bytes:
        """Map, register, store and answer one message; returns the ACK (unframed). Stores synchronously."""
        step = self._begin(frame)
        if isinstance(step, bytes):
            return step
        try:
            self._register(step.decoded.discovered)
            if step.decoded.items:
                self.sink.accept(step.decoded.items)
        except (OutboxError, OSError) as exc:
            return self._not_stored(step, exc)
        return self._stored(step)

    def receive(self, frames: Iterable[Frame], write: Callable[[bytes], None],
                after: asyncio.Future[None] | None = None) -> asyncio.Future[None] | None:
        """Map, register and queue for the group commit every message of one read; ``write`` gets their ACKs.

        The ACKs (framed, in order, one ``write``) are built once the readings are durable, by a callback
        on the group commit, and after those of ``after`` (what the previous call returned for the same
        connection). Returns the future the write waits for, None when it was written at once.
        """
        answers: list[bytes | _Step] = []
        waits: list[asyncio.Future[None]] = []
        for frame in frames:
            step = self._begin(frame)
            if isinstance(step, bytes):
                answers.append(step)
                continue
            try:
                self._register(step.decoded.discovered)
                if step.decoded.items:
                    durable = self.sink.accept_soon(step.decoded.items)
                    # The gateway's group commit is a future already (ensure_future costs more than the test).
                    stored = durable if isinstance(durable, asyncio.Future) else asyncio.ensure_future(durable)
                    step.stored = stored
                    if not waits or waits[-1] is not stored:
                        waits.append(stored)
            except (OutboxError, OSError) as exc:
                answers.append(self._not_stored(step, exc))
                continue
            answers.append(step)
        if not answers:
            return after
        if after is not None and not after.done() and after not in waits:
            waits.insert(0, after)
        if not waits:
            write(self._answers(answers))
            return None
        # One group commit is the usual case; a sink whose futures are not one group is waited on in full.
        wait: asyncio.Future[None] = waits[0] if len(waits) == 1 else _all(waits)
        wait.add_done_callback(lambda _: self._write(write, answers))
        return wait

    def _write(self, write: Callable[[bytes], None], answers: list[bytes | _Step]) -> None:
        try:
            write(self._answers(answers))
        except (OSError, RuntimeError) as exc:  # the connection went away meanwhile; the sender resends
            log.info("device %s: ACKs not written: %s", self.spec.id, exc)

    def _answers(self, answers: list[bytes | _Step]) -> bytes:
        """The framed ACKs of one read, in order (every group commit involved has finished)."""
        out = []
        for entry in answers:
            if isinstance(entry, _Step):
                stored = entry.stored
                if stored is None or not (stored.cancelled() or stored.exception()):
                    entry = self._stored(entry)
                else:
                    problem = stored.exception() if not stored.cancelled() else None
                    entry = self._not_stored(entry, problem or OutboxError("the group commit was cancelled"))
            out.append(wrap(entry))
        return b"".join(out)

    def _begin(self, frame: Frame) -> _Step | bytes:
        """Decode one message: a step to store, or the rejecting ACK."""
        received = now_ms()
        decoded = decode(frame.payload, self.routing, received, oversize=frame.oversize)
        control_id = f"WL{received}.{next(self._ack_ids)}"
        if decoded.error is not None:
            self.rejected += 1
            self.link.frames_bad += 1
            self._throttled("rejected", "device %s: message %s rejected (%s); %d rejected so far", self.spec.id,
                            _control(decoded), decoded.error, self.rejected)
            return answer(decoded, control_id, received)
        return _Step(decoded, control_id, received)

    def _not_stored(self, step: _Step, exc: BaseException) -> bytes:
        self.store_failures += 1
        log.error("device %s: message %s not stored, asking the sender to resend: %s", self.spec.id,
                  _control(step.decoded), exc)
        return answer(step.decoded, step.control_id, step.received, store_error=str(exc))

    def _stored(self, step: _Step) -> bytes:
        decoded = step.decoded
        self.link.seen()
        if decoded.warnings:
            self._throttled("rows", "device %s: message %s: %d rows left out (first: %s)", self.spec.id,
                            _control(decoded), len(decoded.warnings), decoded.warnings[0])
        if log.isEnabledFor(logging.DEBUG):  # the arguments cost more than the check
            log.debug("device %s: message %s: %d items, %d skipped, containment %s", self.spec.id, _control(decoded),
                      len(decoded.items), decoded.skipped, decoded.containment)
        return answer(decoded, step.control_id, step.received)

    def _register(self, infos: list[DeviceInfo]) -> None:
        """Announce devices before their readings; again only when their identity, bed or firmware changed."""
        for found in infos:
            info = changed(self._registered.get(found.device), found)
            if info is None:
                continue
            self.sink.register(info)
            self._registered[info.device] = info
            if info.discovered:
                log.info("device %s: discovered %s (%s) at bed %s, firmware %s", self.spec.id, info.device,
                         ", ".join(f"{k}={v}" for k, v in info.identifiers.items()), info.bed, info.firmware or "?")
            else:
                log.info("device %s: %s reports firmware %s", self.spec.id, info.device, info.firmware)

    def _throttled(self, key: str, message: str, *args: object) -> None:
        """Log a warning at most once per burst (every LOG_EVERY_S) per kind of trouble."""
        now = asyncio.get_running_loop().time()
        if now - self._logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[key] = now
            log.warning(message, *args)

    def _noise(self, framer: MllpFramer, source: object) -> None:
        """Mention bytes that came outside any MLLP frame (a non-MLLP client, line noise), once per burst."""
        if framer.bytes_discarded:
            self._throttled("noise", "device %s: %d bytes outside MLLP frames from %s discarded", self.spec.id,
                            framer.bytes_discarded, source)

    # -- TCP listener ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        backoff = 0.5
        where = f"{self.settings.host or '*'}:{self.settings.port}"
        while True:
            try:
                server = await asyncio.start_server(self._client, self.settings.host or None, self.settings.port)
            except OSError as exc:
                self.link.lost(f"cannot listen on {where}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.port = int(server.sockets[0].getsockname()[1])
            log.info("device %s: listening for HL7/MLLP on %s (port %d)", self.spec.id, where, self.port)
            self.link.seen(0)
            try:
                async with server:
                    await server.serve_forever()
            finally:
                self.port = None
                clients = list(self._clients)
                for task in clients:
                    task.cancel()
                await asyncio.gather(*clients, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        if task is None or len(self._clients) >= self.settings.max_connections:
            self._throttled("busy", "device %s: refusing %s: already %d connections", self.spec.id, peer,
                            len(self._clients))
            writer.close()
            return
        self._clients.add(task)
        framer = MllpFramer(self.settings.max_message_bytes)
        try:
            await self._converse(reader, writer, framer, peer)
        except (ConnectionError, OSError) as exc:
            log.info("device %s: connection from %s ended: %s", self.spec.id, peer, exc)
        except asyncio.CancelledError:
            # The listener is stopping. Python 3.11's stream callback logs a cancelled handler task as an
            # error (fixed in 3.12), so the handler ends normally instead of re-raising.
            log.debug("device %s: connection from %s closed at shutdown", self.spec.id, peer)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: MllpFramer,
                        peer: object) -> None:
        settings = self.settings
        counted_bad = 0
        acks: asyncio.Future[None] | None = None  # the ACKs of earlier reads still waiting for their commit
        try:
            while True:
                timeout = settings.partial_timeout_s if framer.pending() else settings.idle_timeout_s
                try:
                    # asyncio.timeout rather than wait_for: no task of its own per read.
                    async with asyncio.timeout(timeout):
                        data = await reader.read(READ_CHUNK)
                except TimeoutError:
                    if framer.pending():
                        self._throttled("partial", "device %s: partial message from %s stalled for %.1f s "
                                        "(%d bytes dropped); closing it", self.spec.id, peer, timeout,
                                        framer.pending())
                        framer.reset()
                        self.link.frames_bad += 1
                    else:
                        log.info("device %s: closing %s, idle for %.0f s", self.spec.id, peer, timeout)
                    return
                if not data:
                    if framer.pending():
                        self.link.frames_bad += 1
                    return
                # Senders on other connections store in the same group commit; the ACKs wait for it.
                acks = self.receive(framer.feed(data), writer.write, acks)
                self.link.frames_bad += framer.frames_bad - counted_bad
                counted_bad = framer.frames_bad
                self._noise(framer, peer)
                transport = writer.transport
                if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    try:
                        async with asyncio.timeout(settings.write_timeout_s):
                            await writer.drain()
                    except TimeoutError:
                        log.warning("device %s: %s does not read its ACKs; closing it", self.spec.id, peer)
                        return
        finally:
            if acks is not None and not acks.done():  # a sender that closed its side still gets its ACKs
                await asyncio.wait([acks], timeout=settings.write_timeout_s)

    # -- serial line -----------------------------------------------------------------------------
    async def _serial(self) -> None:
        backoff = 0.5
        settings = self.settings
        while True:
            try:
                port = serial.Serial(settings.serial_port, settings.baudrate, timeout=0)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.link.lost(f"cannot open {settings.serial_port}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            log.info("device %s: reading HL7/MLLP on %s at %d baud", self.spec.id, settings.serial_port,
                     settings.baudrate)
            backoff = 0.5
            try:
                await self._read_serial(port)
            finally:
                port.close()
            await asyncio.sleep(backoff)

    async def _read_serial(self, port: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        failed: asyncio.Future[str] = loop.create_future()
        framer = MllpFramer(settings.max_message_bytes)
        backlog = bytearray()
        fd = port.fileno()
        last_byte = last_message = loop.time()

        def fail(reason: str) -> None:
            if not failed.done():
                failed.set_result(reason)

        def flush() -> None:
            # pyserial keeps the descriptor non-blocking; its own write() would spin on EAGAIN.
            while backlog:
                try:
                    written = os.write(fd, backlog)
                except BlockingIOError:
                    loop.add_writer(fd, flush)
                    return
                except OSError as exc:
                    fail(f"write failed: {exc}")
                    return
                del backlog[:written]
            loop.remove_writer(fd)

        def readable() -> None:
            nonlocal last_byte, last_message
            try:
                data = port.read(max(port.in_waiting, 1))
            except (serial.SerialException, OSError) as exc:
                fail(f"read failed: {exc}")
                return
            if not data:
                return
            last_byte = loop.time()
            bad_before = framer.frames_bad
            for frame in framer.feed(data):
                last_message = last_byte
                backlog.extend(wrap(self.handle(frame)))
            self.link.frames_bad += framer.frames_bad - bad_before
            self._noise(framer, settings.serial_port)
            if len(backlog) > MAX_SERIAL_BACKLOG:
                fail("the line does not take our ACKs")
                return
            flush()

        loop.add_reader(fd, readable)
        try:
            while not failed.done():
                await asyncio.wait([failed], timeout=0.25)
                now = loop.time()
                if framer.pending() and now - last_byte > settings.partial_timeout_s:
                    self._throttled("partial", "device %s: partial message on %s timed out, %d bytes dropped",
                                    self.spec.id, settings.serial_port, framer.pending())
                    framer.reset()
                    self.link.frames_bad += 1
                if settings.silence_s and now - last_message > settings.silence_s and self.link.state != "lost":
                    self.link.lost(f"no message for {settings.silence_s:.0f} s")
            self.link.lost(failed.result())
            log.warning("device %s: %s: %s", self.spec.id, settings.serial_port, failed.result())
        finally:
            loop.remove_reader(fd)
            loop.remove_writer(fd)


def _all(futures: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """A future done when all of ``futures`` are, whatever their outcome (each is read where it is used)."""
    every: asyncio.Future[None] = futures[0].get_loop().create_future()
    left = len(futures)

    def one(_: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if not left and not every.done():
            every.set_result(None)

    for future in futures:
        future.add_done_callback(one)
    return every


def _control(decoded: Decoded) -> str:
    """The sender's MSH-10 for log lines, or '?' when the header was unreadable."""
    return decoded.header.control_id if decoded.header and decoded.header.control_id else "?"

