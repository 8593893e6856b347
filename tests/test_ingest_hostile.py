"""Mixed invalid payloads into live ingest over a real Mosquitto: no crash, no stall, every one quarantined.

A publisher of the test's own sends, at QoS 1, a seeded mixture of invalid payloads (truncated JSON, wrong types,
NaN/Inf, oversize, unknown device, wrong gateway, a device of another gateway, unknown kind, deep nesting, huge
strings, binary garbage) interleaved with valid batches. Each invalid payload is built to cost exactly one
quarantine record, so the count can be checked exactly: quarantined == invalid sent, stored == valid sent, no
duplicate. The worker's session must never restart (a crash restarts it under bus.supervise), and the longest
gap between two messages it handled is measured and printed (asserted only against a generous bound).

The suite runs 10,000 payloads; ``make soak`` runs the full 100,000 (marker ``soak``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices import topics
from devices.bus import BrokerAddress
from devices.contract import Batch, Observation, encode
from ingest.service import MAX_KEY, Ingest, IngestSettings
from storage.base import Quarantined
from storage.duckdb import DuckDbStore
from storage.memory import MemoryStore
from storage.sqlite import SqliteStore
from tests.conftest import Mosquitto
from wardlink.config import load

MAX_PAYLOAD = 64 * 1024
WINDOW = 2_000  # messages published and not yet handled: the publisher waits beyond it (as a gateway's in-flight)
VALID_SHARE = 0.2
ITEMS_PER_VALID = 5
OWN = [f"mon-icu-0{n}" for n in range(1, 9)]  # devices of gw-icu
OTHERS = "scale-w3"  # a device of gw-w3


class Measured(Ingest):
    """The real worker, timing every message it handles and counting its sessions (a crash starts another)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.handled_at: list[float] = []
        self.sessions = 0
        self.subscribed = False

    def dispatch(self, topic: str, payload: bytes, now: int | None = None) -> None:
        super().dispatch(topic, payload, now)
        if topic.endswith("/data"):  # the test's input (not the worker's own commits and statuses)
            self.handled_at.append(time.perf_counter())
        self.subscribed = self.subscribed or "/svc/" in topic  # its own status: the last of its subscriptions

    async def _session(self) -> None:
        self.sessions += 1
        await super()._session()


def _obs(device: str, seq: int, stream: str = "numerics", value: float = 97.0) -> Observation:
    return Observation(device=device, stream=stream, seq=seq, ts=1_767_225_600_000 + seq, metric="MDC_PULS_OXIM_SAT_O2",
                       value=value, unit="%", code=150456, bed="ICU-01")


def _batch(*items: Observation, gateway: str = "gw-icu") -> bytes:
    return encode(Batch(gateway=gateway, sent=1, items=list(items)))


