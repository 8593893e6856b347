"""What every benchmark needs: a count over wall and CPU time, free ports, and stopping its own processes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Final

LOAD_NICE: Final = 10
"""Niceness of a load generator: it stands for gateways and monitors whose CPUs are elsewhere."""


def as_remote_load() -> None:
    """Lower this process's scheduling priority, so the services measured on a shared machine get the CPU first.

    A bench's publisher (or the soak's gateways) plays devices and gateways that run on machines of their
    own in a hospital; on one 2-core machine it would otherwise take CPU from what is being measured.
    """
    os.nice(LOAD_NICE)


@dataclass(frozen=True, slots=True)
class Rate:
    """A count over wall and CPU seconds."""

    count: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        """Per wall-clock second."""
        return self.count / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        """Per CPU-second of this process (all its threads)."""
        return self.count / max(self.cpu_s, 1e-9)


class Clock:
    """Wall and CPU time since construction."""

    def __init__(self) -> None:
        """Start now."""
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def elapsed(self) -> float:
        """Wall seconds so far."""
        return time.perf_counter() - self.wall

    def rate(self, count: int) -> Rate:
        """``count`` over the time so far."""
        return Rate(count, time.perf_counter() - self.wall, time.process_time() - self.cpu)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Terminate a process of the benchmark's own, killing it if it does not end within ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
