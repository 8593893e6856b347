"""``wardlink bench ingest``: sustained observations/s of one ingest worker from Mosquitto into each store.

The worker is the real :class:`~ingest.service.Ingest` (real bus, default settings, MQTT 5 shared
subscription) running in this process; the publisher is a helper process (``python -m
wardlink.bench_ingest publish ...``, at nice 10: it plays gateways, whose CPUs are elsewhere) sending
:class:`~devices.contract.Batch` messages of 500 observations
(the gateway's ``batch_max``, what its uplink sends while its outbox holds a backlog) at QoS 1, as a gateway
would: fifty 10-parameter monitor frames per message, every reading with its own
``(device, stream, seq)`` and, per series, its own millisecond. The broker (Mosquitto, ``set_tcp_nodelay``,
``max_queued_messages`` 1,000,000) and victoria-metrics (free port, own data directory) are processes of
the benchmark's own, so the CPU time reported (``time.process_time``: every thread of this process,
DuckDB's included, VictoriaMetrics' not) is the worker's alone.

``sustained``  the publisher keeps at most ``WINDOW`` observations published but not yet committed by the
               worker (as a gateway's outbox does), so it runs exactly as fast as the worker stores and
               commits; timestamps are synthetic (an hour ago, 1 ms apart per device) so lag is not reported.
``curve``      the publisher offers 10 observations/s per bed (one 10-parameter frame per bed per second,
               ``ts`` = now) for 100 to 2,000 beds; stored rate, the worker's CPU share and lag (the age
               of the oldest reading of each stored batch, :attr:`Ingest.lag_ms`) per point.
``baseline``   a bare paho subscriber in this process counting the same stream (no decoding, no commit),
               the publisher sending open-loop with 1,000 publishes unacknowledged: the raw ceiling.

Ratios are observations/s over the baseline's observations/s of the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Commit, Observation
from devices.site import DeviceSpec, GatewaySpec, Site, Unit
from gateway.service import GatewaySettings
from ingest.service import Ingest, IngestSettings
from storage.base import TimeSeriesStore
from wardlink.bench_gateway import mosquitto_binary
from wardlink.bench_support import Clock, Rate, as_remote_load, free_port, stop

log = logging.getLogger(__name__)

SITE: Final = "bench"
UNIT: Final = "ICU"
GATEWAY: Final = "gw-bench-ingest"
MAX_BEDS: Final = 2_000
SUSTAINED_BEDS: Final = 1_000  # devices the sustained stream cycles through
OBS_PER_MESSAGE: Final = GatewaySettings().batch_max  # a loaded gateway's uplink batch (500)
OBS_PER_FRAME: Final = 10  # one monitor frame: 10 parameters, one ts
FRAMES_PER_MESSAGE: Final = OBS_PER_MESSAGE // OBS_PER_FRAME
OBS_PER_BED_S: Final = 10
WINDOW: Final = 50_000  # observations published and not yet committed (10 of the worker's batches of 5,000)
PUBLISH_WINDOW: Final = 1_000  # publishes not yet acknowledged by the broker
TICK_S: Final = 0.1  # the paced publisher's tick: a tenth of the beds send their frame each tick
END_MARK: Final = b"END"
STORES: Final[dict[str, str]] = {
    "memory": "MemoryStore (no store: the ceiling)",
    "duckdb": "DuckDbStore (embedded)",
    "victoria": "VictoriaStore (VictoriaMetrics, own process)",
}
TARGETS: Final[dict[str, float]] = {"duckdb": 300_000.0, "victoria": 150_000.0}
METRICS: Final = (("MDC_ECG_HEART_RATE", "/min", 147842, 70), ("MDC_PULS_OXIM_SAT_O2", "%", 150456, 95),
                  ("MDC_PULS_OXIM_PULS_RATE", "/min", 149530, 72), ("MDC_PULS_OXIM_PERF_REL", "%", 150488, 3),
                  ("MDC_PRESS_BLD_NONINV_SYS", "mm[Hg]", 150033, 120),
                  ("MDC_PRESS_BLD_NONINV_DIA", "mm[Hg]", 150034, 80),
                  ("MDC_PRESS_BLD_NONINV_MEAN", "mm[Hg]", 150035, 93), ("MDC_RESP_RATE", "/min", 151562, 16),
                  ("MDC_TEMP_BODY", "Cel", 150364, 37), ("MDC_AWAY_CO2_ET", "mm[Hg]", 151708, 38))


@dataclass(frozen=True, slots=True)
class Plan:
    """Seconds each measurement runs for, and the curve's bed counts."""

    baseline_s: float
    sustained_s: float
    curve_s: float
    warm_s: float
    curve_beds: tuple[int, ...]
    curve_stores: tuple[str, ...]