def _one_bad(rng: random.Random, n: int, seqs: dict[str, itertools.count[int]]) -> bytes:
    """One invalid payload that costs exactly one quarantine record (stream "fuzz*": never a stored key).

    Sequence numbers stay contiguous per stream, as a gateway's are: the worker commits the quarantined ones,
    and holes would make it report data gaps (whose events would then come back through the same topics).
    """
    item = _obs(f"fz-{n}", 1, stream="fuzz")  # a stream of its own
    good = _batch(item)
    kind = n % 15
    if kind == 0:  # truncated JSON: any strict prefix of an object is unreadable
        return good[:rng.randrange(1, len(good))]
    if kind == 1:  # wrong type of an item field: the batch is read, the item set apart
        return good.replace(b'"value":97.0', b'"value":"97"')
    if kind == 2:  # wrong type of a batch field
        return good.replace(b'"sent":1', b'"sent":"yesterday"')
    if kind == 3:  # overflow to Inf, from a device of the gateway (so that the finite check is what refuses it)
        inf = _obs(OWN[0], next(seqs["inf"]), stream="fuzz-inf")
        return _batch(inf).replace(b'"value":97.0', b'"value":-1e999')
    if kind == 4:  # NaN and Infinity are not JSON
        return good.replace(b'"value":97.0', rng.choice([b'"value":NaN', b'"value":Infinity']))
    if kind == 5:  # oversize
        return good + b" " * (MAX_PAYLOAD + 1 - len(good) + rng.randrange(0, 1000))
    if kind == 6:  # unknown device
        return _batch(_obs(f"nope-{n}", n, stream="fuzz"))
    if kind == 7:  # the batch says another gateway than its topic
        return _batch(item, gateway="gw-w3")
    if kind == 8:  # a device of another gateway
        return _batch(_obs(OTHERS, next(seqs["other"]), stream="fuzz"))
    if kind == 9:  # unknown kind
        return good.replace(b'"kind":"obs"', b'"kind":"telepathy"')
    if kind == 10:  # nesting past the recursion limit, in an item or as the whole payload
        depth = rng.randrange(2_000, 12_000)
        return rng.choice([good.replace(b'"value":97.0', b'"value":97.0,"x":' + b"[" * depth + b"]" * depth),
                           b"[" * depth])
    if kind == 11:  # a huge string where a short id belongs
        return _batch(_obs("x" * rng.randrange(10_000, 60_000), n, stream="fuzz"))
    if kind == 12:  # binary garbage
        return b"\xff" + rng.randbytes(rng.randrange(0, 2_000))
    if kind == 13:  # bytes that are not UTF-8 inside a string
        return good.replace(b'"fuzz"', b'"fu\xcb\xcbzz"')
    return good.replace(b'"seq":', b'"seq":-', 1)  # negative sequence number


def _mixture(total: int, seed: int) -> tuple[list[bytes], int, int]:
    """The payloads in order, with the number of invalid ones and of valid items."""
    rng = random.Random(seed)
    payloads: list[bytes] = []
    next_seq = dict.fromkeys(OWN, 1)
    invalid = valid_items = 0
    seqs = {"inf": itertools.count(1), "other": itertools.count(1)}
    for n in range(total):
        if rng.random() < VALID_SHARE:
            device = rng.choice(OWN)
            first = next_seq[device]
            next_seq[device] += ITEMS_PER_VALID
            payloads.append(_batch(*(_obs(device, s) for s in range(first, first + ITEMS_PER_VALID))))
            valid_items += ITEMS_PER_VALID
        else:
            payloads.append(_one_bad(rng, n, seqs))
            invalid += 1
    return payloads, invalid, valid_items


