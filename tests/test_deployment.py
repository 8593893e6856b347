"""Wardlink as a hospital deploys it: every service a process of its own, meeting on Mosquitto.

`wardlink simulate` plays the devices and writes where they are; `wardlink serve` runs each gateway,
ingest, alerts and the API (with the SQLite store, which several processes may open).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devices.clock import now_ms
from tests.auth import staff, system_bearer
from tests.conftest import Mosquitto, free_port
from tests.scenarios import RULES, fast_scenario, to_toml
from wardlink.config import load
from wardlink.runner import open_relational

pytestmark = pytest.mark.slow
WARDLINK = [sys.executable, "-m", "wardlink.cli"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_every_service_in_its_own_process(mosquitto: Mosquitto, tmp_path: Path,
                                          processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    config = tmp_path / "wardlink.toml"
    config.write_text(to_toml({
        "data_dir": str(tmp_path / "data"), "store": {"engine": "sqlite"}, "api": {"port": port},
        "broker": {"url": mosquitto.address.url},
        "simulation": {"scenario": str(fast_scenario(tmp_path / "scenario.toml"))},
        "alerts": {"rules": RULES},
    }))
    devices = tmp_path / "devices.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    # The hospital's people: a nurse of the ICU (the demo users are `wardlink run`'s only).
    settings = load([config])
    state = open_relational(settings, settings.site)
    staff(state, ("n-icu", "nurse", "ICU"), ("b-biomed", "biomed", None), at=now_ms() - 60_000)
    state.close()

    def spawn(name: str, *args: str) -> None:
        with (logs / f"{name}.log").open("wb") as out:  # the child keeps its own copy of the descriptor
            processes.append(subprocess.Popen([*WARDLINK, *args, "--config", str(config)], stdout=out,
                                              stderr=subprocess.STDOUT, env={**os.environ}))

    spawn("simulate", "simulate", "--write-config", str(devices))
    deadline = time.monotonic() + 20
    while not devices.exists():
        assert time.monotonic() < deadline, (logs / "simulate.log").read_text()
        time.sleep(0.2)
    for gateway in ("gw-icu", "gw-w3"):
        spawn(gateway, "serve", "gateway", "--gateway", gateway, "--config", str(devices))
    spawn("ingest", "serve", "ingest")
    spawn("alerts", "serve", "alerts")
    spawn("api", "serve", "api")

    api = f"http://127.0.0.1:{port}/api/v1"
    nurse = system_bearer(tmp_path / "data")

    def wait_for(what: str, check: object, seconds: float) -> object:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                result = check()  # type: ignore[operator]
                if result:
                    return result
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        dump = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.iterdir()))
        raise AssertionError(f"timed out waiting for {what}\n{dump}")

    wait_for("ICU-01 vitals", lambda: httpx.get(f"{api}/beds/ICU-01/vitals", timeout=2, headers=nurse).json(), 40)
    alert = wait_for("the ICU-03 SpO2 alarm", lambda: [
        a for a in httpx.get(f"{api}/alerts", params={"state": "active", "bed": "ICU-03"}, timeout=2,
                             headers=nurse).json()
        if a["type"] == "spo2_low"], 60)
    assert alert
    health = wait_for("every gateway and service online", lambda: (lambda h: h if all(
        c["state"] == "online" for c in (*h["gateways"].values(), *h["services"].values())) and len(
        h["gateways"]) == 2 else None)(httpx.get(f"{api}/health", timeout=2, headers=nurse).json()), 30)
    assert isinstance(health, dict)
    assert set(health["services"]) == {"ingest/ingest-1", "alerts/alerts-1"}
    for proc in processes:
        assert proc.poll() is None, f"a service died: {proc.args}"
