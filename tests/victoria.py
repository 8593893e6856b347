"""A victoria-metrics server of the test's own: free port, its own data directory, stoppable."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

BINARY = "/usr/bin/victoria-metrics"
RETENTION = "31d"


class VictoriaMetrics:
    """One victoria-metrics process with dedup on (1 ms) so a replayed sample overwrites itself."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("victoria-metrics") or BINARY
        if not Path(binary).exists():
            pytest.fail("victoria-metrics is not installed: `make test` installs it (apt-get install victoria-metrics)")
        self.binary = binary
        self.port = free_port()
        self.data = workdir / "vmdata"
        self.log = workdir / "victoria-metrics.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data}",
            f"-retentionPeriod={RETENTION}",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=ERROR",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"victoria-metrics did not answer /health on port {self.port}")

    def flush(self) -> None:
        """Make every accepted sample searchable (VM buffers the newest second or so)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5):
            pass

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A fresh, empty victoria-metrics for one test."""
    server = VictoriaMetrics(tmp_path)
    server.start()
    yield server
    server.stop()
