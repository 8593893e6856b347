"""The whole path on real transports: pty serial -> gateway -> Mosquitto -> ingest/alerts -> API/WebSocket.

The simulated ward runs on pseudo-terminals, the gateway reads them with pyserial, and everything
meets on a real Mosquitto started for the test. The persistence delay is shortened to keep the test
quick; the artefact patient's 2-second dip is still shorter than it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pytest
import websockets

from devices.clock import now_ms
from tests.auth import system_bearer
from tests.conftest import Mosquitto, free_port
from tests.scenarios import RULES, fast_scenario
from tests.victoria import VictoriaMetrics, victoria  # noqa: F401  (the fixture)
from wardlink.config import Config, load
from wardlink.runner import System, run_system

pytestmark = pytest.mark.slow


def ward_config(data_dir: Path, broker_url: str) -> Config:
    """The shipped hospital scenario, with ICU-03 desaturating at once and ICU-05's dips every 8 s."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = fast_scenario(data_dir.parent / "scenario.toml")
    return load(env={}, overrides={
        "data_dir": str(data_dir), "broker": {"url": broker_url}, "api": {"port": free_port()},
        "alerts": {"rules": RULES}, "simulation": {"scenario": str(path)},
        "gateway": {"resend_after_s": 2.0},
    })


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[System]:
    stop = asyncio.Event()
    ready: asyncio.Future[System] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_system(config, stop, on_ready=ready.set_result))
    done, _ = await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready in done, "the system did not start within 30 s"
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.25)


