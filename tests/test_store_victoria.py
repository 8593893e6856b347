"""VictoriaStore against a real victoria-metrics (tests/victoria.py), checked against the MemoryStore twin."""

from __future__ import annotations

import gzip
import http.server
import json
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from devices.contract import DeviceEvent, Observation, TagRead
from storage import MemoryStore, StoreClosed, StoreError, StoreUnavailable
from storage.victoria import (
    DAY_MS,
    VictoriaStore,
    _fast_gzip,
    bench_build,
    bench_write,
    escape_tag,
    line_of,
    now_ms,
)
from tests.victoria import VictoriaMetrics, victoria  # noqa: F401  (the fixture)

METRICS = ("HR", "SPO2", "RR")
T0 = (now_ms() - 2 * 3_600_000) // 60_000 * 60_000  # two hours ago, on a minute boundary


@pytest.fixture
def store(victoria: VictoriaMetrics, tmp_path: Path) -> Iterator[VictoriaStore]:  # noqa: F811
    s = VictoriaStore(victoria.url, tmp_path / "side.db", connect_timeout_s=1.0, read_timeout_s=3.0)
    yield s
    s.close()


def export(url: str, match: str, start_ms: int, end_ms: int) -> list[dict[str, object]]:
    """Raw series from VM's /api/v1/export, bypassing the store."""
    query = urllib.parse.urlencode({"match[]": match, "start": start_ms / 1000, "end": end_ms / 1000})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=5) as answer:
        return [json.loads(line) for line in answer.read().splitlines() if line.strip()]


def twin_data(rng: random.Random, n: int) -> list[Observation]:
    """Random observations, unique per (device, stream, metric, ts) as this backend requires."""
    items: dict[tuple[str, str, int], Observation] = {}
    seq = 0
    while len(items) < n:
        device = f"mon{rng.randrange(4)}"
        metric = rng.choice(METRICS)
        ts = T0 + rng.randrange(0, 600_000, 250) - rng.choice((0, 0, 1))  # some 1 ms before an edge
        seq += 1
        if (device, metric, ts) in items:
            continue
        items[(device, metric, ts)] = Observation(
            device=device, stream="numerics", seq=seq, ts=ts, metric=metric, value=round(rng.uniform(40, 140), 3),
            unit="/min", code=rng.randrange(1, 1000), bed=None if rng.random() < 0.05 else f"bed{int(device[3:]) % 3}",
            device_ts=rng.choice([None, T0 - 5]), flags=rng.choice([0, 0, 2]),
        )
    values = list(items.values())
    rng.shuffle(values)
    return values


def test_agrees_with_the_twin_on_latest_raw_history_and_buckets(store: VictoriaStore) -> None:
    obs = twin_data(random.Random(1), 2000)
    twin = MemoryStore()
    assert twin.write(obs) == store.write(obs)
    store.flush()
    targets: list[dict[str, str]] = [
        {"bed": "bed1"}, {"bed": "bed0"}, {"device": "mon2"}, {"bed": "bed1", "device": "mon1"}
    ]
    for target in targets:
        assert store.latest(**target) == twin.latest(**target)
        assert store.latest(**target, since_ms=T0 + 599_000) == twin.latest(**target, since_ms=T0 + 599_000)
        for metric in METRICS:
            for start, end in ((T0, T0 + 600_000), (T0 + 10_001, T0 + 419_999), (T0 + 61_000, T0 + 61_500)):
                query = {"metric": metric, "start_ms": start, "end_ms": end, **target}
                assert store.history(**query) == twin.history(**query)
                assert store.history(**query, limit=7) == twin.history(**query, limit=7)
                for step in (1_000, 60_000, 7_000, 3_600_000):
                    got, want = store.history(**query, step_ms=step), twin.history(**query, step_ms=step)
                    assert [(p.ts, p.min, p.max, p.count) for p in got] == [(p.ts, p.min, p.max, p.count) for p in want]
                    assert [p.value for p in got] == pytest.approx([p.value for p in want], rel=1e-12)
    stats = store.stats()
    assert (stats.observations, stats.events) == (2000, 0)
    assert stats.file_bytes > 0


