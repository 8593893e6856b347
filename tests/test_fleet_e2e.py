"""Fleet management end to end (issue 8): the whole path on real parts, each figure against the scenario's truth.

Firmware: the shipped hospital's monitors (serial WLB/1 on ptys, HL7 PCD-01 over MLLP) announce their
firmware through the gateway, Mosquitto and ingest, and the fleet registry shows it and the drift.
Gateway health: a gateway process killed with SIGKILL is offline by its MQTT last will, its devices with it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from devices.clock import now_ms
from tests.auth import system_bearer
from tests.conftest import Mosquitto
from tests.scenarios import to_toml
from tests.test_end_to_end import running, until, ward_config
from tests.test_fleet import Fleet, get
from wardlink.config import Config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
HL7_MONITORS = [f"hl7-00a0c9fffe00030{n}" for n in (1, 2, 3, 4)]
MONITORS = [*(f"mon-icu-0{n}" for n in range(1, 9)), *HL7_MONITORS]


async def test_monitors_report_their_firmware_to_the_fleet_registry(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = ward_config(tmp_path / "data", mosquitto.address.url)
    ident_every(config, 1.0)
    async with running(config) as system, httpx.AsyncClient(
            base_url=system.api_url, timeout=5, headers=system_bearer(config.data_path, "b-biomed")) as api:

        async def firmware() -> dict[str, str] | None:
            found = {d["id"]: d["firmware"] for d in (await api.get("/api/v1/fleet/devices")).json()
                     if d["id"] in MONITORS}
            return found if len(found) == len(MONITORS) and all(found.values()) else None

        reported = await until(firmware, 15, "every monitor's firmware in the fleet registry")
        # hospital.toml: the ICU's serial monitors run 1.4.2 but mon-icu-08 (1.3.9); 3 West's HL7 monitors (discovered
        # at run time) 3.2.0 but W3-04 (3.1.4).
        assert reported == {**dict.fromkeys(MONITORS, "1.4.2"), "mon-icu-08": "1.3.9",
                            **dict.fromkeys(HL7_MONITORS, "3.2.0"), "hl7-00a0c9fffe000304": "3.1.4"}
        models = {(m["manufacturer"], m["model"]): m for m in (await api.get("/api/v1/fleet/firmware")).json()}
        wlb = models["Wardlink Simulation", "WLB-100"]
        assert (wlb["versions"], wlb["latest"], wlb["drift"], wlb["behind"], wlb["unknown"]) == (
            {"1.3.9": 1, "1.4.2": 7}, "1.4.2", True, ["mon-icu-08"], [])
        one = (await api.get("/api/v1/fleet/devices/mon-icu-01")).json()
        assert (one["serial_number"], one["discovered"]) == ("SIM-mon-icu-01", False)
        w3 = (await api.get("/api/v1/fleet/devices/hl7-00a0c9fffe000304")).json()
        assert (w3["bed"], w3["unit"], w3["discovered"]) == ("W3-04", "W3", True)


def ident_every(config: Config, seconds: float) -> None:
    """The serial monitors' IDENT period in the scenario (30 s, as WLB/1 says, would outlast the test: the gateway
    opens its ports after the twins started, so it hears the periodic IDENT, not the first one)."""
    path = Path(config.simulation.scenario)
    scenario = tomllib.loads(path.read_text())
    for monitor in scenario["bedside"]:
        monitor["ident_interval_s"] = seconds
    path.write_text(to_toml(scenario))


async def test_a_killed_gateway_goes_offline_by_its_last_will_and_comes_back(mosquitto: Mosquitto,
                                                                           tmp_path: Path) -> None:
    # A gateway process reading a monitor on a pty, SIGKILLed: the broker publishes its last will, and the fleet
    # (the API's live view, recorder and routes) shows it offline and its device down with it; restarted, online.
    fleet = Fleet(tmp_path, mosquitto.address)
    command = [sys.executable, "-m", "tests.procs.gateway_fleet", str(tmp_path / "outbox.db"), mosquitto.address.url]
    view = asyncio.create_task(fleet.view.run())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fleet.app), base_url="http://test") as client:

            def fleet_says(gateway: str, device: str) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    gateways = {g["gateway"]: g for g in await get(client, "/api/v1/fleet/gateways")}
                    health = await get(client, "/api/v1/fleet/devices/mon-icu-01/health")
                    return (gateways["gw-icu"]["state"], health["state"]) == (gateway, device)
                return check

            for run in range(2):
                procs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                await until(fleet_says("online", "connected"), 8, f"gw-icu online with mon-icu-01 (run {run})")
                if run == 0:
                    before = {g["gateway"]: g for g in await get(client, "/api/v1/fleet/gateways")}
                    heard = before["gw-icu"]["last_heard"]
                    procs[0].send_signal(signal.SIGKILL)
                    procs[0].wait(5)
                    await until(fleet_says("offline", "gateway_offline"), 5, "gw-icu's last will")
                    await fleet.gauges.refresh()
                    text = (await client.get("/metrics")).text
                    assert 'wardlink_fleet_gateways{state="offline"} 1' in text
                    assert 'wardlink_fleet_devices{state="connected"} 0' in text
                    # Every device of gw-icu is down with its gateway, not lost on its own.
                    gateways = {g["gateway"]: g for g in await get(client, "/api/v1/fleet/gateways")}
                    assert gateways["gw-icu"]["devices"] == {"gateway_offline": 12}
                    # Last heard: its newest status, not the session-start time its last will carries.
                    assert gateways["gw-icu"]["last_heard"] >= heard > fleet.view.gateways["gw-icu"].ts
            await fleet.recorder.drain()
            log = fleet.state.fleet.links(start=0, end=now_ms() + 1, subjects=["gw-icu", "mon-icu-01"])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
        view.cancel()
        await asyncio.gather(view, return_exceptions=True)
        fleet.state.close()
    # The connection log in time order (the last will recorded when heard, not at the time it carries).
    assert [c.state for c in log if c.kind == "gateway"] == ["online", "offline", "online"]
    assert [c.state for c in log if c.kind == "device" and c.state != "connecting"] == [
        "connected", "gateway_offline", "connected"]