QUICK: Final = Plan(baseline_s=0.8, sustained_s=2.0, curve_s=1.5, warm_s=0.3, curve_beds=(100, 2_000),
                    curve_stores=("duckdb",))
FULL: Final = Plan(baseline_s=4.0, sustained_s=8.0, curve_s=4.0, warm_s=1.0, curve_beds=(100, 500, 1_000, 2_000),
                   curve_stores=tuple(STORES))


def device_of(index: int) -> str:
    """The monitor at bed ``index``."""
    return f"mon-{index:04d}"


def bed_of(index: int) -> str:
    """The ``index``-th bed."""
    return f"{UNIT}-{index:04d}"


def bench_site(beds: int = MAX_BEDS) -> Site:
    """One unit of ``beds`` beds, a monitor per bed, all on one gateway."""
    return Site(id=SITE, name="ingest benchmark", units=[Unit(id=UNIT, name="bench ward",
                                                               beds=[bed_of(i) for i in range(beds)])],
                gateways=[GatewaySpec(id=GATEWAY, unit=UNIT)],
                devices=[DeviceSpec(id=device_of(i), kind="bedside_serial", gateway=GATEWAY, bed=bed_of(i))
                         for i in range(beds)])


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size (VmRSS) of a process in MiB, from /proc (0.0 where /proc has no such line)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- the stream ---------------------------------------------------------------------------------------------------
class Frames:
    """Batch messages of 10 monitor frames of 10 parameters, built from per-series byte templates (cheap to make).

    Every reading has its own ``(device, stream, seq)``; per device, successive frames have increasing ``ts``
    (synthetic: ``t0`` + frame number in ms; live: now, one frame per device per second).
    """

    def __init__(self, stream: str, beds: int, t0: int | None = None) -> None:
        """Frames of ``beds`` monitors on ``stream``; ``t0`` None for live timestamps."""
        self.beds = beds
        self.t0 = t0
        self.frame_no = [0] * beds
        self._order = itertools.cycle(range(beds))
        sentinel = Observation(device="D", stream=stream, seq=-111111111, ts=-222222222, metric="M", value=-3333.5,
                               unit="U", code=-444444, bed="B")
        text = msgspec.json.encode(sentinel).replace(b"%", b"%%")
        text = text.replace(b"-111111111", b"%d").replace(b"-222222222", b"%d").replace(b"-3333.5", b"%d.5")
        self.templates: list[list[bytes]] = []
        for i in range(beds):
            per_device = text.replace(b'"D"', json.dumps(device_of(i)).encode())
            per_device = per_device.replace(b'"B"', json.dumps(bed_of(i)).encode())
            self.templates.append([per_device.replace(b'"M"', json.dumps(metric).encode())
                                   .replace(b'"U"', json.dumps(unit).encode().replace(b"%", b"%%"))
                                   .replace(b"-444444", b"%d" % code)
                                   for metric, unit, code, _ in METRICS])
        self._bases = [base for *_, base in METRICS]

    def frame(self, index: int, ts: int | None = None) -> list[bytes]:
        """The next frame of monitor ``index``: 10 encoded observations."""
        n = self.frame_no[index]
        self.frame_no[index] = n + 1
        if ts is None:
            ts = (self.t0 or 0) + n
        seq = n * OBS_PER_FRAME + 1
        wobble = n % 7
        return [template % (seq + k, ts, self._bases[k] + wobble) for k, template in enumerate(self.templates[index])]

    def message(self, indexes: list[int], ts: int | None = None) -> bytes:
        """One Batch of the next frames of the monitors at ``indexes``."""
        items: list[bytes] = []
        for index in indexes:
            items += self.frame(index, ts)
        return b'{"gateway":"%s","sent":%d,"items":[%s]}' % (GATEWAY.encode(), now_ms(), b",".join(items))

    def next_message(self) -> bytes:
        """The next 10 monitors' next frames, round robin (synthetic time)."""
        return self.message([next(self._order) for _ in range(FRAMES_PER_MESSAGE)])


