"""A virtual RS-485 cable on pseudo-terminals, so both the gateway and the simulated devices open a port path.

A pty has one path (the slave) and one file descriptor (the master). pymodbus's serial server needs a
path as much as the gateway does, so the line is two pty pairs whose masters this module bridges byte
for byte in the event loop: ``port`` for the gateway, ``device_port`` for the devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios

log = logging.getLogger(__name__)


def make_raw(fd: int) -> None:
    """Raw 8N1 on a terminal: no echo, no line editing, no CR/LF translation, no software flow control."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR | termios.IGNCR
               | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class PtyLine:
    """Two pty pairs bridged master to master: a null-modem cable between ``port`` and ``device_port``."""

    def __init__(self) -> None:
        """Open both pairs; :meth:`start` begins carrying bytes (inside the running loop)."""
        self._fds: list[int] = []
        self.bytes_carried = 0
        self.bytes_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            self._gw_master, gw_slave = self._pair()
            self._dev_master, dev_slave = self._pair()
            self.port: str = os.ttyname(gw_slave)
            self.device_port: str = os.ttyname(dev_slave)
        except OSError:
            self.close()
            raise

    def _pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        # The slave ends stay open here too: with no process holding a slave, reads on its master fail
        # with EIO over and over, which would spin the event loop.
        self._fds += [master, slave]
        make_raw(slave)
        os.set_blocking(master, False)
        return master, slave

    def start(self) -> None:
        """Carry bytes both ways from now on."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._gw_master, self._carry, self._gw_master, self._dev_master)
        self._loop.add_reader(self._dev_master, self._carry, self._dev_master, self._gw_master)

    def _carry(self, source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except OSError:  # BlockingIOError when a wake-up found nothing
            return
        try:
            written = os.write(target, data)
        except OSError as exc:
            written = 0
            log.debug("pty line: %d bytes lost (%s)", len(data), exc)
        self.bytes_carried += written
        self.bytes_dropped += len(data) - written

    def close(self) -> None:
        """Stop carrying and close every descriptor; the ports' users then see their line fail."""
        if self._loop is not None and not self._loop.is_closed():
            for fd in (self._gw_master, self._dev_master):
                self._loop.remove_reader(fd)
        self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
