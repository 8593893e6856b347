"""A simulated IHE PCD Alarm Manager (a Vocera/Ascom/Spok-type system): receives ORU^R40 over MLLP, answers ACK^R40.

``mode`` chooses its behaviour: ``ack`` answers every message with ``AA``; ``never`` reads and keeps
messages but never answers (a hung manager); ``reject`` answers ``AR``. What it received is kept in
``received`` (payloads) for tests. Run it with ``python -m simulators.alarm_manager --port 2576``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Literal

from devices.mllp import MllpFramer, wrap

log = logging.getLogger(__name__)

Mode = Literal["ack", "never", "reject"]


def _fields(payload: bytes) -> list[str]:
    """The MSH fields of a message (``[]`` when it does not start with MSH)."""
    text = payload.decode("utf-8", errors="replace")
    first = text.replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return []
    return first.split(first[3])


def ack_for(payload: bytes, code: str = "AA") -> bytes:
    """The ACK^R40 (unframed) for one received message."""
    msh = _fields(payload)
    control = msh[9] if len(msh) > 9 else ""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    sender, facility = (msh[2] if len(msh) > 2 else ""), (msh[3] if len(msh) > 3 else "")
    return (f"MSH|^~\\&|ALARM_MANAGER|SIM|{sender}|{facility}|{now}||ACK^R40^ACK|AM{control}|P|2.6\r"
            f"MSA|{code}|{control}\r").encode()


class AlarmManager:
    """The TCP server; ``port`` 0 takes a free one (read it back after :meth:`start`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, mode: Mode = "ack") -> None:
        """Not listening until :meth:`start`."""
        self.host = host
        self.port = port
        self.mode: Mode = mode
        self.received: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(AttributeError):
                self._server.close_clients()  # type: ignore[attr-defined]  # Python 3.13+
            await self._server.wait_closed()

    async def wait_for(self, count: int, within_s: float) -> list[bytes]:
        """Wait until ``count`` messages arrived (raise ``TimeoutError`` otherwise)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.received) >= count), within_s)
        return list(self.received)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        framer = MllpFramer()
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    async with self._arrived:
                        self.received.append(frame.payload)
                        self._arrived.notify_all()
                    if self.mode == "never":
                        continue
                    writer.write(wrap(ack_for(frame.payload, "AA" if self.mode == "ack" else "AR")))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def _main(port: int, mode: Mode) -> None:
    manager = AlarmManager("127.0.0.1", port, mode)
    await manager.start()
    log.info("simulated Alarm Manager on 127.0.0.1:%d (%s)", manager.port, mode)
    while True:
        count = len(manager.received)
        await asyncio.sleep(5)
        if len(manager.received) != count:
            log.info("%d messages received", len(manager.received))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2576)
    parser.add_argument("--mode", choices=("ack", "never", "reject"), default="ack")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.mode))