# -- processes of the benchmark's own: broker, victoria-metrics, publisher --------------------------------------------
def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"bench ingest: {what} did not start on port {port}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def broker(workdir: Path) -> Iterator[BrokerAddress]:
    """A Mosquitto of the benchmark's own: no persistence, deep queues, 100 in flight, no Nagle delay."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("bench ingest needs Mosquitto (apt-get install mosquitto)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 100\nset_tcp_nodelay true\n", encoding="utf-8")
    proc = subprocess.Popen([binary, "-c", str(conf)],  # noqa: S603 - the installed broker, our config
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "mosquitto")
        yield BrokerAddress("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait(5)


@dataclass(frozen=True, slots=True)
class Victoria:
    """A running victoria-metrics of the benchmark's own."""

    url: str
    pid: int


@contextlib.contextmanager
def victoria(workdir: Path) -> Iterator[Victoria]:
    """victoria-metrics on a free port with its own data directory and 1 ms dedup (as tests/victoria.py)."""
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not Path(binary).exists():
        raise RuntimeError("bench ingest needs victoria-metrics (apt-get install victoria-metrics)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (workdir / "victoria-metrics.log").open("ab") as out:
        proc = subprocess.Popen([binary, f"-httpListenAddr=127.0.0.1:{port}",  # noqa: S603 - installed binary
                                 f"-storageDataPath={workdir / 'vmdata'}", "-retentionPeriod=31d",
                                 "-dedup.minScrapeInterval=1ms", "-loggerLevel=ERROR"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=0.5) as answer:  # noqa: S310 - our own server
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"bench ingest: victoria-metrics did not start on port {port}") from None
                time.sleep(0.05)
        yield Victoria(url, proc.pid)
    finally:
        stop(proc)


@dataclass(frozen=True, slots=True)
class PublishArgs:
    """What the publisher helper does: ``flood`` (open loop), ``sustained`` (commit window) or ``paced``."""

    mode: str
    host: str
    port: int
    stream: str
    beds: int
    seconds: float = 0.0


def _publisher_command(args: PublishArgs) -> list[str]:
    payload = json.dumps({"mode": args.mode, "host": args.host, "port": args.port, "stream": args.stream,
                          "beds": args.beds, "seconds": args.seconds})
    return [sys.executable, "-m", "wardlink.bench_ingest", "publish", payload]


# -- measurements -----------------------------------------------------------------------------------------------------
def measure_baseline(address: BrokerAddress, seconds: float) -> Rate:
    """Observations/s a bare paho subscriber here receives of the publisher's open-loop stream (raw ceiling)."""
    topic = topics.gateway_topic(SITE, GATEWAY, "data")
    subscribed, done = threading.Event(), threading.Event()
    count = 0
    clock: Clock | None = None
    result: list[Rate] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="wardlink-bench-raw", clean_session=True)
    client.max_inflight_messages_set(100)

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        sock = c.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count, clock
        if msg.payload == END_MARK:
            assert clock is not None
            result.append(clock.rate(count * OBS_PER_MESSAGE))
            done.set()
            return
        if clock is None:
            clock = Clock()
        count += 1

    client.on_connect = on_connect
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: subscribed.set()
    client.on_message = on_message
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        if not subscribed.wait(15):
            raise RuntimeError("bench ingest: the baseline subscriber could not subscribe")
        args = PublishArgs("flood", address.host, address.port, "raw", SUSTAINED_BEDS, seconds)
        with subprocess.Popen(_publisher_command(args), stdout=subprocess.PIPE) as proc:  # noqa: S603 - our module
            out, _ = proc.communicate(timeout=seconds + 120)
        if not done.wait(30):
            raise RuntimeError("bench ingest: the baseline subscriber did not see the end mark")
    finally:
        client.disconnect()
        client.loop_stop()
    sent = int(out.split()[-1])
    if sent != count:
        raise RuntimeError(f"bench ingest: {sent} baseline messages published, {count} arrived")
    return result[0]


@dataclass(frozen=True, slots=True)
class Run:
    """One worker measurement: stored observations over wall and CPU time, lag samples, publisher's count."""

    rate: Rate
    sent: int
    lags_ms: list[int]
    rss_mb: float
    store_errors: int


