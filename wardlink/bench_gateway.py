"""``wardlink bench gateway``: readings/s of each driver kind through parse, outbox and uplink, beside the raw broker.

For every driver kind the same realistic payload (a monitor frame of 10 parameters, a PCD-01 message of 10
NM rows, a pump poll, a scale poll, an RFID report of 20 tags, a waste scan) goes, device after device of
20, through three paths:

``parse``   the driver's I/O-free path only (bytes, message or registers in, contract items out);
``outbox``  the same plus ``accept`` into a real :class:`~gateway.outbox.Outbox` in a temporary directory,
            handing over what one frame, message or poll yields per call, as the driver does (the RFID
            driver gathers reports up to its ``batch_max`` of 500 tag reads, so that is what it hands over);
``full``    parse -> :meth:`Gateway.accept` -> the real uplink -> the broker -> a commit responder that
            answers every batch with :class:`~devices.contract.Commit` ranges -> the gateway releases the
            rows; timed until every reading accepted was published and released.

Baselines from the same run: the broker relaying pre-encoded 100-observation batches at QoS 1 from a
paho publisher to a subscriber that counts them, and SQLite inserting pre-built rows without secondary
indexes. The broker is a Mosquitto of the benchmark's own (the embedded amqtt broker when Mosquitto is
not installed); it and the commit responder/counter run in processes of their own, so the CPU time
reported (``time.process_time``, all threads of this process) is the gateway's work alone and
"per CPU-s" is the per-core figure. Ratios are readings/s over the broker baseline's observations/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Batch, Commit, Item, encode
from devices.site import Site
from gateway.outbox import Outbox
from gateway.service import Gateway, GatewaySettings
from ingest.service import ranges
from wardlink.bench_support import Clock, Rate, free_port, stop
from wardlink.bench_workloads import (
    DEVICES,
    KINDS,
    SITE,
    WORKLOADS,
    BedsideWorkload,
    OutboxSink,
    Workload,
    bench_site,
)

log = logging.getLogger(__name__)

RAW_TOPIC: Final = "wardlink-bench/raw"
DONE_TOPIC: Final = "wardlink-bench/done"
END_MARK: Final = b"END"
OBS_PER_MESSAGE: Final = 100
PUBLISH_WINDOW: Final = 1_000  # baseline messages queued in paho beyond those acknowledged
OUTBOX_WINDOW: Final = 5_000  # full path: the producer waits while the outbox holds more than this
NO_SHEDDING: Final = 10**9  # outbox bound in the benchmark: a shed row would make the figures lie
DRAIN_TIMEOUT_S: Final = 120.0
NODELAY: Final = "true"  # Mosquitto's set_tcp_nodelay; see broker()

STAGES: Final[dict[str, str]] = {"parse": "parse", "outbox": "parse + outbox", "full": "full path"}


@dataclass(frozen=True, slots=True)
class Durations:
    """Seconds each measurement runs for."""

    parse: float
    outbox: float
    full: float
    broker: float
    sqlite: float


QUICK: Final = Durations(parse=0.1, outbox=0.15, full=0.25, broker=0.3, sqlite=0.1)
FULL: Final = Durations(parse=1.5, outbox=2.5, full=4.0, broker=3.0, sqlite=1.0)


# -- measurements ------------------------------------------------------------------------------------------------
def _warm(workload: Workload) -> None:
    """A round over every device: first contact (registrations, caches) stays out of the timing."""
    for _ in range(DEVICES):
        workload.feed()
    workload.flush()


def measure_parse(workload: Workload, seconds: float) -> Rate:
    """Readings/s of the I/O-free path alone."""
    for _ in range(DEVICES):
        workload.parse()
    count, clock = 0, Clock()
    while clock.elapsed() < seconds:
        count += workload.parse()
    return clock.rate(count)


def measure_outbox(workload: Workload, seconds: float) -> Rate:
    """Readings/s of the driver's path into a real outbox in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        outbox = Outbox(Path(tmp) / "outbox.db", max_rows=NO_SHEDDING)
        try:
            workload.bind(OutboxSink(outbox))
            _warm(workload)
            count, clock = 0, Clock()
            while clock.elapsed() < seconds:
                for _ in range(workload.per_tick):
                    count += workload.feed()
            workload.flush()
            return clock.rate(count)
        finally:
            outbox.close()


