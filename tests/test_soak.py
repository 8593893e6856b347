"""A simulated 2,000-bed hospital under load (issue 10 item 3): ingest keeps up, memory stays flat, alarms are fast.

Real processes: a Mosquitto of the test's own, ``wardlink serve ingest`` and ``wardlink serve alerts``
(as a deployment runs them), and the hospital's four floor gateways in a load process of their own
(tests/procs/hospital_load.py: about 10,600 readings/s of monitors, pumps, 14,000 tags and waste), which runs
at nice 10: a hospital's gateways have CPUs of their own, so here they take the CPU after the services.
This process is the alarm probe: every 2 s it publishes a low SpO2 reading for one bed on its
gateway's data topic and times the alert's arrival on the bus (the figure ``wardlink bench alerts``
calls "reading -> alert on the bus"), then clears it. Every 5 s it samples each process's RSS, the
ingest worker's lag (its heartbeat) and the gateways' outbox depth.

``make soak`` runs 10 minutes and writes the curve to docs/soak.csv and docs/soak.svg; the suite runs
half a minute of the same load into the test's own directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import pytest

from devices import bus, topics
from devices.clock import now_ms
from devices.contract import Alert, Batch, Observation, ServiceStatus, encode
from state import open_state
from state.db import default_url
from tests.conftest import Mosquitto
from tests.procs.hospital_load import PROBE_BED, SITE_ID, gateway_of, hospital_site, monitor_of

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
DOCS = ROOT / "docs"
SAMPLE_S = 5.0
ALARM_P99_MS = 25.0  # issue 10: alarm latency p99 (reading -> alert on the bus) under 25 ms


@dataclass
class Soak:
    """What the run measured."""

    seconds: float
    samples: list[dict[str, float]] = field(default_factory=list)  # every SAMPLE_S: t, rss per process, lag, depth
    alarm_ms: list[tuple[float, float]] = field(default_factory=list)  # (t, reading -> alert on the bus)
    probes: int = 0
    accepted: int = 0
    load_s: float = 0.0  # how long the load had run when it reported ``accepted``
    final_depth: int = -1
    shed: int = 0
    unmatched: list[int] = field(default_factory=list)  # onsets of probe alerts matching no probe reading
    unanswered: list[int] = field(default_factory=list)  # probe readings whose alert never arrived


def rss_mb(pid: int) -> float:
    """A process's resident set, MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if var == 0 else 60 * sum((t - mx) * (v - my) for t, v in points) / var


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def config(data: Path) -> dict[str, Any]:
    """The services' configuration: the hospital site, no simulation, a delay-0 low-SpO2 rule (medium: not latched)."""
    return {"data_dir": str(data), "site": msgspec.to_builtins(hospital_site()), "simulation": {"enabled": False},
            "alerts": {"rules": [{"name": "spo2_low", "metric": "spo2", "direction": "below", "limit": 90,
                                  "priority": "medium", "delay_s": 0, "hysteresis": 2}]}}


