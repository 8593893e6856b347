"""Fault tests of the delivery path, each ending with the history check (accepted vs stored vs shed).

Real parts only: a Mosquitto of the test's own (killed and restarted), the SQLite outbox and store,
and for the kill -9 test a gateway in a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from devices.clock import now_ms
from devices.contract import DeviceEvent
from gateway.service import Gateway, GatewaySettings
from ingest.service import Ingest
from storage.sqlite import SqliteStore
from tests.conftest import Mosquitto
from tests.history import check
from tests.procs.load import produce
from wardlink.config import load

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


async def drained(gateway_outbox: Path, store: Path, within: float) -> None:
    """Wait until every accepted reading is stored (or time runs out; the history check then says why)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if os.path.exists(store) and check(gateway_outbox, store).lost == 0:
            return
        await asyncio.sleep(0.5)


# 30 s in the suite; the 60 s of RELIABILITY.md 3 in `make soak`.
@pytest.mark.parametrize("outage_s", [30, pytest.param(60, marks=pytest.mark.soak)])
async def test_broker_down_under_load_loses_and_duplicates_nothing(mosquitto: Mosquitto, tmp_path: Path,
                                                                   outage_s: int) -> None:
    site = load(env={}).site
    devices = [d.id for d in site.devices_of("gw-icu")]
    store = SqliteStore(tmp_path / "ts.db")
    outbox = tmp_path / "outbox.db"
    gateway = Gateway(site, "gw-icu", outbox, mosquitto.address,
                      GatewaySettings(resend_after_s=2.0, uplink_alarm_s=2.0), drivers=False)
    ingest = Ingest(site, store, mosquitto.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(gateway.run()), asyncio.create_task(ingest.run()),
             asyncio.create_task(produce(gateway, devices, per_tick=5, tick_s=0.02, stop=stop))]
    try:
        await asyncio.sleep(4)
        assert store.stats().observations > 0, "nothing flowed before the fault"
        mosquitto.stop()
        onsets = []
        for n in range(outage_s // 5):  # a device alarm every 5 s of the outage
            onsets.append(now_ms())
            gateway.accept([DeviceEvent(device=devices[0], stream="alarms", seq=0, ts=onsets[-1],
                                        event="MDC_EVT_ECG_LEAD_OFF", alarm_kind="technical", priority="high",
                                        phase="start" if n % 2 == 0 else "end", text="ECG lead off")])
            await asyncio.sleep(5)
        depth_during_outage = gateway.outbox.depth()
        mosquitto.start()
        restarted = loop.time()
        for _ in range(1200):  # at most 60 s
            if len(store.events(device=devices[0], start_ms=0, end_ms=2**62)) >= len(onsets):
                break
            await asyncio.sleep(0.05)
        alarms_after_s = loop.time() - restarted
        print(f"\nbroker down {outage_s} s: {len(onsets)} alarms stored {alarms_after_s:.2f} s after recovery")
        await asyncio.sleep(4)
        stop.set()
        produced = await tasks[2]
        await drained(outbox, tmp_path / "ts.db", within=60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    history = check(outbox, tmp_path / "ts.db")
    alarms = check(outbox, tmp_path / "ts.db", ("alarms",), table="events")
    store_events = store.events(device="gw-icu", start_ms=0, end_ms=2**62)
    alarm_onsets = sorted(e.ts for e in store.events(device=devices[0], start_ms=0, end_ms=2**62))
    store.close()
    assert history.accepted == produced
    assert depth_during_outage > outage_s * 8 * 5 * 40 * 0.5  # the outage's readings waited in the outbox
    assert (alarms.stored, alarms.duplicated, alarms.missing) == (len(onsets), 0, [])
    assert alarm_onsets == onsets  # each alarm with its original onset time ...
    assert alarms_after_s < 5.0  # ... within 5 s of the broker's recovery (RELIABILITY.md 3)
    assert (history.lost, history.duplicated, history.missing) == (0, 0, [])
    assert history.stored == produced
    phases = [(e.event, e.phase) for e in store_events]  # type: ignore[union-attr]
    assert phases == [("gateway.uplink_lost", "start"), ("gateway.uplink_lost", "end")]


async def test_gateway_killed_mid_stream_loses_and_duplicates_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    site = load(env={}).site
    store = SqliteStore(tmp_path / "ts.db")
    outbox = tmp_path / "outbox.db"
    ingest = Ingest(site, store, mosquitto.address)
    ingest_task = asyncio.create_task(ingest.run())
    command = [sys.executable, "-m", "tests.procs.gateway_load", str(outbox), mosquitto.address.url]
    try:
        for _ in range(3):  # kill -9 three times, each mid-stream; each run resumes the outbox
            proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(3)
            assert proc.poll() is None, "the gateway process died by itself"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        before = check(outbox, tmp_path / "ts.db")
        assert before.accepted > 10_000
        # What the killed gateways accepted is in the outbox: a gateway that produces nothing delivers it.
        gateway = Gateway(site, "gw-icu", outbox, mosquitto.address, GatewaySettings(resend_after_s=2.0),
                          drivers=False)
        gateway_task = asyncio.create_task(gateway.run())
        await drained(outbox, tmp_path / "ts.db", within=60)
        gateway_task.cancel()
        await asyncio.gather(gateway_task, return_exceptions=True)
    finally:
        ingest_task.cancel()
        await asyncio.gather(ingest_task, return_exceptions=True)
    history = check(outbox, tmp_path / "ts.db")
    store.close()
    assert history.accepted == before.accepted
    assert (history.lost, history.duplicated, history.missing) == (0, 0, [])


def test_history_check_sees_loss_and_duplicates(tmp_path: Path) -> None:
    box = sqlite3.connect(tmp_path / "o.db")
    box.executescript("CREATE TABLE streams (device, stream, next_seq); CREATE TABLE counters (name, value);"
                      "CREATE TABLE outbox (device, stream, last_seq);"
                      "INSERT INTO streams VALUES ('d', 'numerics', 4);"
                      "INSERT INTO outbox VALUES ('d', 'numerics', 5);")
    box.commit()
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript("CREATE TABLE observations (device, stream, seq);"
                     "INSERT INTO observations VALUES ('d','numerics',1),('d','numerics',2),('d','numerics',2);")
    db.commit()
    history = check(tmp_path / "o.db", tmp_path / "s.db")
    assert (history.accepted, history.stored, history.duplicated, history.lost) == (5, 2, 1, 3)
    assert history.missing == ["d/numerics: 3 missing, first 3"]


async def test_a_restarted_ingest_worker_gets_what_was_sent_while_it_was_away_at_once(mosquitto: Mosquitto,
                                                                                     tmp_path: Path) -> None:
    """A shared subscription with nobody in it drops messages; the gateway resends on the worker's new session.

    The resend timer is set to a minute, so only the new-session resend can deliver within the bound.
    """
    site = load(env={}).site
    devices = [d.id for d in site.devices_of("gw-icu")]
    store = SqliteStore(tmp_path / "ts.db")
    outbox = tmp_path / "outbox.db"
    gateway = Gateway(site, "gw-icu", outbox, mosquitto.address, GatewaySettings(resend_after_s=60.0), drivers=False)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(gateway.run()),
             asyncio.create_task(produce(gateway, devices, per_tick=5, tick_s=0.02, stop=stop))]
    ingest_task = asyncio.create_task(Ingest(site, store, mosquitto.address).run())
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(3)
        ingest_task.cancel()
        await asyncio.gather(ingest_task, return_exceptions=True)
        released_before = gateway.released
        await asyncio.sleep(3)  # the gateway publishes into the group with no member: the broker drops it
        assert gateway.outbox.depth() > 0
        ingest_task = asyncio.create_task(Ingest(site, store, mosquitto.address).run())
        stop.set()
        produced = await tasks[1]
        back = loop.time()
        await drained(outbox, tmp_path / "ts.db", within=30)
        took = loop.time() - back
    finally:
        for task in (*tasks, ingest_task):
            task.cancel()
        await asyncio.gather(*tasks, ingest_task, return_exceptions=True)
    history = check(outbox, tmp_path / "ts.db")
    store.close()
    print(f"\ningest away 3 s: everything stored {took:.2f} s after it came back")
    assert gateway.released > released_before
    assert history.accepted == produced
    assert (history.lost, history.duplicated, history.missing) == (0, 0, [])
    assert took < 10, "not stored before the resend timer: the new ingest session did not trigger a resend"