async def _until(done: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench gateway: gave up after {limit_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.002)


async def measure_full(workload: Workload, site: Site, address: BrokerAddress, seconds: float) -> Rate:
    """Readings/s from payload to released outbox row through the real gateway, broker and a commit responder."""
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        gateway = Gateway(site, workload.gateway, Path(tmp) / "outbox.db", address,
                          GatewaySettings(outbox_max_rows=NO_SHEDDING), drivers=False)
        task = asyncio.create_task(gateway.run(), name=f"bench {workload.gateway}")
        try:
            await _until(lambda: gateway.uplink_up, 15, f"gateway {workload.gateway} to connect")

            def drained() -> bool:
                return gateway.released >= gateway.accepted

            workload.bind(gateway)
            workload.grouped = True
            _warm(workload)
            await _until(drained, DRAIN_TIMEOUT_S, "the warm-up round to be committed")
            count, clock = 0, Clock()
            while clock.elapsed() < seconds:
                for _ in range(workload.per_tick):
                    count += workload.feed()
                # Each payload is one event-loop callback in a driver; yielding lets the uplink and commits run.
                await asyncio.sleep(0)
                if gateway.outbox.depth() > OUTBOX_WINDOW:
                    await _until(lambda: gateway.outbox.depth() <= OUTBOX_WINDOW // 2, DRAIN_TIMEOUT_S,
                                 "the outbox to drain")
            workload.flush()
            await _until(drained, DRAIN_TIMEOUT_S, "every reading to be published and committed")
            rate = clock.rate(count)
            if gateway.outbox.shed_total or gateway.outbox.depth():
                raise RuntimeError(f"bench gateway: outbox shed {gateway.outbox.shed_total}, "
                                   f"holds {gateway.outbox.depth()}")
            return rate
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def measure_sqlite(rows: list[tuple[Any, ...]], seconds: float) -> Rate:
    """Rows/s of plain SQLite inserts (WAL file, no secondary index, 1,000 rows per transaction)."""
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        db = sqlite3.connect(Path(tmp) / "plain.db", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE plain (lane INTEGER, shed_rank INTEGER, device TEXT, stream TEXT, "
                       "first_seq INTEGER, last_seq INTEGER, count INTEGER, payload BLOB)")
            count, clock = 0, Clock()
            while clock.elapsed() < seconds:
                db.execute("BEGIN")
                db.executemany("INSERT INTO plain VALUES (?,?,?,?,?,?,?,?)", rows)
                db.execute("COMMIT")
                count += len(rows)
            return clock.rate(count)
        finally:
            db.close()


def _message_and_rows(workload: BedsideWorkload) -> tuple[bytes, list[tuple[Any, ...]]]:
    """A 100-observation batch as the uplink would send it, and 1,000 outbox-shaped rows of one reading each."""
    items: list[Item] = []
    seq = itertools.count(1)
    while len(items) < 1000:
        items += [msgspec.structs.replace(i, seq=next(seq)) for i in workload.next_items()]
    message = encode(Batch(gateway=workload.gateway, sent=now_ms(), items=items[:OBS_PER_MESSAGE]))
    encoder = msgspec.json.Encoder()
    rows = [(1, 1, i.device, i.stream, i.seq, i.seq, 1, encoder.encode(i)) for i in items[:1000]]
    return message, rows


def _paho(client_id: str) -> mqtt.Client:
    """A paho client of the benchmark's own, with 100 messages in flight as the services' clients have."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.max_inflight_messages_set(100)
    return client


def _no_delay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off: these clients are test equipment, and a small commit or PUBACK of theirs
    held back behind a delayed ACK would show up as gateway time."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def measure_broker(address: BrokerAddress, message: bytes, seconds: float) -> Rate:
    """Messages relayed per second at QoS 1 from a paho publisher here to the counting subscriber (helper process).

    Timed from the first publish until the subscriber reports it counted the end mark (published after
    the last message on the same topic, so it arrives last).
    """
    ready, done = threading.Event(), threading.Event()
    acked = threading.Semaphore(PUBLISH_WINDOW)  # bounds what paho queues in memory
    counted: list[int] = []
    client = _paho("wardlink-bench-publisher")

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        _no_delay(c)
        c.subscribe(DONE_TOPIC, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: ready.set()
    client.on_publish = lambda _c, _u, _m, _rc, _p: acked.release()

    def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        counted.append(int(msg.payload))
        done.set()

    client.on_message = on_message
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        if not ready.wait(15):
            raise RuntimeError("bench gateway: the baseline publisher could not subscribe")
        sent, clock = 0, Clock()
        while clock.elapsed() < seconds:
            acked.acquire()
            client.publish(RAW_TOPIC, message, qos=1)
            sent += 1
        client.publish(RAW_TOPIC, END_MARK, qos=1)
        if not done.wait(DRAIN_TIMEOUT_S):
            raise RuntimeError("bench gateway: the baseline subscriber did not report")
        rate = clock.rate(counted[0])
    finally:
        client.disconnect()
        client.loop_stop()
    if counted[0] != sent:
        raise RuntimeError(f"bench gateway: {sent} baseline messages published, {counted[0]} arrived")
    return rate


# -- processes of the benchmark's own: broker and commit responder ---------------------------------------------
def _helper(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m wardlink.bench_gateway ARGS``; wait for its ready line and return what follows "ready"."""
    proc = subprocess.Popen([sys.executable, "-m", "wardlink.bench_gateway", *args],  # noqa: S603 - our own module
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if readable else b""
    if not line.startswith(b"ready"):
        stop(proc)
        raise RuntimeError(f"bench gateway: helper {args[0]} did not start")
    return proc, line[len(b"ready"):].strip().decode()


def mosquitto_binary() -> str | None:
    """The installed Mosquitto, or None."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return binary if Path(binary).exists() else None


@contextlib.contextmanager
def broker() -> Iterator[tuple[BrokerAddress, str]]:
    """A Mosquitto of the benchmark's own on a free loopback port, else the embedded amqtt broker in a process."""
    binary = mosquitto_binary()
    if binary is None:
        log.warning("mosquitto is not installed: measuring against the embedded amqtt broker, which is far slower")
        proc, reported = _helper("amqtt")
        try:
            yield BrokerAddress("127.0.0.1", int(reported)), "amqtt (embedded, own process)"
        finally:
            stop(proc)
        return
    with tempfile.TemporaryDirectory(prefix="wardlink-bench-") as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        # The fault tests' settings (no persistence, deep queues, 100 messages in flight per client), and no
        # Nagle delay: with Mosquitto's default the gateway's one publish in flight waits up to 40 ms for each
        # PUBACK behind a delayed ACK, and the figures would measure that instead of the gateway.
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"max_queued_messages 100000\nmax_inflight_messages 100\nset_tcp_nodelay {NODELAY}\n",
                        encoding="utf-8")
        proc = subprocess.Popen([binary, "-c", str(conf)],  # noqa: S603 - the installed broker, our config
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"bench gateway: mosquitto did not start on port {port}") from None
                    time.sleep(0.05)
            yield BrokerAddress("127.0.0.1", port), f"mosquitto (own process, set_tcp_nodelay {NODELAY})"
        finally:
            proc.kill()
            proc.wait(5)


# -- the benchmark --------------------------------------------------------------------------------------------
def _put(figures: dict[str, float], name: str, rate: Rate, baseline: float) -> None:
    figures[f"{name}_per_s"] = rate.per_s
    figures[f"{name}_per_cpu_s"] = rate.per_cpu_s
    figures[f"{name}_vs_baseline"] = rate.per_s / baseline


@contextlib.contextmanager
def _quiet_gateway() -> Iterator[None]:
    """Keep the gateway's per-device INFO lines (discoveries, connects of each run) out of the bench output."""
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)


def run(quick: bool = False) -> dict[str, float]:
    """Every figure of ``wardlink bench gateway`` (``quick``: a few seconds in all, for tests)."""
    with _quiet_gateway():
        return _run(QUICK if quick else FULL)


def _run(durations: Durations) -> dict[str, float]:
    workloads = [factory() for factory in WORKLOADS.values()]
    site = bench_site(workloads)
    message, rows = _message_and_rows(BedsideWorkload())
    figures: dict[str, float] = {}
    with broker() as (address, broker_name):
        responder, _ = _helper("responder", address.host, str(address.port), SITE)
        try:
            log.info("bench gateway: baseline, %s relaying %d-observation batches", broker_name, OBS_PER_MESSAGE)
            messages = measure_broker(address, message, durations.broker)
            observations = Rate(messages.count * OBS_PER_MESSAGE, messages.wall_s, messages.cpu_s)
            baseline = observations.per_s
            figures["baseline_broker_msgs_per_s"] = messages.per_s
            figures["baseline_broker_obs_per_s"] = observations.per_s
            figures["baseline_broker_obs_per_cpu_s"] = observations.per_cpu_s
            sqlite_rate = measure_sqlite(rows, durations.sqlite)
            figures["baseline_sqlite_rows_per_s"] = sqlite_rate.per_s
            figures["baseline_sqlite_rows_per_cpu_s"] = sqlite_rate.per_cpu_s
            if broker_name.startswith("amqtt"):
                figures["broker_embedded_amqtt"] = 1.0
            for workload in workloads:
                log.info("bench gateway: %s (%s)", workload.kind, KINDS[workload.kind])
                _put(figures, f"{workload.kind}_parse", measure_parse(workload, durations.parse), baseline)
                _put(figures, f"{workload.kind}_outbox", measure_outbox(workload, durations.outbox), baseline)
                full = asyncio.run(measure_full(workload, site, address, durations.full))
                _put(figures, f"{workload.kind}_full", full, baseline)
        finally:
            stop(responder)
    return figures


def table(figures: dict[str, float]) -> str:
    """Figure, readings/s, readings per CPU-second and the ratio to the broker baseline, one row each."""
    broker_name = ("embedded amqtt (mosquitto not installed)" if "broker_embedded_amqtt" in figures
                   else f"mosquitto, set_tcp_nodelay {NODELAY}")
    head = f"{'figure':<52}{'readings/s':>14}{'per CPU-s':>14}{'ratio':>9}"
    lines = ["wardlink bench gateway: readings through parse, outbox and uplink, beside the raw broker",
             f"broker: {broker_name}, own process; per CPU-s counts this process only (per core)",
             "", head, "-" * len(head)]
    msgs = figures["baseline_broker_msgs_per_s"]
    lines.append(f"{f'baseline: broker, QoS 1, {OBS_PER_MESSAGE} obs/msg ({msgs:,.0f} msg/s)':<52}"
                 f"{figures['baseline_broker_obs_per_s']:>14,.0f}{figures['baseline_broker_obs_per_cpu_s']:>14,.0f}"
                 f"{1.0:>9.3f}")
    lines.append(f"{'baseline: SQLite insert, no index (rows)':<52}{figures['baseline_sqlite_rows_per_s']:>14,.0f}"
                 f"{figures['baseline_sqlite_rows_per_cpu_s']:>14,.0f}{'':>9}")
    for kind, what in KINDS.items():
        lines.append(f"{kind} ({what})")
        for stage, label in STAGES.items():
            key = f"{kind}_{stage}"
            if f"{key}_per_s" in figures:
                lines.append(f"{'  ' + label:<52}{figures[f'{key}_per_s']:>14,.0f}"
                             f"{figures[f'{key}_per_cpu_s']:>14,.0f}{figures[f'{key}_vs_baseline']:>9.3f}")
    return "\n".join(lines)


# -- helper processes -------------------------------------------------------------------------------------------
class _Key(msgspec.Struct):
    device: str
    stream: str
    seq: int


class _Keys(msgspec.Struct):
    gateway: str
    items: list[_Key]


def _ready(out: IO[str], detail: str = "") -> None:
    out.write(f"ready {detail}\n")
    out.flush()


def responder_main(host: str, port: int, site: str) -> None:
    """Count baseline messages (report the count on the end mark) and answer gateway batches with commits."""
    decoder = msgspec.json.Decoder(_Keys)
    client = _paho("wardlink-bench-responder")
    counted = 0

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        _no_delay(c)
        c.subscribe([(RAW_TOPIC, 1), (topics.gateway_filter(site, "data"), 1),
                     (topics.gateway_filter(site, "alarm"), 1)])

    def on_message(c: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal counted
        if msg.topic == RAW_TOPIC:
            if msg.payload == END_MARK:
                c.publish(DONE_TOPIC, str(counted).encode(), qos=1)
                counted = 0
            else:
                counted += 1
            return
        batch = decoder.decode(msg.payload)
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        for key in batch.items:
            seqs[(key.device, key.stream)].append(key.seq)
        commit = Commit(gateway=batch.gateway, ts=now_ms(), ranges=ranges(seqs))
        c.publish(topics.gateway_topic(site, batch.gateway, "commit"), encode(commit), qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: _ready(sys.stdout)
    client.on_message = on_message
    client.connect(host, port)
    client.loop_forever()


async def _amqtt_main() -> None:
    from wardlink.broker import EmbeddedBroker

    embedded = EmbeddedBroker(port=free_port())
    address = await embedded.start()
    _ready(sys.stdout, str(address.port))
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    """Entry of the helper processes: ``responder HOST PORT SITE`` or ``amqtt``."""
    logging.basicConfig(level=logging.WARNING)
    if argv[0] == "responder":
        responder_main(argv[1], int(argv[2]), argv[3])
    elif argv[0] == "amqtt":
        asyncio.run(_amqtt_main())
    else:
        raise SystemExit(f"unknown helper {argv[0]!r}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