async def measure_worker(site: Site, store: TimeSeriesStore, args: PublishArgs, warm_s: float,
                         seconds: float) -> Run:
    """Run an Ingest worker here against the publisher helper; stored observations after ``warm_s``."""
    ingest = Ingest(site, store, BrokerAddress(args.host, args.port), f"ingest-{args.stream}", IngestSettings())
    task = asyncio.create_task(ingest.run())
    proc = await asyncio.create_subprocess_exec(*_publisher_command(args), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.startswith(b"go"):
            raise RuntimeError(f"bench ingest: the publisher did not start ({line!r})")
        await asyncio.sleep(warm_s)
        stored0, sent0 = ingest.counters["stored"], ingest.counters["messages"]
        clock = Clock()
        lags: list[int] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            if ingest.counters["flushes"]:
                lags.append(ingest.lag_ms)
        rate = clock.rate(ingest.counters["stored"] - stored0)
        received = ingest.counters["messages"] - sent0
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.stdout.read(), 30)
        await asyncio.wait_for(proc.wait(), 30)
        await _idle(ingest)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        task.cancel()
        # aiomqtt's Client.__aexit__ waits for the DISCONNECT without a timeout; never hang the benchmark on it.
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            log.warning("bench ingest: worker %s did not stop within 10 s of its cancellation", ingest.instance)
    dropped = ingest.counters["mqtt_queue_dropped"]
    if dropped:
        log.warning("bench ingest: the worker's client queue dropped %d messages", dropped)
    return Run(rate, received, lags, rss_mb(), ingest.counters["store_errors"])


async def _idle(ingest: Ingest, quiet_s: float = 0.3, within_s: float = 15.0) -> None:
    """Wait until the worker has received nothing for ``quiet_s`` (the broker's queue for it is empty)."""
    deadline = time.monotonic() + within_s
    seen = -1
    while time.monotonic() < deadline and ingest.counters["messages"] != seen:
        seen = ingest.counters["messages"]
        await asyncio.sleep(quiet_s)


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


@contextlib.contextmanager
def _stores(workdir: Path, vm: Victoria) -> Iterator[dict[str, TimeSeriesStore]]:
    from storage.duckdb import DuckDbStore
    from storage.memory import MemoryStore
    from storage.victoria import VictoriaStore

    stores: dict[str, TimeSeriesStore] = {
        "memory": MemoryStore(),
        "duckdb": DuckDbStore(workdir / "bench.duckdb"),
        "victoria": VictoriaStore(vm.url, workdir / "victoria-side.db"),
    }
    try:
        yield stores
    finally:
        for s in stores.values():
            s.close()