def _publish(mosquitto: Mosquitto, topic: str, payloads: list[bytes], ingest: Measured, stop: threading.Event) -> None:
    """Publish at QoS 1, never more than WINDOW ahead of the worker; wait for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-pub")
    client.max_inflight_messages_set(100)
    client.connect(mosquitto.address.host, mosquitto.address.port)
    client.loop_start()
    try:
        infos = []
        for sent, payload in enumerate(payloads):
            while sent - ingest.counters["messages"] > WINDOW and not stop.is_set():
                time.sleep(0.001)
            infos.append(client.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _held(store: SqliteStore) -> tuple[int, int]:
    """What the store holds: quarantined inputs and observations."""
    return store.quarantine_count(), store.stats().observations


async def _run(mosquitto: Mosquitto, tmp_path: Path, total: int) -> None:
    site = load(env={}).site
    store = SqliteStore(tmp_path / "ts.db")
    settings = IngestSettings(max_payload=MAX_PAYLOAD, mqtt5=False, share_group=None, gap_grace_s=3600)
    ingest = Measured(site, store, mosquitto.address, settings=settings)
    payloads, invalid, valid_items = _mixture(total, seed=total)
    topic = topics.gateway_topic(site.id, "gw-icu", "data")
    task = asyncio.create_task(ingest.run())
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 10
        while not ingest.subscribed:
            assert time.monotonic() < deadline, "the ingest worker did not subscribe"
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        publisher = asyncio.create_task(asyncio.to_thread(_publish, mosquitto, topic, payloads, ingest, stop))
        deadline = time.monotonic() + 60 + total / 100
        while (held := await asyncio.to_thread(_held, store)) != (invalid, valid_items):  # off the worker's loop
            assert not task.done(), "the ingest worker ended"
            # A second session means the first one failed (see the log), and what it had read is gone: there is
            # no gateway here to send it again.
            assert ingest.sessions == 1, f"the session restarted; counters {dict(ingest.counters)}"
            assert time.monotonic() < deadline, f"(quarantined, stored) {held} of {(invalid, valid_items)}, " \
                                                f"counters {dict(ingest.counters)}"
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        await publisher
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    handled = ingest.handled_at  # from the first payload to the last: the worker always had input waiting
    max_gap = max(b - a for a, b in itertools.pairwise(handled))
    print(f"\nhostile ingest: {total} payloads ({invalid} invalid, {total - invalid} valid batches of "
          f"{ITEMS_PER_VALID}) in {elapsed:.1f} s ({total / elapsed:,.0f}/s); max gap between handled messages "
          f"{max_gap * 1000:.0f} ms; quarantined {invalid}; stored {valid_items}; sessions {ingest.sessions}")
    assert ingest.sessions == 1  # no crash: bus.supervise would have started a second session
    assert ingest.counters["messages"] == total
    assert ingest.counters["quarantined"] == invalid
    assert ingest.counters["stored"] == valid_items
    assert ingest.counters["duplicates"] == 0
    assert ingest.counters["mqtt_queue_dropped"] == 0
    assert max_gap < 5.0  # generous: the figure printed above is the measurement


async def test_ten_thousand_hostile_payloads(mosquitto: Mosquitto, tmp_path: Path) -> None:
    await _run(mosquitto, tmp_path, 10_000)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_a_hundred_thousand_hostile_payloads(mosquitto: Mosquitto, tmp_path: Path) -> None:
    await _run(mosquitto, tmp_path, 100_000)


def test_undecodable_commits_and_statuses_are_counted_not_raised() -> None:
    # Found by the fuzzing: the worker's commit and status decoders let msgspec's RecursionError out of dispatch,
    # which ended the session (and the gateway's and alert engine's decoders of their topics did the same).
    site = load(env={}).site
    ingest = Ingest(site, MemoryStore(), BrokerAddress("127.0.0.1", 1))
    deep = b'{"gateway":"gw-icu","ts":1,"x":' + b"[" * 100_000
    not_utf8 = b'{"gateway":"gw-\xcb","ts":1}'
    for payload in (deep, not_utf8):
        ingest.dispatch(topics.gateway_topic(site.id, "gw-icu", "commit"), payload)
        ingest.dispatch(topics.service_topic(site.id, "ingest", "ingest-2"), payload)
    assert (ingest.counters["commits_undecodable"], ingest.counters["statuses_undecodable"]) == (2, 2)


def test_a_huge_device_id_is_quarantined_but_not_echoed_in_the_commit() -> None:
    # Found by the 100,000 run: 60 KB "device ids" went back in every commit (20 MB commits) and into the gap tracker.
    site = load(env={}).site
    store = MemoryStore()
    ingest = Ingest(site, store, BrokerAddress("127.0.0.1", 1))
    huge, fine = "x" * (MAX_KEY + 1), "nope-1"
    ingest.handle(topics.gateway_topic(site.id, "gw-icu", "data"),
                  _batch(_obs(huge, 1), _obs(fine, 1), _obs(OWN[0], 1)))
    committed = {key for keys in ingest._pending.seqs.values() for key in keys}
    assert committed == {(fine, "numerics"), (OWN[0], "numerics")}
    assert ingest.counters["quarantined"] == 2


@pytest.mark.parametrize("kind", ["sqlite", "duckdb", "memory"])
def test_quarantine_many_keeps_every_row_in_one_go(tmp_path: Path, kind: str) -> None:
    store = {"sqlite": lambda: SqliteStore(tmp_path / "ts.db"), "duckdb": lambda: DuckDbStore(tmp_path / "ts.duckdb"),
             "memory": MemoryStore}[kind]()
    rows = [Quarantined(ts=n, source="gw-icu", reason=f"reason {n}", raw=bytes([n]) * n) for n in range(1, 4)]
    store.quarantine_many(rows)
    store.quarantine_many([])
    assert store.quarantine_count() == 3
    assert store.quarantined() == rows[::-1]  # newest first, raw bytes and reasons as given
    store.close()