def test_one_millisecond_buckets_are_exact(store: VictoriaStore) -> None:
    obs = [Observation(device="m", stream="s", seq=i, ts=T0 + i * 3, metric="HR", value=float(i), unit="/min", bed="b")
           for i in range(50)]
    twin = MemoryStore()
    twin.write(obs)
    store.write(obs)
    store.flush()
    query = {"bed": "b", "metric": "HR", "start_ms": T0 + 1, "end_ms": T0 + 100, "step_ms": 1}
    assert store.history(**query) == twin.history(**query)


def test_replays_overwrite_and_duplicates_mean_repeats_in_the_batch(store: VictoriaStore) -> None:
    obs = twin_data(random.Random(2), 300)
    # VM cannot tell a replay apart; checked=True (the caller ran check_item) writes the same way.
    assert (store.write(obs).stored, store.write(obs, checked=True).stored) == (300, 300)
    replay = obs * 3
    random.Random(3).shuffle(replay)
    result = store.write(replay)
    # Repeats inside one batch are counted; a key from an earlier batch is counted as stored (VM collapses it).
    assert (result.stored, result.duplicates) == (300, 600)
    store.flush()
    assert store.stats().observations == 300
    total = sum(p.count for metric in METRICS for p in store.history(
        device="mon1", metric=metric, start_ms=T0, end_ms=T0 + 600_000, step_ms=600_000))
    assert total == sum(1 for o in obs if o.device == "mon1")


def test_two_readings_of_one_series_in_one_millisecond_are_refused_not_merged(store: VictoriaStore) -> None:
    a = Observation(device="m", stream="s", seq=1, ts=T0, metric="HR", value=60.0, unit="/min", bed="b")
    b = Observation(device="m", stream="s", seq=2, ts=T0, metric="HR", value=99.0, unit="/min", bed="b")
    with pytest.raises(StoreError, match="same ts") as info:
        store.write([a, b])
    assert info.value.retryable is False
    assert store.write([a]).stored == 1  # what ingest does next: item by item
    with pytest.raises(StoreError, match="same ts"):
        store.write([b])
    assert store.write([a]).stored == 1  # a replay of the stored one is fine
    store.flush()
    assert [p.value for p in store.history(bed="b", metric="HR", start_ms=T0, end_ms=T0 + 1)] == [60.0]


def test_vm_drops_far_future_and_too_old_samples_silently_so_the_store_refuses_them(
    store: VictoriaStore, victoria: VictoriaMetrics  # noqa: F811
) -> None:
    now = now_ms()
    # Device clock 10 days ahead, gateway-owned ts now: kept.
    ahead = Observation(device="skew", stream="s", seq=1, ts=now - 1000, metric="HR", value=70.0, unit="/min",
                        bed="b9", device_ts=now + 10 * DAY_MS)
    assert store.write([ahead]).stored == 1
    # Straight to VM (no store guard): 3 days ahead and 40 days old are answered 204 and then missing.
    client = InfluxDBClient(url=victoria.url, token="", org="x", timeout=5000)
    try:
        lines = [
            line_of(Observation(device="raw", stream="s", seq=i, ts=ts, metric="HR", value=float(i), unit="u"))
            for i, ts in ((1, now + 3 * DAY_MS), (2, now - 40 * DAY_MS), (3, now + DAY_MS))
        ]
        client.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="\n".join(lines), write_precision="ms")
    finally:
        client.close()
    store.flush()
    assert [p.value for p in store.history(bed="b9", metric="HR", start_ms=now - 5000, end_ms=now)] == [70.0]
    kept = export(victoria.url, '{device="raw",__name__="obs_value"}', now - 50 * DAY_MS, now + 5 * DAY_MS)
    assert [s["values"] for s in kept] == [[3.0]]  # only the 1-day-ahead one survived
    # The store refuses both before writing anything, non-retryably, so ingest quarantines them.
    for ts, why in ((now + 3 * DAY_MS, "ahead"), (now - 40 * DAY_MS, "retention")):
        bad = Observation(device="late", stream="s", seq=9, ts=ts, metric="HR", value=5.0, unit="u", bed="b8")
        good = Observation(device="late", stream="s", seq=10, ts=now - 100, metric="HR", value=6.0, unit="u", bed="b8")
        with pytest.raises(StoreError, match=why) as info:
            store.write([good, bad])
        assert info.value.retryable is False
    store.flush()
    assert store.history(bed="b8", metric="HR", start_ms=now - 60 * DAY_MS, end_ms=now + 2 * DAY_MS) == []


