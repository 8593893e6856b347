"""Fleet management end to end (issue 8): the whole path on real parts, each figure against the scenario's truth.

Firmware: the shipped hospital's monitors (serial WLB/1 on ptys, HL7 PCD-01 over MLLP) announce their
firmware through the gateway, Mosquitto and ingest, and the fleet registry shows it and the drift.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import httpx
import pytest

from tests.auth import system_bearer
from tests.conftest import Mosquitto
from tests.scenarios import to_toml
from tests.test_end_to_end import running, until, ward_config
from wardlink.config import Config

pytestmark = pytest.mark.slow
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
