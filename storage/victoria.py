"""The production backend: observations in VictoriaMetrics (line protocol in, MetricsQL out), the rest in SQLite.

Write side: influxdb-client's synchronous write API posts gzip'd line protocol, ``precision=ms``, in
batches of ``batch_lines`` (5,000) to VictoriaMetrics' InfluxDB v2 endpoint (``/api/v2/write``; VM
ignores token and org and the bucket). Lines are built with f-strings, one per observation::

    obs,device=<d>,stream=<s>,metric=<m>[,bed=<b>][,unit=<u>][,containment=<c>]
        value=<f>,seq=<n>i,flags=<n>i,code=<n>i[,device_ts=<n>i] <ts>

VictoriaMetrics turns each field into a series (``obs_value``, ``obs_seq`` ...) labelled by the tags, so
a bed + metric or device + metric history is one label-index lookup. A sample's identity in VM is
series + timestamp, and the timestamp is the gateway-owned ``ts``: a replay of ``(device, stream, seq)``
carries the same ``ts`` and tags, so with ``-dedup.minScrapeInterval=1ms`` it collapses onto the stored
sample instead of adding one. The price: two *different* readings of the same device, stream and metric
in the same millisecond would collapse too (and VM's dedup may keep ``value`` from one and ``seq`` from
the other). The store refuses such a reading (non-retryable :class:`StoreError`, so ingest quarantines
it) when it sees the collision in one batch or against the newest sample it wrote for that series; the
real fix is a gateway stamping ``ts`` strictly increasing per stream (see docs/storage.md).

Time guards: VictoriaMetrics answers 204 and silently drops samples more than 2 days ahead of its clock
or older than its retention, so the store refuses (non-retryably) a batch with
an observation whose ``ts`` is more than ``future_ms`` (1 day) ahead of the store's clock or older than
``retention_ms``. ``device_ts`` is only a field and is never checked.

Events (non-observation items) and quarantine are JSON bodies that VM cannot hold: they live in a
:class:`~storage.sqlite.SqliteStore` side file that this store delegates to.

Read side: ``/api/v1/export`` for raw history, ``/api/v1/query_range`` with ``sum/min/max/count_over_time``
for buckets (evaluated at each bucket's last millisecond with a window of one step, so buckets are the
epoch-aligned ``[b, b + step)`` of :func:`~storage.base.bucket_start`), and an instant query of
``last_over_time``/``tlast_over_time`` for ``latest``. Every query passes ``nocache=1``: VM's rollup
cache and its ``-search.latencyOffset`` would otherwise hide the newest 30 s. Samples become searchable
about a second after the write (VM buffers them); :meth:`VictoriaStore.flush` forces it (tests, bench).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, cast
from urllib.parse import urlencode

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from devices.contract import Observation

from .base import (
    HistoryPoint,
    Latest,
    Quarantined,
    Record,
    StoreClosed,
    StoredEvent,
    StoreError,
    StoreStats,
    StoreUnavailable,
    TimeSeriesStore,
    WriteResult,
    bucket_start,
    check_range,
    check_record,
    check_target,
)
from .sqlite import SqliteStore

log = logging.getLogger(__name__)

MEASUREMENT: Final = "obs"
DAY_MS: Final = 86_400_000
DEFAULT_RETENTION_MS: Final = 31 * DAY_MS  # VictoriaMetrics' default -retentionPeriod=1 (month)
DEFAULT_FUTURE_MS: Final = DAY_MS
VM_FUTURE_LIMIT_MS: Final = 2 * DAY_MS  # VM drops samples further ahead of its clock than this
MAX_POINTS_PER_QUERY: Final = 10_000  # below VM's -search.maxPointsPerTimeseries (30,000)
# Distinct series whose escaped line prefix is kept; devices and metrics repeat, so a ward fits many times over.
PREFIX_CACHE_MAX: Final = 100_000
_SERIES_LABELS: Final = ("device", "stream", "metric", "bed", "unit", "containment")
# gzip level of the request body: level 1 costs about a tenth of the default 9 for 1.5x the bytes (docs/storage.md).
GZIP_LEVEL: Final = 1

# Line protocol escapes (https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/).
_TAG_ESCAPE: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\"})
_BAD_TAG_CHARS: Final = frozenset("\n\r")
_MS: Final = cast(WritePrecision, WritePrecision.MS)  # the class holds plain strings


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def escape_tag(value: str) -> str:
    """Escape a tag key or value for line protocol (comma, equals sign, space, backslash)."""
    return value.translate(_TAG_ESCAPE)


def promql_string(value: str) -> str:
    """A MetricsQL double-quoted string literal holding ``value``."""
    return json.dumps(value)


def series_prefix(device: str, stream: str, metric: str, bed: str | None, unit: str,
                  containment: str | None) -> str:
    """The measurement and escaped tags of a line, up to the first field name: ``obs,<tags> value=``.

    A line break in a tag cannot be carried by line protocol: such a series is refused (not retryable).
    """
    for label, text in (("device", device), ("stream", stream), ("metric", metric), ("bed", bed), ("unit", unit),
                        ("containment", containment)):
        if text and not _BAD_TAG_CHARS.isdisjoint(text):
            raise StoreError(f"device {device}: field {label} holds a line break", retryable=False)
    tags = f"device={escape_tag(device)},stream={escape_tag(stream)},metric={escape_tag(metric)}"
    if bed:
        tags += f",bed={escape_tag(bed)}"
    if unit:
        tags += f",unit={escape_tag(unit)}"
    if containment:
        tags += f",containment={escape_tag(containment)}"
    return f"{MEASUREMENT},{tags} value="


def fields_of(prefix: str, obs: Observation) -> str:
    """One line: a :func:`series_prefix` followed by the observation's fields and its ms timestamp."""
    if obs.device_ts is None:
        return f"{prefix}{obs.value!r},seq={obs.seq}i,flags={obs.flags}i,code={obs.code}i {obs.ts}"
    return (f"{prefix}{obs.value!r},seq={obs.seq}i,flags={obs.flags}i,code={obs.code}i,"
            f"device_ts={obs.device_ts}i {obs.ts}")