@contextlib.contextmanager
def service(name: str, cfg: Path, url: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``wardlink serve NAME`` as a process of its own, its log in the work directory."""
    with (workdir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "wardlink.cli", "serve", name, "--config", str(cfg),
                                 "--broker", url], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def follow(load_out: IO[str], into: dict[str, Any]) -> threading.Thread:
    """A thread keeping ``into`` up to date with the load process's reports, until it closes its stdout."""

    def read() -> None:
        for line in load_out:
            into.update(json.loads(line))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


async def probe_and_sample(soak: Soak, url: str, pids: dict[str, int], load_state: dict[str, Any]) -> None:
    """The alarm probe and the sampler, for ``soak.seconds``."""
    address = bus.BrokerAddress.parse(url)
    decode_alert = msgspec.json.Decoder(Alert).decode
    decode_status = msgspec.json.Decoder(ServiceStatus).decode
    lag = {"ms": 0.0}
    sent: dict[int, tuple[float, int]] = {}  # probe reading ts -> (run time, perf ns when published)
    arrived: set[str] = set()
    async with bus.client(address, f"soak-probe-{os.getpid()}") as client:
        bus.no_delay(client)
        await client.subscribe(topics.alert_filter(SITE_ID), qos=1)
        await client.subscribe(topics.service_filter(SITE_ID), qos=0)

        async def listen() -> None:
            async for message in client.messages:
                if not isinstance(message.payload, bytes) or not message.payload:
                    continue
                topic = str(message.topic)
                if "/svc/ingest/" in topic:
                    status = decode_status(message.payload)
                    lag["ms"] = float(status.lag_ms or 0)
                elif "/svc/" not in topic:
                    alert = decode_alert(message.payload)
                    if alert.state == "active" and alert.type == "spo2_low" and alert.id not in arrived:
                        at = time.perf_counter_ns()
                        arrived.add(alert.id)
                        # The raising reading: the latest probe at or before the onset (delay 0: the reading's time).
                        raising = max((t for t in sent if t <= alert.onset), default=None)
                        if raising is not None:
                            run_t, published = sent.pop(raising)
                            soak.alarm_ms.append((run_t, (at - published) / 1e6))
                        else:
                            soak.unmatched.append(alert.onset)

        async def sample() -> None:
            started = time.monotonic()
            while True:
                row: dict[str, float] = {"t": round(time.monotonic() - started, 1)}
                for name, pid in pids.items():
                    with contextlib.suppress(OSError):
                        row[f"rss_{name}_mb"] = round(rss_mb(pid), 1)
                row["ingest_lag_ms"] = lag["ms"]
                row["outbox_depth"] = float(load_state["depth"])
                row["accepted"] = float(load_state["accepted"])
                soak.samples.append(row)
                await asyncio.sleep(SAMPLE_S)

        tasks = [asyncio.create_task(listen()), asyncio.create_task(sample())]
        topic = topics.gateway_topic(SITE_ID, gateway_of(1), "data")
        started = time.monotonic()
        seq = 0
        try:
            while time.monotonic() - started < soak.seconds:
                for value in (80.0, 97.0):  # raise, then clear (hysteresis 2: 97 clears a limit of 90)
                    seq += 1
                    ts = now_ms()
                    reading = encode(Batch(gateway=gateway_of(1), sent=ts, items=[Observation(
                        device=monitor_of(PROBE_BED), stream="probe", seq=seq, ts=ts, metric="MDC_PULS_OXIM_SAT_O2",
                        value=value, unit="%", code=150456, bed=PROBE_BED)]))
                    if value < 90:
                        soak.probes += 1
                        sent[ts] = (time.monotonic() - started, time.perf_counter_ns())
                    await client.publish(topic, reading, qos=1)
                    await asyncio.sleep(1.0)
            for _ in range(100):  # stragglers: at most 10 s more
                if not sent:
                    break
                await asyncio.sleep(0.1)
            soak.unanswered = sorted(sent)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def run_soak(mosquitto: Mosquitto, workdir: Path, seconds: float) -> Soak:
    """Start the services and the hospital, probe and sample for ``seconds``, stop the load and let it drain."""
    data = workdir / "data"
    data.mkdir()
    cfg = workdir / "soak.json"
    cfg.write_text(json.dumps(config(data)), encoding="utf-8")
    state = open_state(default_url(data))
    try:
        state.registry.seed_from_site(hospital_site(), now_ms())
    finally:
        state.close()
    soak = Soak(seconds)
    url = mosquitto.address.url
    with service("ingest", cfg, url, workdir) as ingest, service("alerts", cfg, url, workdir) as alerts:
        ready = {"ingest.log": "consuming from", "alerts.log": "rule set"}  # subscribed before the load starts
        for _ in range(600):
            if all(mark in (workdir / name).read_text(errors="replace") for name, mark in ready.items()):
                break
            time.sleep(0.1)
        time.sleep(1)
        load = subprocess.Popen([sys.executable, "-m", "tests.procs.hospital_load",
                                 json.dumps({"url": url, "workdir": str(workdir)})], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert load.stdin is not None
        assert load.stdout is not None
        pids = {"ingest": ingest.pid, "alerts": alerts.pid, "gateways": load.pid}
        if mosquitto.proc is not None:
            pids["mosquitto"] = mosquitto.proc.pid
        load_state: dict[str, Any] = {"depth": 0, "accepted": 0, "shed": 0}
        reader = follow(load.stdout, load_state)
        try:
            asyncio.run(probe_and_sample(soak, url, pids, load_state))
            soak.accepted = int(load_state["accepted"])
            soak.load_s = float(load_state.get("t", 0.0))  # the load's own clock at that report (one every 5 s)
            assert ingest.poll() is None, "ingest died under the load (see its log)"
            assert alerts.poll() is None, "alerts died under the load (see its log)"
        finally:
            load.stdin.close()
            try:
                load.wait(90)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait(5)
            reader.join(5)
            load.stdout.close()
        soak.final_depth = int(load_state["depth"])
        soak.shed = int(load_state["shed"])
    return soak


def figures(soak: Soak) -> dict[str, float]:
    """The run's figures: alarm latency percentiles, lag, depth, RSS level and slope per process (steady half)."""
    latencies = [ms for _, ms in soak.alarm_ms]
    steady = [s for s in soak.samples if s["t"] >= soak.seconds / 2]
    out: dict[str, float] = {
        "seconds": soak.seconds, "probes": float(soak.probes), "alarms_seen": float(len(latencies)),
        "alarm_p50_ms": percentile(latencies, 0.5), "alarm_p99_ms": percentile(latencies, 0.99),
        "alarm_max_ms": max(latencies, default=float("nan")),
        "readings_per_s": soak.accepted / soak.load_s if soak.load_s else 0.0,
        "ingest_lag_max_ms": max((s["ingest_lag_ms"] for s in soak.samples), default=0.0),
        "ingest_lag_p99_ms": percentile([s["ingest_lag_ms"] for s in soak.samples], 0.99),
        "outbox_depth_max": max((s["outbox_depth"] for s in soak.samples), default=0.0),
    }
    for key in sorted({k for s in soak.samples for k in s if k.startswith("rss_")}):
        name = key.removeprefix("rss_").removesuffix("_mb")
        out[f"{name}_rss_end_mb"] = steady[-1].get(key, float("nan")) if steady else float("nan")
        out[f"{name}_rss_slope_mb_per_min"] = slope_per_min([(s["t"], s[key]) for s in steady if key in s])
    return out


def write_curve(soak: Soak, csv_path: Path, svg_path: Path) -> None:
    """The samples as CSV, and an SVG of RSS per process, ingest lag and alarm latency over the run."""
    keys = sorted({k for s in soak.samples for k in s}, key=lambda k: (k != "t", k))
    with csv_path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(soak.samples)
    rss_keys = [k for k in keys if k.startswith("rss_")]
    panels = [("RSS per process (MB)", {k.removeprefix("rss_").removesuffix("_mb"): [(s["t"], s[k]) for s in
                                                                                      soak.samples if k in s]
                                         for k in rss_keys}),
              ("ingest lag (ms, heartbeat)", {"lag": [(s["t"], s["ingest_lag_ms"]) for s in soak.samples]}),
              ("reading -> alert on the bus (ms)", {"alarm": list(soak.alarm_ms)})]
    svg_path.write_text(svg(panels, soak.seconds), encoding="utf-8")


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def svg(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], seconds: float) -> str:
    """Stacked line charts, one per panel, time on x (a small SVG, no plotting library needed)."""
    width, height, left, top = 760, 180, 60, 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{(height + top) * len(panels) + 20}" '
             'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    for index, (title, series) in enumerate(panels):
        y0 = index * (height + top) + top
        ymax = max((v for points in series.values() for _, v in points), default=1.0) * 1.1 or 1.0
        parts.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{width - left - 120}" height="{height - 30}" fill="none" '
                     'stroke="#999"/>')
        for frac in (0.0, 0.5, 1.0):
            y = y0 + (height - 30) * (1 - frac)
            parts.append(f'<text x="{left - 5}" y="{y + 4:.0f}" text-anchor="end">{ymax * frac:,.0f}</text>')
        parts.append(f'<text x="{width - 120}" y="{y0 + height - 15}" text-anchor="end">{seconds:.0f} s</text>')
        for n, (name, points) in enumerate(series.items()):
            colour = COLOURS[n % len(COLOURS)]
            xy = " ".join(f"{left + (width - left - 120) * t / seconds:.1f},"
                          f"{y0 + (height - 30) * (1 - v / ymax):.1f}" for t, v in points if seconds)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{xy}"/>')
            parts.append(f'<text x="{width - 112}" y="{y0 + 14 * (n + 1)}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def report(soak: Soak, result: dict[str, float]) -> None:
    """Print the figures (pytest -s / make soak shows them)."""
    log.info("soak: %s; unanswered probes %s, unmatched alert onsets %s", result, soak.unanswered, soak.unmatched)
    print(f"\nsoak {soak.seconds:.0f} s, 2,000 beds: " + ", ".join(f"{k} {v:,.2f}" for k, v in result.items()))


def check(soak: Soak, result: dict[str, float], alarm_bound_ms: float | None, memory: bool = True) -> None:
    """The pass rule: alarms all seen, ingest keeping up, memory flat, and (in the soak) the alarm p99 bound.

    Every broken rule is named at once (a soak is too long to rerun for the next message).
    """
    broken: list[str] = []
    if result["readings_per_s"] < 9_000:
        broken.append(f"the hospital's load was not offered: {result['readings_per_s']:,.0f} readings/s")
    if not result["alarms_seen"] == soak.probes > 0:
        broken.append(f"probe alarms went missing: {result['alarms_seen']:.0f} of {soak.probes}")
    if result["ingest_lag_max_ms"] >= 30_000:  # bounded, not growing with the run
        broken.append(f"ingest fell behind: lag up to {result['ingest_lag_max_ms']:,.0f} ms")
    steady_depths = [s["outbox_depth"] for s in soak.samples if s["t"] >= soak.seconds / 2]
    if max(steady_depths, default=0) >= 10 * 10_600:
        broken.append("the gateways' backlog grew past 10 s of load")
    for name in ("ingest", "alerts", "gateways") if memory else ():
        if result[f"{name}_rss_slope_mb_per_min"] >= 5.0:
            slope, end = result[f"{name}_rss_slope_mb_per_min"], result[f"{name}_rss_end_mb"]
            broken.append(f"{name}: memory grows {slope:.1f} MB/min in the steady half (to {end:.0f} MB)")
    if alarm_bound_ms is not None and not result["alarm_p99_ms"] < alarm_bound_ms:
        broken.append(f"alarm latency p99 {result['alarm_p99_ms']:.1f} ms, over the {alarm_bound_ms:g} ms bound")
    assert not broken, "; ".join(broken)


@pytest.mark.slow
def test_hospital_for_half_a_minute(mosquitto: Mosquitto, tmp_path: Path) -> None:
    soak = run_soak(mosquitto, tmp_path, 30.0)
    result = figures(soak)
    write_curve(soak, tmp_path / "soak.csv", tmp_path / "soak.svg")
    report(soak, result)
    # Half a minute is warm-up for the services' memory, and too short on a shared machine for a latency bound: those
    # two rules are the soak's.
    check(soak, result, alarm_bound_ms=None, memory=False)


@pytest.mark.soak
def test_hospital_for_ten_minutes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    seconds = float(os.environ.get("WARDLINK_SOAK_S", "600"))
    soak = run_soak(mosquitto, tmp_path, seconds)
    result = figures(soak)
    write_curve(soak, DOCS / "soak.csv", DOCS / "soak.svg")
    (DOCS / "soak.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    report(soak, result)
    check(soak, result, alarm_bound_ms=ALARM_P99_MS)