async def test_simulated_ward_end_to_end(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = ward_config(tmp_path / "data", mosquitto.address.url)
    async with running(config) as system, httpx.AsyncClient(base_url=system.api_url, timeout=5,
                                                            headers=system_bearer(config.data_path)) as api:
        assert (await api.get("/api/v1/beds", headers={"Authorization": ""})).status_code == 401
        ws_url = system.api_url.replace("http", "ws") + "/api/v1/alerts/stream"
        ticket = (await api.post("/api/v1/auth/ws-ticket")).json()["ticket"]
        async with websockets.connect(f"{ws_url}?ticket={ticket}") as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert snapshot["type"] == "snapshot"

            beds = (await api.get("/api/v1/beds")).json()
            assert [b["id"] for b in beds][:8] == [f"ICU-0{i}" for i in range(1, 9)]
            assert beds[0]["devices"][0]["id"] == "mon-icu-01"

            async def vitals() -> dict[str, Any]:
                rows = (await api.get("/api/v1/beds/ICU-01/vitals")).json()
                return {r["metric"]: r for r in rows}

            latest = await until(lambda: _has(vitals, "MDC_PULS_OXIM_SAT_O2", "MDC_ECG_HEART_RATE"), 20,
                                 "SpO2 and heart rate of ICU-01 in the API")
            spo2 = latest["MDC_PULS_OXIM_SAT_O2"]
            assert (spo2["code"], spo2["unit"], spo2["device"]) == (150456, "%", "mon-icu-01")
            assert 90 <= spo2["value"] <= 100
            assert latest["MDC_ECG_HEART_RATE"]["unit"] == "/min"
            assert any(m.startswith("WLB_PARAM_") for m in latest), "unknown vendor parameter was dropped"

            # The desaturating patient's alarm arrives over the WebSocket.
            async def next_alert() -> dict[str, Any]:
                while True:
                    message = json.loads(await ws.recv())
                    # .get: a unit's alerts (waste handover, after 20:00 at the site) have no bed
                    if message["type"] == "alert" and message["alert"].get("bed") == "ICU-03":
                        return dict(message["alert"])

            alert = await asyncio.wait_for(next_alert(), 45)
            assert (alert["bed"], alert["type"], alert["priority"], alert["state"]) == (
                "ICU-03", "spo2_low", "high", "active")
            assert alert["onset"] <= alert["updated"] - 3000  # onset is the first low reading

        active = (await api.get("/api/v1/alerts", params={"state": "active"})).json()
        assert [a["id"] for a in active if a.get("bed") == "ICU-03"] == [alert["id"]]
        # Give the artefact patient time for at least two dips (every 8 s) while ICU-03 stays low.
        await asyncio.sleep(10)
        active = (await api.get("/api/v1/alerts", params={"state": "active"})).json()
        assert "ICU-03" in {a.get("bed") for a in active}
        assert "ICU-05" not in {a.get("bed") for a in active}, "the 2-second artefact dips raised an alarm"
        # Every device is connected: no technical alarm but the alarm system's own about delivery (the demo's
        # nurses have no personal stream open in this test, so the ICU-03 alarm reached nobody: an alarm too).
        technical = {a["type"] for a in active if a["alarm_kind"] == "technical"}
        assert technical <= {"delivery.no_receiver", "delivery.unconfirmed"}, f"technical alarms: {active}"

        # A closed window that ended seconds ago, so both queries below see the same stored readings.
        window = {"start": str(now_ms() - 600_000), "end": str(now_ms() - 5_000)}
        history = (await api.get("/api/v1/beds/ICU-03/vitals/spo2", params={**window, "step": "5s"})).json()
        assert history["metric"] == "MDC_PULS_OXIM_SAT_O2"
        assert len(history["points"]) >= 3
        assert all(p["min"] <= p["mean"] <= p["max"] for p in history["points"])
        assert history["points"][-1]["mean"] < 90
        raw = (await api.get("/api/v1/beds/ICU-03/vitals/spo2", params=window)).json()["points"]
        assert sum(p["count"] for p in history["points"]) == len(raw)

        health = (await api.get("/api/v1/health")).json()
        assert health["broker"]["state"] == "ok"
        for gateway_id in ("gw-icu", "gw-w3"):
            assert health["gateways"][gateway_id]["state"] == "online"
            assert set(health["gateways"][gateway_id]["detail"]["devices"].values()) == {"connected"}
        assert health["services"]["ingest/ingest-1"]["state"] == "online"

        biomed = system_bearer(config.data_path, "b-biomed")  # the HL7 monitors are in 3 West: not n-icu's
        assert "hl7-00a0c9fffe000301" not in {d["id"] for d in (await api.get("/api/v1/devices")).json()}
        devices = {d["id"]: d for d in (await api.get("/api/v1/devices", headers=biomed)).json()}
        assert {d["state"] for d in devices.values() if not d["discovered"]} == {"connected"}
        # The monitors behind the HL7 vendor gateway were discovered, with their EUI-64 as identifier.
        discovered = devices["hl7-00a0c9fffe000301"]
        assert (discovered["discovered"], discovered["identifiers"], discovered["bed"], discovered["gateway"]) == (
            True, {"eui64": "00A0C9FFFE000301"}, "W3-01", "gw-w3")
        # The scenario's tagged equipment is registered (12 UHF tags, 6 BLE beacons) and placed in rooms.
        facilities = system_bearer(config.data_path, "f-facilities")

        async def placed() -> list[dict[str, Any]]:
            assets = (await api.get("/api/v1/facilities/assets", headers=facilities)).json()
            return list(assets) if len(assets) == 18 and any(a["room"] for a in assets) else []

        assets = await until(placed, 30, "the simulated assets registered and placed")
        assert {a["unit"] for a in assets} == {"W3"}
        assert {a["type"] for a in assets} == {"infusion_pump", "wheelchair", "monitor", "bed"}
        vitals = (await api.get("/api/v1/devices/hl7-00a0c9fffe000301/vitals", headers=biomed)).json()
        assert "MDC_PULS_OXIM_SAT_O2" in {v["metric"] for v in vitals}
        assert (await api.get("/api/v1/beds/NOPE/vitals")).status_code == 404
        other_unit = await api.get("/api/v1/beds/W3-01/vitals")  # n-icu's scope is the ICU
        assert (other_unit.status_code, other_unit.json()["detail"]) == (404, "bed 'W3-01' not found")
        gateways = system.gateways

    # After a clean stop every accepted reading is stored exactly once and released from the outbox.
    db = duckdb.connect(str(tmp_path / "data" / "timeseries.duckdb"), read_only=True)
    stored = db.execute("SELECT count(*), count(DISTINCT device || '/' || stream || '/' || seq) "
                        "FROM observations").fetchone()
    assert stored[0] == stored[1] > 0
    assert stored[0] <= sum(g.accepted for g in gateways)  # what was in flight at stop waits in the outbox


async def _has(fetch: Callable[[], Awaitable[dict[str, Any]]], *metrics: str) -> dict[str, Any] | None:
    got = await fetch()
    return got if all(m in got for m in metrics) else None


async def test_second_run_resumes_on_the_same_data(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = ward_config(tmp_path / "data", mosquitto.address.url)
    async with running(config) as system, httpx.AsyncClient(base_url=system.api_url, timeout=5,
                                                            headers=system_bearer(config.data_path)) as api:
        await until(lambda: _open_alert(api), 45, "the ICU-03 alarm")
        first = await _open_alert(api)
    config = ward_config(tmp_path / "data", mosquitto.address.url)
    async with running(config) as system, httpx.AsyncClient(base_url=system.api_url, timeout=5,
                                                            headers=system_bearer(config.data_path)) as api:
        again = await until(lambda: _open_alert(api), 30, "the restored ICU-03 alarm")
        assert again["id"] == first["id"], "the open alarm was raised a second time after restart"
        await asyncio.sleep(3)
        history = (await api.get("/api/v1/beds/ICU-01/vitals/spo2", params={"step": "1s"})).json()["points"]
    db = duckdb.connect(str(tmp_path / "data" / "timeseries.duckdb"), read_only=True)
    seqs = [r[0] for r in db.execute("SELECT seq FROM observations WHERE device = 'mon-icu-01' "
                                     "AND metric = 'MDC_PULS_OXIM_SAT_O2' ORDER BY seq").fetchall()]
    assert len(seqs) == len(set(seqs))
    assert len(seqs) >= 10
    assert history[0]["ts"] < history[-1]["ts"] - 3000  # the first run's readings are still there
    outbox = sqlite3.connect(tmp_path / "data" / "outbox-gw-icu.db")
    streams = dict(outbox.execute("SELECT device || '/' || stream, next_seq FROM streams").fetchall())
    assert streams["mon-icu-01/numerics"] > max(seqs)  # numbering went on where it stopped


async def _open_alert(api: httpx.AsyncClient) -> dict[str, Any] | None:
    active = (await api.get("/api/v1/alerts", params={"state": "active", "bed": "ICU-03"})).json()
    spo2 = [a for a in active if a["type"] == "spo2_low"]  # not the delivery alarms about it
    return dict(spo2[0]) if spo2 else None


async def test_the_hospital_on_victoriametrics(mosquitto: Mosquitto, victoria: VictoriaMetrics,  # noqa: F811
                                               tmp_path: Path) -> None:
    """The production store: `store.engine = "victoria"`; vitals and downsampled history come back from it."""
    config = ward_config(tmp_path / "data", mosquitto.address.url)
    config = msgspec.structs.replace(config, store=msgspec.structs.replace(config.store, engine="victoria",
                                                                           url=victoria.url))
    async with running(config) as system, httpx.AsyncClient(base_url=system.api_url, timeout=5,
                                                            headers=system_bearer(config.data_path, "b-biomed")) as api:
        nurse = system_bearer(config.data_path)

        async def spo2_history() -> list[dict[str, Any]]:
            victoria.flush()  # VictoriaMetrics makes new samples searchable about once a second
            points = (await api.get("/api/v1/beds/ICU-01/vitals/spo2", params={"step": "2s"},
                                    headers=nurse)).json()["points"]
            return list(points) if len(points) >= 3 else []

        points = await until(spo2_history, 40, "ICU-01 SpO2 history from VictoriaMetrics")
        assert all(90 <= p["mean"] <= 100 and p["count"] >= 1 for p in points)
        latest = (await api.get("/api/v1/beds/ICU-01/vitals", headers=nurse)).json()
        assert {"MDC_PULS_OXIM_SAT_O2", "MDC_ECG_HEART_RATE"} <= {v["metric"] for v in latest}
        devices = {d["id"] for d in (await api.get("/api/v1/devices")).json()}
        assert "hl7-00a0c9fffe000301" in devices or await until(
            lambda: _discovered(api), 20, "the HL7 monitors' registrations (kept in the side store)")


async def _discovered(api: httpx.AsyncClient) -> bool:
    return "hl7-00a0c9fffe000301" in {d["id"] for d in (await api.get("/api/v1/devices")).json()}