def line_of(obs: Observation) -> str:
    """The line protocol line of one observation (tags without empty values, ms timestamp)."""
    return fields_of(series_prefix(obs.device, obs.stream, obs.metric, obs.bed, obs.unit, obs.containment), obs)


def selector(name: str, *, metric: str | None, bed: str | None, device: str | None) -> str:
    """A MetricsQL series selector of one field series, filtered by metric, bed and device."""
    filters = [f"__name__={promql_string(name)}" if "|" not in name else f"__name__=~{promql_string(name)}"]
    if metric is not None:
        filters.append(f"metric={promql_string(metric)}")
    if bed is not None:
        filters.append(f"bed={promql_string(bed)}")
    if device is not None:
        filters.append(f"device={promql_string(device)}")
    return "{" + ",".join(filters) + "}"


def _seconds(ms: int) -> str:
    """A VM time argument (seconds with a millisecond fraction) for ``ms``."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def _ms(seconds: float | str) -> int:
    """Milliseconds from a VM timestamp in (fractional) seconds."""
    return round(float(seconds) * 1000)


class VictoriaStore:
    """A :class:`~storage.base.TimeSeriesStore`: observations in VictoriaMetrics, events and quarantine in SQLite."""

    # Items per write: four line-protocol posts of the size the write API likes (batch_lines), sent side by side.
    preferred_batch: Final = 20_000

    def __init__(
        self,
        url: str,
        side_path: str | os.PathLike[str],
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        batch_lines: int = 5_000,
        retention_ms: int = DEFAULT_RETENTION_MS,
        future_ms: int = DEFAULT_FUTURE_MS,
        clock: Callable[[], int] = now_ms,
        bucket: str = "wardlink",
        token: str | None = None,
        post_threads: int = 4,
    ) -> None:
        """Connect to VictoriaMetrics at ``url`` and open the SQLite side store at ``side_path``.

        A write of more than ``batch_lines`` observations goes out as posts of ``batch_lines``, up to
        ``post_threads`` of them at a time (VictoriaMetrics parses them on its own cores meanwhile).
        """
        if batch_lines <= 0:
            raise ValueError(f"batch_lines must be positive, got {batch_lines}")
        if post_threads <= 0:
            raise ValueError(f"post_threads must be positive, got {post_threads}")
        if not 0 < future_ms < VM_FUTURE_LIMIT_MS:
            raise ValueError(f"future_ms must be in (0, {VM_FUTURE_LIMIT_MS}), got {future_ms}")
        self.url = url.rstrip("/")
        self.batch_lines = batch_lines
        self.retention_ms = retention_ms
        self.future_ms = future_ms
        self._clock = clock
        self._bucket = bucket
        self._closed = False
        self._write_lock = threading.Lock()
        # The newest (ts, seq) written per (device, stream, metric): catches same-millisecond collisions.
        self._newest: dict[tuple[str, str, str], tuple[int, int]] = {}
        # Escaped line prefix and (device, stream, metric) per distinct tag set, checked once when built.
        self._prefixes: dict[tuple[str, str, str, str | None, str, str | None],
                             tuple[str, tuple[str, str, str]]] = {}
        self._side = SqliteStore(side_path)
        timeout_ms = (connect_timeout_s * 1000, read_timeout_s * 1000)
        # retries=False: the caller (ingest) owns retrying, with backoff and without a give-up deadline.
        self._client = InfluxDBClient(url=self.url, token=token or "", org="wardlink", timeout=timeout_ms,
                                      enable_gzip=True, retries=False)
        # influxdb-client gzips at level 9 (3.4 us a line here); the same header with level 1 costs 0.3 us.
        self._client.conf.update_request_body = _fast_gzip  # type: ignore[method-assign]
        self._writer = self._client.write_api(write_options=SYNCHRONOUS)
        self._posters = ThreadPoolExecutor(max_workers=post_threads, thread_name_prefix="victoria-post")
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s), retries=False
        )
        log.info("opened VictoriaMetrics store %s (side file %s)", self.url, side_path)

    # ---- plumbing -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.url} is closed")

    def _get(self, path: str, params: Mapping[str, str]) -> bytes:
        """GET a VM endpoint; network errors, timeouts, 429 and 5xx are retryable, other 4xx are not."""
        self._check_open()
        url = f"{self.url}{path}?{urlencode(params)}"
        try:
            response = self._http.request("GET", url, preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"GET {path} on {self.url}: {exc}") from exc
        if response.status >= 300:
            retryable = response.status == 429 or response.status >= 500
            body = response.data[:300].decode(errors="replace")
            raise StoreError(f"GET {path} on {self.url}: HTTP {response.status}: {body}", retryable=retryable)
        return bytes(response.data)

    def _query(self, path: str, params: Mapping[str, str]) -> Any:
        """Run a Prometheus-API query and return its ``data`` object."""
        body = self._get(path, {**params, "nocache": "1"})
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise StoreError(f"{path} on {self.url} answered no JSON: {exc}", retryable=True) from exc
        if answer.get("status") != "success":
            raise StoreError(f"{path} on {self.url} failed: {answer.get('error')}", retryable=False)
        return answer["data"]

    def _post(self, body: str) -> None:
        """One post through influxdb-client; its errors as StoreErrors."""
        try:
            self._writer.write(bucket=self._bucket, record=body, write_precision=_MS)
        except ApiException as exc:
            status = exc.status or 0
            retryable = status == 0 or status == 429 or status >= 500
            raise StoreError(f"write to {self.url}: HTTP {status}: {exc.reason}", retryable=retryable) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"write to {self.url}: {exc}") from exc

    def flush(self) -> None:
        """Make every accepted sample searchable now (VM's ``/internal/force_flush``)."""
        self._get("/internal/force_flush", {})

    # ---- writes ---------------------------------------------------------------------------------

    def _check_time(self, obs: Observation, now: int) -> None:
        """Refuse a ts VictoriaMetrics would drop silently (too far ahead, older than retention)."""
        if obs.ts > now + self.future_ms:
            raise StoreError(
                f"device {obs.device}: ts {obs.ts} is {(obs.ts - now) / 3_600_000:.1f} h ahead of the store clock "
                f"(limit {self.future_ms / 3_600_000:.0f} h); VictoriaMetrics would drop it silently",
                retryable=False,
            )
        if obs.ts < now - self.retention_ms:
            raise StoreError(
                f"device {obs.device}: ts {obs.ts} is older than the retention of {self.retention_ms / DAY_MS:.0f} d; "
                "VictoriaMetrics would drop it silently",
                retryable=False,
            )

    def write(self, items: Sequence[Record], *, checked: bool = False) -> WriteResult:
        """Store a batch (observations to VM, other items to SQLite); a bad item refuses the batch.

        Every ``batch_lines`` lines go out as soon as they are built, so VictoriaMetrics parses one part
        while the next is built; a refused batch may therefore have stored the parts posted before the bad
        item was found, which the caller's retry (item by item) writes again onto the same samples.
        ``duplicates`` counts repeats of a key within the batch and events already stored; an
        observation replayed from an earlier batch is counted as stored (VM collapses it onto the
        stored sample; it cannot tell which samples it already had). ``checked=True``: the caller has
        run ``check_record`` on every item. Every post has ended when this returns or raises.
        """
        others: list[Record] = []
        lines: list[str] = []
        posts: list[Future[None]] = []
        posted = 0
        seen: set[tuple[str, str, int]] = set()
        slot: dict[tuple[tuple[str, str, str], int], int] = {}  # (series, ts) -> seq within this batch
        fresh: dict[tuple[str, str, str], tuple[int, int]] = {}  # the newest (ts, seq) per series in this batch
        repeats = 0
        part = self.batch_lines
        with self._write_lock:
            self._check_open()
            now = self._clock()
            newest_allowed, oldest_allowed = now + self.future_ms, now - self.retention_ms
            prefixes, newest = self._prefixes, self._newest
            try:
                for item in items:
                    if not checked:
                        check_record(item)
                    if not isinstance(item, Observation):
                        others.append(item)
                        continue
                    key = (item.device, item.stream, item.seq)
                    if key in seen:
                        repeats += 1  # the first write wins, as in the other stores
                        continue
                    seen.add(key)
                    ts, seq = item.ts, item.seq
                    if not oldest_allowed <= ts <= newest_allowed:
                        self._check_time(item, now)
                    tags = (item.device, item.stream, item.metric, item.bed, item.unit, item.containment)
                    cached = prefixes.get(tags)
                    if cached is None:
                        cached = self._remember(tags)
                    prefix, series = cached
                    if slot.setdefault((series, ts), seq) != seq:
                        raise self._collision(item, slot[(series, ts)])
                    stored = newest.get(series)
                    if stored is not None and stored[0] == ts and stored[1] != seq:
                        raise self._collision(item, stored[1])
                    mine = fresh.get(series)
                    if mine is None or ts >= mine[0]:
                        fresh[series] = (ts, seq)
                    # fields_of, inlined: a call per observation costs a tenth of the line
                    if item.device_ts is None:
                        lines.append(f"{prefix}{item.value!r},seq={seq}i,flags={item.flags}i,code={item.code}i {ts}")
                    else:
                        lines.append(fields_of(prefix, item))
                    if len(lines) == part:  # a part is ready: VictoriaMetrics takes it while the next is built
                        posts.append(self._posters.submit(self._post, "\n".join(lines)))
                        posted += part
                        lines = []
                side = self._side.write(others, checked=True) if others else WriteResult(stored=0, duplicates=0)
                if lines:
                    posted += len(lines)
                    if posts:
                        posts.append(self._posters.submit(self._post, "\n".join(lines)))
                    else:
                        self._post("\n".join(lines))  # one part: no thread needed
            finally:
                errors = [error for error in (post.exception() for post in posts) if error is not None]
            if errors:
                raise min(errors, key=lambda e: isinstance(e, StoreError) and e.retryable)  # a refusal first
            for series, (ts, seq) in fresh.items():
                stored = newest.get(series)
                if stored is None or ts >= stored[0]:
                    newest[series] = (ts, seq)
        return WriteResult(stored=posted + side.stored, duplicates=repeats + side.duplicates)

    def _remember(self, tags: tuple[str, str, str, str | None, str, str | None]) -> tuple[str, tuple[str, str, str]]:
        """Build, check and cache the line prefix of a series (the cache is emptied when it is full)."""
        prefix = series_prefix(*tags)
        if len(self._prefixes) >= PREFIX_CACHE_MAX:
            self._prefixes.clear()
        cached = (prefix, (tags[0], tags[1], tags[2]))
        self._prefixes[tags] = cached
        return cached

    @staticmethod
    def _collision(item: Observation, other_seq: int) -> StoreError:
        return StoreError(
            f"device {item.device}: seq {item.seq} of {item.metric} on stream {item.stream} has the same ts "
            f"{item.ts} as seq {other_seq}; VictoriaMetrics keeps one sample per series and millisecond",
            retryable=False,
        )

    # ---- reads ----------------------------------------------------------------------------------

    def latest(
        self, *, bed: str | None = None, device: str | None = None, since_ms: int | None = None
    ) -> list[Latest]:
        """The newest observation per metric for a bed or device (at or after ``since_ms``)."""
        check_target(bed, device)
        at = self._clock() + VM_FUTURE_LIMIT_MS
        window = at - since_ms + 1 if since_ms is not None else self.retention_ms + 2 * VM_FUTURE_LIMIT_MS
        if window <= 0:
            return []
        fields = selector("obs_(value|flags|code)", metric=None, bed=bed, device=device)
        values = selector("obs_value", metric=None, bed=bed, device=device)
        query = (
            f"last_over_time({fields}[{window}ms]) keep_metric_names or "
            f'label_set(tlast_over_time({values}[{window}ms]), "__field", "ts")'
        )
        data = self._query("/api/v1/query", {"query": query, "time": _seconds(at)})
        series: dict[tuple[str, ...], dict[str, float]] = {}
        for row in data["result"]:
            labels: dict[str, str] = row["metric"]
            key = tuple(labels.get(name, "") for name in _SERIES_LABELS)
            field = labels.get("__field") or labels.get("__name__", "").removeprefix(f"{MEASUREMENT}_")
            series.setdefault(key, {})[field] = float(row["value"][1])
        best: dict[str, tuple[tuple[int, str, str], Latest]] = {}
        for key, got in series.items():
            if not {"value", "ts", "flags", "code"} <= got.keys():
                continue  # a sample whose fields straddle the window edge: not whole yet
            dev, stream, metric, bed_, unit, _ = key
            ts = round(got["ts"] * 1000)
            row = Latest(metric=metric, code=int(got["code"]), value=got["value"], unit=unit, ts=ts,
                         device=dev, flags=int(got["flags"]), bed=bed_ or None)
            order = (ts, dev, stream)
            if metric not in best or order > best[metric][0]:
                best[metric] = (order, row)
        return [row for _, (_, row) in sorted(best.items())]

    def history(
        self,
        *,
        bed: str | None = None,
        device: str | None = None,
        metric: str,
        start_ms: int,
        end_ms: int,
        step_ms: int | None = None,
        limit: int = 100_000,
    ) -> list[HistoryPoint]:
        """Points of one metric in ``[start_ms, end_ms)``: raw (export), or one per ``step_ms`` bucket."""
        check_target(bed, device)
        check_range(start_ms, end_ms, step_ms, limit)
        series = selector("obs_value", metric=metric, bed=bed, device=device)
        if step_ms is None:
            return self._raw(series, start_ms, end_ms, limit)
        return list(self._buckets(series, start_ms, end_ms, step_ms, limit))

    def _raw(self, series: str, start_ms: int, end_ms: int, limit: int) -> list[HistoryPoint]:
        """Raw samples from ``/api/v1/export`` (inclusive bounds), ordered by (ts, device, stream)."""
        body = self._get(
            "/api/v1/export", {"match[]": series, "start": _seconds(start_ms), "end": _seconds(end_ms - 1)}
        )
        rows: list[tuple[int, str, str, float]] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                part = json.loads(line)
            except ValueError as exc:
                raise StoreError(f"export from {self.url} answered a bad line: {exc}", retryable=True) from exc
            labels = part["metric"]
            dev, stream = labels.get("device", ""), labels.get("stream", "")
            rows.extend(
                (ts, dev, stream, float(value))
                for ts, value in zip(part["timestamps"], part["values"], strict=True)
                if start_ms <= ts < end_ms
            )
        rows.sort()
        return [HistoryPoint(ts, value, value, value, 1) for ts, _, _, value in rows[:limit]]

    def _buckets(self, series: str, start_ms: int, end_ms: int, step: int, limit: int) -> Iterator[HistoryPoint]:
        """Epoch-aligned buckets: partial head and tail by instant queries, whole ones by query_range."""
        first, last = bucket_start(start_ms, step), bucket_start(end_ms - 1, step)
        if first == last:
            yield from self._instant_bucket(series, first, start_ms, end_ms)
            return
        emitted = 0
        whole_from, whole_to = first, last + step  # whole buckets start in [whole_from, whole_to)
        if start_ms != first:
            for point in self._instant_bucket(series, first, start_ms, first + step):
                emitted += 1
                yield point
            whole_from = first + step
        tail = end_ms != last + step
        if tail:
            whole_to = last
        chunk = MAX_POINTS_PER_QUERY * step
        for lo in range(whole_from, whole_to, chunk):
            if emitted >= limit:
                return
            hi = min(lo + chunk, whole_to)
            for point in self._range_buckets(series, lo, hi, step):
                emitted += 1
                yield point
                if emitted >= limit:
                    return
        if tail and emitted < limit:
            yield from self._instant_bucket(series, last, last, end_ms)

    @staticmethod
    def _bucket_query(series: str, window_ms: int) -> str:
        w = f"[{window_ms}ms]"
        return (
            f'label_set(sum(sum_over_time({series}{w})), "agg", "sum") or '
            f'label_set(min(min_over_time({series}{w})), "agg", "min") or '
            f'label_set(max(max_over_time({series}{w})), "agg", "max") or '
            f'label_set(sum(count_over_time({series}{w})), "agg", "count")'
        )

    @staticmethod
    def _point(start: int, agg: Mapping[str, float]) -> HistoryPoint | None:
        count = int(agg.get("count", 0))
        if count <= 0:
            return None
        return HistoryPoint(start, agg["sum"] / count, agg["min"], agg["max"], count)

    def _instant_bucket(self, series: str, bucket: int, lo: int, hi: int) -> Iterator[HistoryPoint]:
        """One bucket starting at ``bucket`` over the samples in ``[lo, hi)``: an instant query at ``hi - 1``."""
        data = self._query("/api/v1/query", {"query": self._bucket_query(series, hi - lo), "time": _seconds(hi - 1)})
        agg = {row["metric"]["agg"]: float(row["value"][1]) for row in data["result"]}
        point = self._point(bucket, agg)
        if point is not None:
            yield point

    def _range_buckets(self, series: str, lo: int, hi: int, step: int) -> Iterator[HistoryPoint]:
        """Whole buckets starting in ``[lo, hi)``, each evaluated at its last millisecond with a window of one step."""
        params = {
            "query": self._bucket_query(series, step),
            "start": _seconds(lo + step - 1),
            "end": _seconds(hi - 1),
            "step": f"{step}ms",
        }
        data = self._query("/api/v1/query_range", params)
        buckets: dict[int, dict[str, float]] = {}
        for row in data["result"]:
            agg = row["metric"]["agg"]
            for at, value in row["values"]:
                buckets.setdefault(_ms(at) + 1 - step, {})[agg] = float(value)
        for start in sorted(buckets):
            if start % step:
                raise StoreError(f"query_range on {self.url} answered an unaligned bucket {start}", retryable=False)
            point = self._point(start, buckets[start])
            if point is not None:
                yield point

    # ---- events, quarantine, stats: the side store ---------------------------------------------

    def events(
        self,
        *,
        bed: str | None = None,
        device: str | None = None,
        start_ms: int,
        end_ms: int,
        limit: int = 1000,
        kind: str | None = None,
    ) -> list[StoredEvent]:
        """Stored non-observation items in ``[start_ms, end_ms)`` (from the SQLite side store)."""
        self._check_open()
        return self._side.events(bed=bed, device=device, start_ms=start_ms, end_ms=end_ms, limit=limit, kind=kind)

    def quarantine(self, *, source: str, reason: str, raw: bytes, ts: int) -> None:
        """Keep refused input with its reason (in the SQLite side store)."""
        self._check_open()
        self._side.quarantine(source=source, reason=reason, raw=raw, ts=ts)

    def quarantine_many(self, rows: Sequence[Quarantined]) -> None:
        """Keep many refused inputs in one transaction (in the SQLite side store)."""
        self._check_open()
        self._side.quarantine_many(rows)

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """The most recently quarantined inputs, newest first."""
        self._check_open()
        return self._side.quarantined(limit)

    def quarantine_count(self) -> int:
        """How many inputs are in quarantine."""
        self._check_open()
        return self._side.quarantine_count()

    def stats(self) -> StoreStats:
        """Observations VM holds (after dedup), side-store counts, VM data size plus the side file."""
        at = self._clock() + VM_FUTURE_LIMIT_MS
        window = self.retention_ms + 2 * VM_FUTURE_LIMIT_MS
        data = self._query("/api/v1/query", {"query": f"sum(count_over_time(obs_value[{window}ms]))",
                                             "time": _seconds(at)})
        observations = int(float(data["result"][0]["value"][1])) if data["result"] else 0
        side = self._side.stats()
        return StoreStats(observations=observations, events=side.events, quarantined=side.quarantined,
                          file_bytes=side.file_bytes + self._vm_bytes())

    def _vm_bytes(self) -> int:
        """VM's ``vm_data_size_bytes`` summed over its parts (from ``/metrics``)."""
        total = 0.0
        for line in self._get("/metrics", {}).decode(errors="replace").splitlines():
            if line.startswith("vm_data_size_bytes{"):
                value = line.rsplit(" ", 1)[-1]
                if math.isfinite(float(value)):
                    total += float(value)
        return int(total)

    def close(self) -> None:
        """Close the HTTP clients and the side store; later calls raise :class:`StoreClosed`."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
        self._posters.shutdown()
        self._writer.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]
        self._http.clear()
        self._side.close()
        log.info("closed VictoriaMetrics store %s", self.url)


def _fast_gzip(path: str, body: bytes | str) -> bytes | str:
    """influxdb-client's request-body hook: gzip a write body at :data:`GZIP_LEVEL`, leave others alone."""
    if path != "/api/v2/write":
        return body
    return gzip.compress(body if isinstance(body, bytes) else body.encode(), compresslevel=GZIP_LEVEL)


def _check_protocol(store: VictoriaStore) -> TimeSeriesStore:
    """Static proof that :class:`VictoriaStore` satisfies the protocol (mypy checks the return)."""
    return store


def bench_write(store: VictoriaStore, n: int, *, batch: int = 5_000, t0: int | None = None) -> float:
    """Write ``n`` observations (100 devices, a fresh stream) in batches of ``batch``; return lines per second."""
    start = store._clock() - 3_600_000 if t0 is None else t0
    items = [
        Observation(device=f"bench{i % 100}", stream=f"bench-{start}", seq=i, ts=start + i // 100, metric="HR",
                    value=60.0 + i % 40, unit="/min", code=147842, bed=f"bed{i % 100}")
        for i in range(n)
    ]
    began = time.perf_counter()
    for lo in range(0, n, batch):
        store.write(items[lo : lo + batch])
    return n / (time.perf_counter() - began)


def bench_build(n: int = 100_000) -> dict[str, float]:
    """Line-building rates (lines per second) of the f-string builder and of influxdb-client's ``Point``."""
    from influxdb_client.client.write.point import Point

    items = [
        Observation(device=f"mon{i % 100}", stream="numerics", seq=i, ts=1_700_000_000_000 + i, metric="HR",
                    value=60.0 + i % 40, unit="/min", code=147842, bed=f"bed{i % 100}")
        for i in range(n)
    ]
    began = time.perf_counter()
    fstring = [line_of(o) for o in items]
    f_rate = n / (time.perf_counter() - began)
    began = time.perf_counter()
    points = [
        _point_line(Point, o)
        for o in items
    ]
    p_rate = n / (time.perf_counter() - began)
    assert len(fstring) == len(points)
    return {"fstring_lines_s": f_rate, "point_lines_s": p_rate}



def _point_line(point: Any, o: Observation) -> str:
    """The line of one observation built through influxdb-client's ``Point`` (for the comparison only)."""
    p = point(MEASUREMENT).tag("device", o.device).tag("stream", o.stream).tag("metric", o.metric)
    p = p.tag("bed", o.bed).tag("unit", o.unit).field("value", o.value).field("seq", o.seq)
    return str(p.field("flags", o.flags).field("code", o.code).time(o.ts, _MS).to_line_protocol())