def test_a_stopped_server_is_retryable_promptly(store: VictoriaStore, victoria: VictoriaMetrics) -> None:  # noqa: F811
    obs = [Observation(device="m", stream="s", seq=1, ts=T0, metric="HR", value=1.0, unit="u", bed="b")]
    victoria.stop()
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.write(obs)
    assert info.value.retryable is True
    with pytest.raises(StoreError) as read:
        store.latest(bed="b")
    assert read.value.retryable is True
    assert time.monotonic() - began < 3
    victoria.start()  # same data directory: the retry succeeds
    assert store.write(obs).stored == 1


def test_a_server_that_never_answers_times_out_as_retryable(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        s = VictoriaStore(f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path / "side.db",
                          connect_timeout_s=0.5, read_timeout_s=0.5)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            s.write([Observation(device="m", stream="s", seq=1, ts=T0, metric="HR", value=1.0, unit="u")])
        with pytest.raises(StoreUnavailable):
            s.history(device="m", metric="HR", start_ms=T0, end_ms=T0 + 1)
        assert time.monotonic() - began < 3
        s.close()
    finally:
        silent.close()


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (413, False), (429, True), (500, True), (503, True)])
def test_http_status_maps_to_retryable(tmp_path: Path, status: int, retryable: bool) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    s = VictoriaStore(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "side.db")
    try:
        with pytest.raises(StoreError) as info:
            s.write([Observation(device="m", stream="s", seq=1, ts=now_ms(), metric="HR", value=1.0, unit="u")])
        assert info.value.retryable is retryable
        with pytest.raises(StoreError) as read:
            s.latest(device="m")
        assert read.value.retryable is retryable
    finally:
        s.close()
        server.shutdown()
        server.server_close()


def test_events_and_quarantine_live_in_the_side_store(store: VictoriaStore) -> None:
    evt = DeviceEvent(device="mon1", stream="alarms", seq=1, ts=T0 + 5, event="MDC_EVT_HI", alarm_kind="physiological",
                      priority="high", bed="bed1")
    tag = TagRead(device="reader", stream="tags", seq=1, ts=T0 + 6, tag="t1", rssi=-50.0)
    obs = Observation(device="mon1", stream="numerics", seq=1, ts=T0, metric="HR", value=60.0, unit="/min", bed="bed1")
    assert (store.write([evt, tag, obs]).stored, store.write([obs]).stored) == (3, 1)
    assert store.write([evt, tag]).duplicates == 2  # events are deduplicated exactly, in SQLite
    assert store.events(start_ms=T0, end_ms=T0 + 10) == [evt, tag]
    assert store.events(bed="bed1", start_ms=T0, end_ms=T0 + 10, kind="evt") == [evt]
    store.quarantine(source="gw", reason="bad", raw=b"\x00x", ts=T0)
    assert store.quarantine_count() == 1
    assert store.quarantined()[0].raw == b"\x00x"
    store.flush()
    assert (store.stats().observations, store.stats().events, store.stats().quarantined) == (1, 2, 1)


def test_awkward_tag_values_round_trip(store: VictoriaStore) -> None:
    name = 'mon 1,a=b\\c"d'
    obs = Observation(device=name, stream="s p", seq=1, ts=T0, metric="M=1", value=-0.125, unit="mm[Hg]", bed="bed,1")
    assert escape_tag("a b,c=d") == "a\\ b\\,c\\=d"
    store.write([obs])
    store.flush()
    got = store.latest(device=name)
    assert [(g.device, g.metric, g.bed, g.unit, g.value) for g in got] == [(name, "M=1", "bed,1", "mm[Hg]", -0.125)]
    with pytest.raises(StoreError, match="line break") as info:
        store.write([Observation(device="m\nx", stream="s", seq=1, ts=T0, metric="HR", value=1.0, unit="u")])
    assert info.value.retryable is False


def test_closed_store_raises(store: VictoriaStore) -> None:
    store.close()
    for call in (lambda: store.latest(bed="b"), lambda: store.write([]), store.quarantine_count):
        with pytest.raises(StoreClosed):
            call()


