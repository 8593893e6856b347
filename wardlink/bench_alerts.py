"""``wardlink bench alerts``: latency from a reading on the bus to the assigned nurse's WebSocket frame, under load.

Deployed as a hospital runs it: Mosquitto, ``wardlink serve alerts`` and ``wardlink serve api`` as
processes of their own, and a flood publisher (another process) keeping at least 50,000
observations/s of ordinary readings on the same data topic. The benchmark process is the bedside
monitor and the nurse: it publishes a low SpO2 reading for a bed with a primary nurse assigned, and
waits for the notification frame on her stream (``/api/v1/staff/stream``). The rule's persistence
delay is 0 here, so the figure is the system's own delay, which must be added to a rule's delay to
get the time a nurse waits. A clearing reading then resolves the alert before the next sample.

Figures: p50/p99/max of reading -> WebSocket frame under load and idle (the baseline of the same
run), reading -> alert on the bus (the engine's part), and the background rate actually published.
Before the deployed run, :func:`evaluation_cost` measures the engine alone in this process: CPU time
per reading of the bench's rules on the flood's vitals (readings per CPU-s), the rate rule's running
slope beside the refit it replaced, and a plain dict update per reading as the machine's yardstick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import bus, topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Alert, Batch, DeviceEvent, Observation, encode
from devices.site import DeviceSpec, GatewaySpec, Site, Unit
from state import open_state
from state.db import default_url
from wardlink.bench_ingest import broker
from wardlink.bench_support import as_remote_load, free_port, stop

log = logging.getLogger(__name__)

SITE_ID: Final = "bench"
GATEWAY: Final = "gw-icu"
BED: Final = "ICU-01"
NURSE: Final = "n-bench"
LOAD_OBS_PER_S: Final = 50_000
OBS_PER_BATCH: Final = 500
SPO2: Final = "MDC_PULS_OXIM_SAT_O2"
SPO2_RULE: Final = "spo2_low"
LEAD_OFF: Final = "MDC_EVT_ECG_LEAD_OFF"
TIMEOUT_S: Final = 20.0  # a sample not through in this long: the lane is behind, given up


def bench_site() -> Site:
    """An ICU of 8 beds (the probe's bed is ICU-01) and 100 wards of 100 beds, a monitor at every bed."""
    units = [Unit("ICU", "Intensive care", [f"ICU-{n:02d}" for n in range(1, 9)])]
    units += [Unit(f"W{w:03d}", f"Ward {w}", [f"W{w:03d}-{n:03d}" for n in range(1, 101)]) for w in range(1, 101)]
    beds = [bed for unit in units for bed in unit.beds]
    return Site(id=SITE_ID, name="Alert benchmark", units=units, gateways=[GatewaySpec(GATEWAY, "ICU")],
                devices=[DeviceSpec(_monitor(bed), "bedside_serial", GATEWAY, bed=bed) for bed in beds])


def _monitor(bed: str) -> str:
    return f"mon-{bed.lower()}"


def bench_config(data: Path, api_port: int) -> dict[str, Any]:
    """The configuration both services run with: the bench site, no simulation, SQLite stores, delay-0 rule."""
    return {
        "data_dir": str(data), "site": msgspec.to_builtins(bench_site()),
        "simulation": {"enabled": False}, "store": {"engine": "sqlite"}, "api": {"port": api_port},
        "alerts": {
            # medium: not latching, so the clearing reading resolves it before the next sample
            "rules": [{"name": "spo2_low", "metric": "spo2", "direction": "below", "limit": 90, "priority": "medium",
                       "delay_s": 0, "hysteresis": 2}],
            "delivery": {"routing": {"schedules": {"medium": [{"target": "primary", "timeout_s": 600}]},
                                     "confirm_s": 0}},
        },
    }


def _seed(data: Path) -> None:
    """The bench nurse is the primary of the bed for the next hours."""
    state = open_state(default_url(data))
    try:
        state.registry.seed_from_site(bench_site(), now_ms())
        state.assignments.add_staff(NURSE, "Bench nurse", "nurse")
        state.assignments.assign(NURSE, "ICU", "primary", now_ms() - 60_000, now_ms() + 6 * 3_600_000, bed=BED)
    finally:
        state.close()


@contextlib.contextmanager
def _service(name: str, config: Path, address: BrokerAddress, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log_file = (workdir / f"{name}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "wardlink.cli", "serve", name, "--config", str(config),  # noqa: S603
                             "--broker", address.url], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)
        log_file.close()


@contextlib.contextmanager
def _flood(address: BrokerAddress, rate: int) -> Iterator[subprocess.Popen[bytes]]:
    """The background load: a helper process publishing ``rate`` observations/s until stopped."""
    payload = json.dumps({"host": address.host, "port": address.port, "rate": rate})
    proc = subprocess.Popen([sys.executable, "-m", "wardlink.bench_alerts", "flood", payload],  # noqa: S603
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                stop(proc)


def _percentiles(prefix: str, values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:  # nearest rank
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {f"{prefix}_p50_ms": at(0.5), f"{prefix}_p99_ms": at(0.99), f"{prefix}_max_ms": ordered[-1],
            f"{prefix}_samples": float(len(ordered))}


class _Probe:
    """The monitor and the nurse: publishes low and clearing readings, times the frames on her stream."""

    def __init__(self, address: BrokerAddress, api_port: int, headers: dict[str, str]) -> None:
        self.address = address
        self.api_port = api_port
        self.headers = headers
        self.seq = 0
        self.alert_seen: dict[str, int] = {}  # alert id -> ns when its active state reached a bus subscriber

    def _reading(self, value: float) -> bytes:
        self.seq += 1
        ts = now_ms()
        return encode(Batch(gateway=GATEWAY, sent=ts, items=[Observation(
            device=_monitor(BED), stream="bench-probe", seq=self.seq, ts=ts, metric=SPO2, value=value, unit="%",
            code=150456, bed=BED)]))

    def _device_alarm(self, end: bool) -> bytes:
        self.seq += 1
        ts = now_ms()
        return encode(Batch(gateway=GATEWAY, sent=ts, items=[DeviceEvent(
            device=_monitor(BED), stream="bench-alarms", seq=self.seq, ts=ts, event=LEAD_OFF, alarm_kind="technical",
            priority="medium", phase="end" if end else "start", text="ECG lead off", bed=BED)]))

    async def run(self, samples: int, lane: str) -> tuple[list[float], list[float], int]:
        """``samples`` alerts raised by a reading (``lane`` data) or a device's own alarm (``lane`` alarm).

        Returns the latencies to the WebSocket frame and to the alert on the bus, and how many samples
        timed out (after the first, the lane is given up: the service is behind by more than the timeout).
        """
        import websockets  # a dependency of the API server

        frames: list[tuple[int, dict[str, Any]]] = []
        arrived = asyncio.Event()
        ws_latency: list[float] = []
        bus_latency: list[float] = []
        missed = 0
        alert_decoder = msgspec.json.Decoder(Alert)
        async with websockets.connect(await _stream_url(self.api_port, self.headers), max_size=2**22) as ws, \
                bus.client(self.address, f"bench-alerts-probe-{os.getpid()}") as client:
            bus.no_delay(client)  # as a gateway's uplink: a reading leaves at once
            await client.subscribe(topics.alert_filter(SITE_ID), qos=1)

            async def read_ws() -> None:
                async for raw in ws:
                    frames.append((time.perf_counter_ns(), json.loads(raw)))
                    arrived.set()

            async def read_bus() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        alert = alert_decoder.decode(message.payload)
                        if alert.state == "active" and alert.type in (SPO2_RULE, LEAD_OFF):
                            self.alert_seen.setdefault(alert.id, time.perf_counter_ns())

            tasks = [asyncio.create_task(read_ws()), asyncio.create_task(read_bus())]
            kind = SPO2_RULE if lane == "data" else LEAD_OFF
            topic = topics.gateway_topic(SITE_ID, GATEWAY, "data" if lane == "data" else "alarm")
            try:
                await self._wait(frames, arrived, lambda f: f["type"] == "snapshot", 0, 60)
                known: set[str] = set()
                for _ in range(samples):
                    if missed:
                        break
                    start = time.perf_counter_ns()
                    raise_it = self._reading(80.0) if lane == "data" else self._device_alarm(end=False)
                    await client.publish(topic, raise_it, qos=1)
                    try:
                        at, frame = await self._wait(frames, arrived, lambda f: f["type"] == "notification" and
                                                     f["notification"]["alert"]["type"] == kind and
                                                     f["notification"]["alert"]["id"] not in known, start, TIMEOUT_S)
                    except TimeoutError:
                        missed += 1
                        log.warning("bench alerts: %s lane: no notification within %g s", lane, TIMEOUT_S)
                        continue
                    alert_id = frame["notification"]["alert"]["id"]
                    known.add(alert_id)
                    ws_latency.append((at - start) / 1e6)
                    if alert_id in self.alert_seen:
                        bus_latency.append((self.alert_seen[alert_id] - start) / 1e6)
                    clear_it = self._reading(97.0) if lane == "data" else self._device_alarm(end=True)
                    await client.publish(topic, clear_it, qos=1)
                    try:
                        await self._wait(frames, arrived, lambda f, a=alert_id: f["type"] == "alert" and
                                         f["alert"]["id"] == a and f["alert"]["state"] == "resolved", start, TIMEOUT_S)
                    except TimeoutError:
                        missed += 1
                        log.warning("bench alerts: %s lane: alert %s not resolved within %g s", lane, alert_id,
                                    TIMEOUT_S)
                    await asyncio.sleep(0.05)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return ws_latency, bus_latency, missed

    @staticmethod
    async def _wait(frames: list[tuple[int, dict[str, Any]]], arrived: asyncio.Event, match: Any, since: int,
                    within_s: float) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + within_s
        while True:
            for at, frame in frames:
                if at >= since and match(frame):
                    return at, frame
            arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"bench alerts: no matching frame in {within_s} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), remaining)


def _headers(data: Path) -> dict[str, str]:
    """The nurse's sign-in, when the API authenticates (a token of the data directory's own key), else none."""
    try:
        from api.security import LocalTokens
    except ImportError:
        return {}
    return {"Authorization": f"Bearer {LocalTokens.from_data_dir(data).issue(NURSE)}"}


async def _stream_url(api_port: int, headers: dict[str, str]) -> str:
    """The nurse's stream: with a single-use ticket when the API authenticates, else by staff id."""
    import httpx

    base = f"127.0.0.1:{api_port}/api/v1/staff/stream"
    if not headers:
        return f"ws://{base}?staff={NURSE}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers=headers) as client:
        response = await client.post("/api/v1/auth/ws-ticket")
        response.raise_for_status()
        return f"ws://{base}?ticket={response.json()['ticket']}"


async def _ready(api_port: int, headers: dict[str, str], within_s: float = 60) -> None:
    """Wait until the API answers and has heard the alert service's heartbeat."""
    import httpx

    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers=headers) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                health = (await client.get("/api/v1/health")).json()
                services = health.get("services", {}) if isinstance(health, dict) else {}
                if any(name.startswith("alerts/") and s["state"] == "online" for name, s in services.items()):
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("bench alerts: API or alert service did not come up (see their logs in the work directory)")


def _cpu_per_item(fn: Any, items: list[Any]) -> float:
    """CPU seconds per item of ``fn`` over ``items`` (process time: other processes' load does not count)."""
    started = time.process_time()
    fn(items)
    return (time.process_time() - started) / max(1, len(items))


def evaluation_cost(quick: bool = False) -> dict[str, float]:
    """The engine alone: µs of CPU per reading of the bench's rules (adult set) on the flood's vitals, windows full.

    Beside it, in the same run: a rate window's running slope and the refit over the window it replaced
    (60 one-per-second points), and a plain dict update per reading (the machine's yardstick).
    """
    from alerts.engine import AlertEngine
    from alerts.rules import LimitRule
    from alerts.ruleset import RuleBook
    from alerts.vitals import SlopeWindow, least_squares_slope

    site = bench_site()
    beds = [bed for unit in site.units[1:] for bed in unit.beds][:100 if quick else 400]
    seconds = 75 if quick else 120
    rules = [msgspec.convert(r, LimitRule) for r in bench_config(Path(), 0)["alerts"]["rules"]]
    engine = AlertEngine(site, RuleBook({b: u.id for u in site.units for b in u.beds}, site_rules=rules))
    metrics = (("MDC_ECG_HEART_RATE", 72.0), (SPO2, 97.0), ("MDC_RESP_RATE", 16.0),
               ("MDC_PULS_OXIM_PULS_RATE", 71.0), ("MDC_TEMP", 36.8))
    ticks = [[Observation(device=_monitor(bed), stream="numerics", seq=t, ts=t * 1000, metric=metric,
                          value=value + (t + n) % 3, unit="", bed=bed) for n, bed in enumerate(beds)
              for metric, value in metrics] for t in range(seconds)]

    def feed(batches: list[list[Observation]]) -> None:
        for items in batches:
            for start in range(0, len(items), 100):  # the service's slices
                engine.process(items[start:start + 100], items[0].ts)

    feed(ticks[:60])  # fill the 60 s rate windows first
    measured = ticks[60:]
    started = time.process_time()
    feed(measured)
    engine_s = (time.process_time() - started) / sum(map(len, measured))
    points = [(t * 1000, 72.0 + t % 7) for t in range(600)]
    window = SlopeWindow(60_000)

    def running(batch: list[tuple[int, float]]) -> None:
        for ts, value in batch:
            window.add(ts, value)
            window.slope_per_min()

    def refit(batch: list[tuple[int, float]]) -> None:
        for n in range(60, len(batch)):
            least_squares_slope(batch[n - 60:n + 1], 60_000)

    table_: dict[str, float] = {}

    def plain(batch: list[tuple[int, float]]) -> None:
        for ts, value in batch:
            table_[str(ts % 5)] = value

    reps = 3 if quick else 10
    running_s = min(_cpu_per_item(running, points) for _ in range(reps))
    refit_s = min(_cpu_per_item(refit, points) for _ in range(reps)) * len(points) / (len(points) - 60)
    plain_s = min(_cpu_per_item(plain, points) for _ in range(reps))
    return {"eval_engine_us_per_reading": engine_s * 1e6, "eval_engine_readings_per_cpu_s": 1 / engine_s,
            "eval_rate_running_us": running_s * 1e6, "eval_rate_refit_us": refit_s * 1e6,
            "eval_dict_update_us": plain_s * 1e6}


def run(quick: bool = False) -> dict[str, float]:
    """The engine's own cost, then idle baseline and the same probe under a >= 50,000 obs/s flood; figures in ms."""
    cost = evaluation_cost(quick)
    samples = 40 if quick else 400
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-alerts-") as tmp:
        workdir = Path(tmp)
        data = workdir / "data"
        data.mkdir()
        api_port = free_port()
        config = workdir / "bench.json"
        config.write_text(json.dumps(bench_config(data, api_port)), encoding="utf-8")
        _seed(data)
        headers = _headers(data)  # before the API starts: it reads the same key
        with broker(workdir) as address, _service("alerts", config, address, workdir), \
                _service("api", config, address, workdir):
            asyncio.run(_ready(api_port, headers))
            probe = _Probe(address, api_port, headers)
            idle = {lane: asyncio.run(probe.run(max(20, samples // 4), lane)) for lane in ("data", "alarm")}
            with _flood(address, LOAD_OBS_PER_S) as flood:
                time.sleep(3.0)  # the load is running before the first sample
                loaded = {lane: asyncio.run(probe.run(samples, lane)) for lane in ("alarm", "data")}
                if flood.stdin is None or flood.stdout is None:
                    raise RuntimeError("bench alerts: the flood helper has no pipes")
                flood.stdin.close()
                published = json.loads(flood.stdout.readline() or "{}")
    figures: dict[str, float] = {}
    for phase, results in (("loaded", loaded), ("idle", idle)):
        for lane, (to_ws, to_bus, missed) in results.items():
            figures |= _percentiles(f"{phase}_{lane}_ws", to_ws) | _percentiles(f"{phase}_{lane}_bus", to_bus)
            figures[f"{phase}_{lane}_timeouts"] = float(missed)
    figures["load_obs_per_s"] = float(published.get("obs_per_s", 0.0))
    return figures | cost


def table(figures: dict[str, float]) -> str:
    """The figures as a small table."""
    lines = ["wardlink bench alerts: reading on the bus -> nurse's WebSocket frame (rule delay 0)",
             f"background load: {figures.get('load_obs_per_s', 0):,.0f} observations/s",
             f"{'':<44}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'samples':>10}"]
    for phase in ("loaded", "idle"):
        for lane, what in (("data", "reading"), ("alarm", "device alarm")):
            for leg, label in (("ws", "nurse's WebSocket"), ("bus", "alert on the bus")):
                key = f"{phase}_{lane}_{leg}"
                if f"{key}_p50_ms" in figures:
                    lines.append(f"{f'{phase}: {what} -> {label}':<44}{figures[f'{key}_p50_ms']:>10.1f}"
                                 f"{figures[f'{key}_p99_ms']:>10.1f}{figures[f'{key}_max_ms']:>10.1f}"
                                 f"{figures[f'{key}_samples']:>10.0f}")
            if figures.get(f"{phase}_{lane}_timeouts"):
                lines.append(f"{phase}: {what}: a sample took over {TIMEOUT_S:g} s (the lane fell behind); "
                             "the lane was given up")
    if "eval_engine_us_per_reading" in figures:
        lines += [f"rule evaluation (engine alone, adult set): {figures['eval_engine_us_per_reading']:.2f} µs CPU "
                  f"per reading = {figures['eval_engine_readings_per_cpu_s']:,.0f} readings per CPU-s",
                  f"rate rule per reading: running slope {figures['eval_rate_running_us']:.2f} µs, refit over "
                  f"60 points {figures['eval_rate_refit_us']:.2f} µs; "
                  f"a dict update {figures['eval_dict_update_us']:.3f} µs"]
    return "\n".join(lines)


# -- the flood helper process -----------------------------------------------------------------------------------------
def _flood_main(raw: dict[str, Any]) -> None:
    """Publish ``rate`` observations/s until stdin closes: 10,000 ward monitors in turn, 5 normal vitals each.

    At 50,000/s each monitor reports its 5 vitals once a second, as bedside monitors send numerics.
    It runs at a lower scheduling priority (:func:`~wardlink.bench_support.as_remote_load`).
    """
    as_remote_load()
    rate = int(raw["rate"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-alerts-flood-{os.getpid()}", clean_session=True)
    client.max_inflight_messages_set(100)
    window = threading.Semaphore(200)
    client.on_publish = lambda _c, _u, _m, _rc, _p: window.release()
    client.connect(str(raw["host"]), int(raw["port"]))
    client.loop_start()
    stopped = threading.Event()
    def until_stdin_closes() -> None:
        sys.stdin.read()
        stopped.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    topic = topics.gateway_topic(SITE_ID, GATEWAY, "data")
    metrics = (("MDC_ECG_HEART_RATE", 72.0, "/min"), (SPO2, 97.0, "%"), ("MDC_RESP_RATE", 16.0, "/min"),
               ("MDC_PULS_OXIM_PULS_RATE", 71.0, "/min"), ("MDC_TEMP", 36.8, "Cel"))
    beds = [bed for unit in bench_site().units[1:] for bed in unit.beds]  # the wards: the probe's ICU stays quiet
    per_batch = OBS_PER_BATCH // len(metrics)
    seq: dict[str, int] = {}
    sent = 0
    started = time.perf_counter()
    turn = 0
    while not stopped.is_set():
        ts = now_ms()
        items = []
        for bed in beds[turn:turn + per_batch]:
            monitor = _monitor(bed)
            for metric, value, unit in metrics:
                seq[monitor] = seq.get(monitor, 0) + 1
                items.append(Observation(device=monitor, stream="numerics", seq=seq[monitor], ts=ts, metric=metric,
                                         value=value, unit=unit, bed=bed))
        turn = (turn + per_batch) % len(beds)
        window.acquire()
        client.publish(topic, encode(Batch(gateway=GATEWAY, sent=ts, items=list(items))), qos=1)
        sent += len(items)
        ahead = sent / rate - (time.perf_counter() - started)
        if ahead > 0:
            stopped.wait(ahead)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    sys.stdout.write(json.dumps({"obs": sent, "seconds": elapsed, "obs_per_s": sent / elapsed}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) != 3 or sys.argv[1] != "flood":
        raise SystemExit("usage: python -m wardlink.bench_alerts flood JSON")
    _flood_main(json.loads(sys.argv[2]))