async def _measure_all(plan: Plan, address: BrokerAddress, workdir: Path, vm: Victoria) -> dict[str, float]:
    figures: dict[str, float] = {}
    site = bench_site()
    baseline = await asyncio.to_thread(measure_baseline, address, plan.baseline_s)
    figures["baseline_raw_msgs_per_s"] = baseline.per_s / OBS_PER_MESSAGE
    figures["baseline_raw_obs_per_s"] = baseline.per_s
    figures["baseline_raw_obs_per_cpu_s"] = baseline.per_cpu_s
    figures["baseline_rss_mb"] = rss_mb()
    with _stores(workdir, vm) as stores:
        for name, store in stores.items():
            log.info("bench ingest: sustained into %s", STORES[name])
            args = PublishArgs("sustained", address.host, address.port, f"sustained-{name}", SUSTAINED_BEDS)
            run = await measure_worker(site, store, args, plan.warm_s, plan.sustained_s)
            figures[f"{name}_obs_per_s"] = run.rate.per_s
            figures[f"{name}_obs_per_cpu_s"] = run.rate.per_cpu_s
            figures[f"{name}_cpu_share"] = run.rate.cpu_s / run.rate.wall_s
            figures[f"{name}_vs_baseline"] = run.rate.per_s / baseline.per_s
            figures[f"{name}_rss_mb"] = run.rss_mb
            if name == "victoria":
                figures["victoria_server_rss_mb"] = rss_mb(vm.pid)
        for name in plan.curve_stores:
            for beds in plan.curve_beds:
                log.info("bench ingest: %d beds into %s", beds, STORES[name])
                args = PublishArgs("paced", address.host, address.port, f"curve-{name}-{beds}", beds)
                run = await measure_worker(site, stores[name], args, plan.warm_s, plan.curve_s)
                key = f"curve_{name}_{beds}"
                figures[f"{key}_offered_per_s"] = float(beds * OBS_PER_BED_S)
                figures[f"{key}_stored_per_s"] = run.rate.per_s
                figures[f"{key}_cpu_share"] = run.rate.cpu_s / run.rate.wall_s
                figures[f"{key}_lag_ms_p50"] = _percentile(run.lags_ms, 0.5)
                figures[f"{key}_lag_ms_max"] = float(max(run.lags_ms, default=0))
    return figures


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the workers' INFO lines (a connect per measurement) out of the bench output."""
    loggers = [logging.getLogger(name) for name in ("ingest", "storage", "devices")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def run(quick: bool = False) -> dict[str, float]:
    """Every figure of ``wardlink bench ingest`` (``quick``: about 10 s in all, for tests)."""
    plan = QUICK if quick else FULL
    with _quiet(), tempfile.TemporaryDirectory(prefix="wardlink-bench-ingest-") as tmp:
        workdir = Path(tmp)
        with broker(workdir) as address, victoria(workdir) as vm:
            return asyncio.run(_measure_all(plan, address, workdir, vm))


def table(figures: dict[str, float]) -> str:
    """Sustained rate per store beside the raw ceiling, then the bed curve."""
    head = f"{'sustained, one worker':<46}{'obs/s':>12}{'per CPU-s':>12}{'ratio':>8}{'RSS MiB':>9}{'target':>10}"
    lines = ["wardlink bench ingest: observations/s of one ingest worker from Mosquitto into each store",
             f"{OBS_PER_MESSAGE}-observation batches (a loaded gateway's) at QoS 1; per CPU-s counts this process only "
             "(worker + store client threads)",
             "", head, "-" * len(head),
             f"{'baseline: bare paho subscriber (raw ceiling)':<46}{figures['baseline_raw_obs_per_s']:>12,.0f}"
             f"{figures['baseline_raw_obs_per_cpu_s']:>12,.0f}{1.0:>8.3f}{figures['baseline_rss_mb']:>9,.0f}{'':>10}"]
    for name, what in STORES.items():
        if f"{name}_obs_per_s" not in figures:
            continue
        target = TARGETS.get(name)
        met = target is not None and figures[f"{name}_obs_per_s"] >= target
        mark = "" if target is None else f"{target / 1000:,.0f}k {'met' if met else 'NO'}"
        lines.append(f"{what:<46}{figures[f'{name}_obs_per_s']:>12,.0f}{figures[f'{name}_obs_per_cpu_s']:>12,.0f}"
                     f"{figures[f'{name}_vs_baseline']:>8.3f}{figures[f'{name}_rss_mb']:>9,.0f}{mark:>10}")
    if "victoria_server_rss_mb" in figures:
        lines.append(f"  (victoria-metrics process RSS after its run: {figures['victoria_server_rss_mb']:,.0f} MiB)")
    curve_head = f"{'curve (10 obs/s per bed)':<34}{'offered/s':>11}{'stored/s':>11}{'CPU %':>8}{'lag p50 ms':>12}" \
                 f"{'lag max ms':>12}"
    lines += ["", curve_head, "-" * len(curve_head)]
    for name in STORES:
        keys = sorted({int(k.split("_")[2]) for k in figures if k.startswith(f"curve_{name}_")})
        for beds in keys:
            key = f"curve_{name}_{beds}"
            lines.append(f"{f'{name}, {beds:,} beds':<34}{figures[f'{key}_offered_per_s']:>11,.0f}"
                         f"{figures[f'{key}_stored_per_s']:>11,.0f}{100 * figures[f'{key}_cpu_share']:>8.1f}"
                         f"{figures[f'{key}_lag_ms_p50']:>12,.0f}{figures[f'{key}_lag_ms_max']:>12,.0f}")
    return "\n".join(lines)


# -- the publisher helper ---------------------------------------------------------------------------------------------
class _Publisher:
    """The helper process's paho publisher, counting broker acknowledgements and (optionally) the worker's commits."""

    def __init__(self, args: PublishArgs) -> None:
        self.args = args
        self.topic = topics.gateway_topic(SITE, GATEWAY, "data")
        self.acked = threading.Semaphore(PUBLISH_WINDOW)
        self.window = threading.Condition()
        self.committed = 0
        self.started = threading.Event()
        self.stop = threading.Event()
        self.decoder = msgspec.json.Decoder(Commit)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"wardlink-bench-pub-{args.stream}",
                                  clean_session=True)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.ready = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda _c, _u, _m, _rc, _p: self.ready.set()
        self.client.on_publish = lambda _c, _u, _m, _rc, _p: self.acked.release()
        self.client.on_message = self._on_commit

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        sock = c.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(topics.gateway_topic(SITE, GATEWAY, "commit"), qos=1)

    def _on_commit(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        commit = self.decoder.decode(msg.payload)
        if not self.started.is_set():
            if any(r.stream == f"probe-{self.args.stream}" for r in commit.ranges):
                self.started.set()
            return
        done = sum(r.last - r.first + 1 for r in commit.ranges if r.stream == self.args.stream)
        with self.window:
            self.committed += done
            self.window.notify()

    def publish(self, payload: bytes) -> None:
        self.acked.acquire()
        self.client.publish(self.topic, payload, qos=1)

    def probe(self) -> None:
        """Publish a one-reading batch every 50 ms until the worker commits one (it is subscribed)."""
        for seq in itertools.count(1):
            obs = Observation(device=device_of(0), stream=f"probe-{self.args.stream}", seq=seq, ts=now_ms() + seq,
                              metric="MDC_ECG_HEART_RATE", value=70.0, unit="/min", bed=bed_of(0))
            self.publish(b'{"gateway":"%s","sent":%d,"items":[%s]}' % (GATEWAY.encode(), now_ms(),
                                                                      msgspec.json.encode(obs)))
            if self.started.wait(0.05):
                return

    def run(self) -> int:
        """Publish per ``args.mode``; return the messages published in the measured phase."""
        args = self.args
        self.client.connect(args.host, args.port)
        self.client.loop_start()
        try:
            if not self.ready.wait(15):
                raise RuntimeError("bench ingest publisher: could not subscribe")
            if args.mode == "flood":
                return self._flood()
            threading.Thread(target=self._watch_stdin, daemon=True).start()
            self.probe()
            sys.stdout.write("go\n")
            sys.stdout.flush()
            return self._sustained() if args.mode == "sustained" else self._paced()
        finally:
            self._drain()
            self.client.disconnect()
            self.client.loop_stop()

    def _drain(self) -> None:
        """Wait (up to 30 s) until the broker acknowledged every publish, so none is lost at disconnect."""
        deadline = time.monotonic() + 30
        for _ in range(PUBLISH_WINDOW):
            if not self.acked.acquire(timeout=max(0.0, deadline - time.monotonic())):
                log.warning("bench ingest publisher: publishes still unacknowledged at disconnect")
                return

    def _watch_stdin(self) -> None:
        sys.stdin.readline()
        self.stop.set()
        with self.window:
            self.window.notify()

    def _flood(self) -> int:
        frames = Frames(self.args.stream, self.args.beds, t0=now_ms() - 3_600_000)
        sent = 0
        deadline = time.perf_counter() + self.args.seconds
        while time.perf_counter() < deadline:
            self.publish(frames.next_message())
            sent += 1
        self.publish(END_MARK)
        return sent

    def _sustained(self) -> int:
        frames = Frames(self.args.stream, self.args.beds, t0=now_ms() - 3_600_000)
        sent = 0
        while not self.stop.is_set():
            self._wait_window(sent * OBS_PER_MESSAGE)
            self.publish(frames.next_message())
            sent += 1
        return sent

    def _wait_window(self, sent_obs: int) -> None:
        """Block while ``WINDOW`` observations are published and not yet committed (a gateway's outbox)."""
        with self.window:
            while sent_obs - self.committed >= WINDOW and not self.stop.is_set():
                self.window.wait(1.0)

    def _paced(self) -> int:
        beds = self.args.beds
        frames = Frames(self.args.stream, beds)
        per_tick = max(1, round(beds * TICK_S))
        order = itertools.cycle(range(beds))
        sent = sent_obs = 0
        next_tick = time.perf_counter()
        while not self.stop.is_set():
            due = [next(order) for _ in range(per_tick)]
            ts = now_ms()
            for lo in range(0, len(due), FRAMES_PER_MESSAGE):
                self._wait_window(sent_obs)
                frames_now = due[lo:lo + FRAMES_PER_MESSAGE]
                self.publish(frames.message(frames_now, ts))
                sent += 1
                sent_obs += len(frames_now) * OBS_PER_FRAME
            next_tick += TICK_S
            self.stop.wait(max(0.0, next_tick - time.perf_counter()))
        return sent


def main(argv: list[str]) -> None:
    """Entry of the helper process: ``publish JSON``."""
    logging.basicConfig(level=logging.WARNING)
    if argv[0] != "publish":
        raise SystemExit(f"unknown helper {argv[0]!r}")
    as_remote_load()  # it plays the gateways, whose CPUs are elsewhere
    raw = json.loads(argv[1])
    sent = _Publisher(PublishArgs(raw["mode"], raw["host"], int(raw["port"]), raw["stream"], int(raw["beds"]),
                                  float(raw["seconds"]))).run()
    sys.stdout.write(f"sent {sent}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