def test_bench_write_and_build_rates(store: VictoriaStore) -> None:
    rate = bench_write(store, 20_000)
    rates = bench_build(20_000)
    assert rate > 0
    assert rates["fstring_lines_s"] > rates["point_lines_s"]


def test_line_prefix_cache_stays_bounded_and_lines_stay_right(store: VictoriaStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storage.victoria.PREFIX_CACHE_MAX", 3)
    obs = [Observation(device=f"m{i % 5}", stream="s", seq=i, ts=T0 + i, metric="HR", value=float(i), unit="/min",
                       bed=f"b{i % 5}") for i in range(40)]
    assert store.write(obs[:20]).stored == 20
    assert store.write(obs[20:], checked=True).stored == 20
    assert len(store._prefixes) <= 3
    store.flush()
    for i in range(5):
        got = store.history(bed=f"b{i}", metric="HR", start_ms=T0, end_ms=T0 + 40)
        assert [p.value for p in got] == [float(j) for j in range(i, 40, 5)]
    assert [line_of(o) for o in obs[:1]] == [
        f"obs,device=m0,stream=s,metric=HR,bed=b0,unit=/min value=0.0,seq=0i,flags=0i,code=0i {T0}"]


def test_write_bodies_are_gzip_at_the_fast_level() -> None:
    body = b"obs,device=m value=1.0 1\n" * 100
    packed = _fast_gzip("/api/v2/write", body)
    assert isinstance(packed, bytes)
    assert gzip.decompress(packed) == body
    assert _fast_gzip("/api/v2/query", "q") == "q"  # only write bodies are touched


def test_a_large_write_goes_out_as_posts_side_by_side(victoria: VictoriaMetrics, tmp_path: Path) -> None:  # noqa: F811
    s = VictoriaStore(victoria.url, tmp_path / "side.db", batch_lines=100, post_threads=3)
    try:
        items = [Observation(device="big", stream="numerics", seq=i, ts=T0 + i, metric="HR", value=float(i),
                             unit="/min") for i in range(450)]  # five posts, three at a time
        assert s.write(items).stored == 450
        s.flush()
        [series] = [e for e in export(victoria.url, '{__name__="obs_value",device="big"}', T0, T0 + 1000)]
        assert series["values"] == [float(i) for i in range(450)]
    finally:
        s.close()


def test_a_refused_post_outranks_a_retryable_one(tmp_path: Path) -> None:
    posts: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = gzip.decompress(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            posts.append(body)
            self.send_response(400 if b"device=bad" in body else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s = VictoriaStore(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "side.db", batch_lines=1)
    try:
        with pytest.raises(StoreError) as info:
            s.write([Observation(device=d, stream="s", seq=1, ts=now_ms(), metric="HR", value=1.0, unit="u")
                     for d in ("a", "bad", "c", "d")])
        assert info.value.retryable is False  # the caller stores item by item rather than retrying for ever
        assert len(posts) == 4  # every post had ended when the write raised
    finally:
        s.close()
        server.shutdown()
        server.server_close()


def test_a_batch_refused_after_a_part_was_posted_is_stored_once_by_the_retry(victoria: VictoriaMetrics,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    s = VictoriaStore(victoria.url, tmp_path / "side.db", batch_lines=2)
    try:
        good = [Observation(device="part", stream="s", seq=i, ts=T0 + i, metric="HR", value=float(i), unit="/min")
                for i in range(3)]
        clash = Observation(device="part", stream="s", seq=9, ts=T0 + 2, metric="HR", value=99.0, unit="/min")
        with pytest.raises(StoreError) as refused:
            s.write([*good, clash])  # the first part (two lines) is posted before the clash is found
        assert refused.value.retryable is False
        for item in good:  # what ingest does with a refused batch: item by item
            assert s.write([item]).stored == 1
        s.flush()
        [series] = export(victoria.url, '{__name__="obs_value",device="part"}', T0, T0 + 10)
        assert series["values"] == [0.0, 1.0, 2.0]  # each once, the clash nowhere
        assert series["timestamps"] == [T0, T0 + 1, T0 + 2]
    finally:
        s.close()
