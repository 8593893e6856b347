"""Ingest: subscribe to every gateway, validate, de-duplicate, batch into the store, publish commits.

A message is never left to stall the consumer: whatever fails validation is quarantined in the
store with its reason and raw bytes, and its ranges are committed like stored ones so the gateway
stops resending it. De-duplication is the store's key ``(device, stream, seq)``. Commits go out
only after the store (or, while the store is down, the durable local spool of :mod:`ingest.spool`)
has the batch, so a gateway never deletes a reading the backend does not hold.

Several workers split the load through an MQTT 5 shared subscription (``$share/<group>/...``), with
no coordination of their own; a broker without MQTT 5 (the embedded amqtt) is detected at connect
and one worker then consumes everything. Sequence gaps are found from all workers' commits
(:mod:`ingest.gaps`); counters, gauges and histograms travel in the ServiceStatus (:mod:`ingest.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Final

import msgspec
from aiomqtt.exceptions import MqttConnectError

from devices import bus, gcwatch, topics
from devices.clock import now_ms
from devices.contract import (
    UNDECODABLE,
    Batch,
    Commit,
    ContractError,
    DeviceEvent,
    DeviceInfo,
    Item,
    Observation,
    SeqRange,
    ServiceStatus,
    TagRead,
    check_item,
    decode_batch_lenient,
    encode,
)
from devices.site import DeviceSpec, Site
from ingest.gaps import Gap, GapTracker, Members, gap_event
from ingest.metrics import Metrics
from ingest.mqtt import Publisher, Session
from ingest.spool import Record, Rejected, Spool
from storage.base import Maintainable, Quarantined, StoreError, TimeSeriesStore

log = logging.getLogger(__name__)

MAX_KEY = 128  # characters of a device id or stream name a commit echoes (site names are far shorter)
_UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK: MQTT 3 "unacceptable protocol version", MQTT 5 "unsupported"


DEFAULT_BATCH: Final = 5_000


class IngestSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Batching, limits, sharing, gap detection, spool and retries."""

    batch_max: int = 0  # items per store write; 0: what the store prefers (its ``preferred_batch``, else 5,000)
    flush_s: float = 0.2
    max_payload: int = 4 * 1024 * 1024
    mqtt5: bool = True  # try MQTT 5 (to share) first; a broker that refuses it gets MQTT 3.1.1, not shared
    share_group: str | None = "ingest"  # MQTT 5 shared subscription group, for several workers (None: not shared)
    session_expiry_s: int = 300  # MQTT 5 session kept after a disconnect (not used when shared)
    max_queued_incoming: int = 10_000  # messages; past it the client discards (counted; never committed)
    heartbeat_s: float = 5.0
    gap_grace_s: float = 30.0  # a hole in a stream open this long is reported as a data gap
    gap_check_s: float = 1.0
    gap_max_streams: int = 100_000
    spool_max_items: int = 2_000_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0
    maintain_s: float = 60.0  # store retention and rollups, when the store supports them


@dataclass(slots=True)
class _Pending:
    items: list[Item] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    # gateway -> (device, stream) -> seqs to commit (stored, duplicate or quarantined)
    seqs: dict[str, dict[tuple[str, str], list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def __len__(self) -> int:
        return len(self.items) + len(self.rejected)


_device_stream = attrgetter("device", "stream")
_device = attrgetter("device")
_seq = attrgetter("seq")
_first = itemgetter(0)
_second = itemgetter(1)
_ts = attrgetter("ts")
_NUMBER: dict[type, attrgetter[float]] = {Observation: attrgetter("value"), TagRead: attrgetter("rssi")}
_NO_NUMBER = frozenset({DeviceEvent, DeviceInfo})


def _finite(items: list[Item]) -> bool:
    """True if every item passes :func:`check_item`'s number checks (``seq`` aside); False means: look at each.

    A sum is finite only if every term is (an infinity or NaN spreads), so one ``sum`` checks a run; a run
    of finite numbers whose sum overflows is merely sent the slow way.
    """
    kinds = set(map(type, items))
    if kinds <= _NO_NUMBER:
        return True
    if len(kinds) == 1:
        number = _NUMBER.get(kinds.pop())
        return number is not None and math.isfinite(sum(map(number, items)))
    return False  # mixed kinds in one stream, or waste events (a weight must not be negative): item by item


def _committable(device: str, stream: str) -> bool:
    """Whether a quarantined item's key goes back in a commit: not a hostile 60 KB "device id", which would swell
    every commit and the gap tracker (no gateway holds such a row in its outbox, so nothing waits for it)."""
    return len(device) <= MAX_KEY and len(stream) <= MAX_KEY


def ranges(seqs: dict[tuple[str, str], list[int]]) -> list[SeqRange]:
    """Merge sequence numbers per stream into inclusive contiguous ranges."""
    out: list[SeqRange] = []
    for (device, stream), numbers in seqs.items():
        numbers = sorted(set(numbers))
        if numbers[-1] - numbers[0] == len(numbers) - 1:  # distinct and sorted: contiguous (the usual case)
            out.append(SeqRange(device, stream, numbers[0], numbers[-1]))
            continue
        first = prev = numbers[0]
        for n in numbers[1:]:
            if n != prev + 1:
                out.append(SeqRange(device, stream, first, prev))
                first = n
            prev = n
        out.append(SeqRange(device, stream, first, prev))
    return out


class Ingest:
    """One ingest worker."""

    def __init__(self, site: Site, store: TimeSeriesStore, address: bus.BrokerAddress,
                 instance: str = "ingest-1", settings: IngestSettings | None = None, *,
                 spool_path: Path | None = None) -> None:
        """Bind the worker to the site's device registry and a store (and a spool file, if given)."""
        self.site = site
        self.store = store
        self.address = address
        self.instance = instance
        self.settings = settings or IngestSettings()
        self.devices: dict[str, DeviceSpec] = site.device_index()
        self.metrics = Metrics()
        self.counters = self.metrics.counters
        self._restore_discovered()
        self.lag_ms = 0
        self._pending = _Pending()
        self._flush_lock = asyncio.Lock()
        self._status_topic = topics.service_topic(site.id, "ingest", instance)
        self.spool = Spool(spool_path, max_items=self.settings.spool_max_items) if spool_path else None
        self._spool_wake = asyncio.Event()
        self.gaps = GapTracker(int(self.settings.gap_grace_s * 1000), max_streams=self.settings.gap_max_streams)
        self.members = Members(instance, stale_ms=int(3 * self.settings.heartbeat_s * 1000))
        self._commit_decoder = msgspec.json.Decoder(Commit)
        self._status_decoder = msgspec.json.Decoder(ServiceStatus)
        self._forced: list[Gap] = []
        self._v3_only = not self.settings.mqtt5
        self._probed = False
        self._since: int | None = None  # start of the current broker session (ms), announced in the status
        self._session_now: Session | None = None
        self._topics: dict[str, topics.Topic] = {}

    async def run(self) -> None:
        """Consume until cancelled, reconnecting as needed; drain the spool and maintain the store meanwhile."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(bus.supervise(f"ingest {self.instance}", self._session,
                                                max_backoff=bus.RECONNECT_MAX_S))
                if self.spool is not None:
                    group.create_task(bus.supervise(f"ingest {self.instance} spool", self._drain))
                if isinstance(self.store, Maintainable):
                    group.create_task(bus.supervise(f"ingest {self.instance} maintenance", self._maintain))
        finally:
            if self.spool is not None:
                self.spool.close()

    def status(self, state: str = "online") -> ServiceStatus:
        """Heartbeat with lag, counters, gauges and histograms."""
        now = now_ms()
        gauges = self.metrics.gauges
        gauges["pending_items"] = len(self._pending)
        gauges["queue_messages"] = self._session_now.queued() if self._session_now else 0
        gauges["spool_items"] = self.spool.depth() if self.spool else 0
        gauges["gap_open_holes"] = self.gaps.open_holes()
        gauges["gap_streams"] = self.gaps.streams()
        gauges["gap_reporter"] = int(self.members.is_reporter(now))
        gauges["mqtt5_shared"] = int(not self._v3_only and self.settings.share_group is not None)
        self.counters["gap_streams_evicted"] = self.gaps.evicted
        self.counters["gaps_filled_late"] = self.gaps.filled_late
        return ServiceStatus(service="ingest", instance=self.instance,
                             state="online" if state == "online" else "offline", ts=now,
                             lag_ms=self.lag_ms, counters=self.metrics.flat() | gcwatch.WATCH.counters(),
                             since=self._since)

    async def _session(self) -> None:
        if not self._v3_only and self.settings.share_group is not None and not self._probed:
            self._v3_only = not await self._speaks_mqtt5()
            self._probed = True
        mqtt5 = not self._v3_only and self.settings.share_group is not None  # MQTT 5 only to share
        share = self.settings.share_group if mqtt5 else None
        self._since = now_ms()  # gateways resend what is uncommitted when they see a new session begin
        will = (self._status_topic, encode(self.status("offline")))
        # Shared: a fresh session each time, so a dead worker's session never holds the group's messages.
        session = Session(self.address, f"wardlink-{self.instance}", will=will, mqtt5=mqtt5, clean=mqtt5,
                          session_expiry_s=self.settings.session_expiry_s,
                          max_queued=self.settings.max_queued_incoming, on_drop=self._dropped)
        self._session_now = session
        async with session:
            await self._consume(session, share)

    def _dropped(self) -> None:
        self.counters["mqtt_queue_dropped"] += 1  # never committed: the gateway sends it again

    async def _speaks_mqtt5(self) -> bool:
        """Probe with a bare MQTT 5 CONNECT (no will, no properties), which a 3.1.1-only broker refuses cleanly.

        The embedded amqtt broker misreads an MQTT 5 CONNECT that carries a will and hangs, so the
        real session must not be the probe.
        """
        try:
            async with bus.client(self.address, f"wardlink-{self.instance}-probe", mqtt5=True):
                return True
        except MqttConnectError as exc:
            if exc.rc not in _UNSUPPORTED_PROTOCOL:
                raise
        log.warning("ingest %s: broker %s does not speak MQTT 5: no shared subscription, so run only one ingest "
                    "worker against it", self.instance, self.address.url)
        return False

    async def _consume(self, client: Session, share: str | None) -> None:
        site = self.site.id
        for channel in ("alarm", "data"):
            await client.subscribe(topics.gateway_filter(site, channel, share), qos=1)
        await client.subscribe(topics.gateway_filter(site, "commit"), qos=1)  # everyone's commits: gap detection
        await client.subscribe(topics.service_filter(site), qos=1)  # live ingest workers: the gap reporter
        log.info("ingest %s: consuming from %s (%s)", self.instance, self.address.url,
                 f"MQTT 5 shared group {share}" if share else "not shared")
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(client))
            group.create_task(self._timer(client))
            group.create_task(self._gap_timer(client))
            group.create_task(self._heartbeat(client))

    async def _receive(self, client: Session) -> None:
        # One batch is written while the next one fills; a third waits (back-pressure: no more reading).
        writing: asyncio.Task[None] | None = None
        batch_max = self.settings.batch_max or int(getattr(self.store, "preferred_batch", DEFAULT_BATCH))
        dispatch = self.dispatch
        try:
            while True:
                for topic, payload in await client.received():
                    dispatch(topic, payload)
                    if len(self._pending) >= batch_max:
                        if writing is not None:
                            await writing  # raises what the write raised: the session restarts, nothing committed
                        writing = asyncio.create_task(self.flush(client))
        finally:
            if writing is not None and not writing.done():
                writing.cancel()  # uncommitted: the gateways send it again
                await asyncio.gather(writing, return_exceptions=True)

    async def _heartbeat(self, client: Publisher) -> None:
        """Publish a retained status now and every ``heartbeat_s`` (the will says offline)."""
        while True:
            await client.publish(self._status_topic, encode(self.status()), qos=1, retain=True)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _timer(self, client: Publisher) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_s)
            await self.flush(client)

    async def _gap_timer(self, client: Publisher) -> None:
        while True:
            await asyncio.sleep(self.settings.gap_check_s)
            await self.report_gaps(client, now_ms())

    def dispatch(self, topic: str, payload: bytes, now: int | None = None) -> None:
        """Route one message: commits feed gap detection, ingest statuses the reporter election, the rest handle()."""
        try:
            parsed = self._parse(topic)
        except topics.TopicError:
            self.handle(topic, payload)
            return
        if parsed.area == "gw" and parsed.channel == "commit":
            try:
                commit = self._commit_decoder.decode(payload)
            except UNDECODABLE:
                self.counters["commits_undecodable"] += 1
                return
            self._forced.extend(self.gaps.observe(parsed.name, commit.ranges, now_ms() if now is None else now))
            del self._forced[:-1000]  # bounded: the oldest forced-out gaps beyond 1000 are only counted
        elif parsed.area == "svc" and parsed.name == "ingest":
            if not payload:
                return  # a cleared retained status
            try:
                status = self._status_decoder.decode(payload)
            except UNDECODABLE:
                self.counters["statuses_undecodable"] += 1
                return
            self.members.heard(status.instance, status.state == "online", status.ts)
        else:
            self.handle(topic, payload)

    async def report_gaps(self, client: Publisher, now: int) -> list[Gap]:
        """Close holes past their grace period; the elected reporter publishes them as "data gap" events.

        The events go out as a Batch on the device's gateway alarm topic: alerts already reads it, and
        whichever worker receives it stores it like any device event (its key is deterministic).
        """
        gaps = [*self._forced, *self.gaps.due(now)]
        self._forced.clear()
        if not gaps or not self.members.is_reporter(now):
            return []
        by_gateway: dict[str, list[Item]] = defaultdict(list)
        for gap in gaps:
            spec = self.devices.get(gap.device)
            by_gateway[gap.gateway].append(gap_event(gap, spec.bed if spec else None, self.gaps.grace_ms, now))
            log.warning("ingest: data gap %s/%s seq %d-%d (%d readings)", gap.device, gap.stream, gap.first,
                        gap.last, gap.last - gap.first + 1)
        for gateway, events in by_gateway.items():
            batch = Batch(gateway=gateway, sent=now, items=events)
            await client.publish(topics.gateway_topic(self.site.id, gateway, "alarm"), encode(batch), qos=1)
        self.counters["gaps_reported"] += len(gaps)
        self.counters["gap_readings_missing"] += sum(g.last - g.first + 1 for g in gaps)
        return gaps

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate one message into the pending batch; never raises for bad input."""
        self.counters["messages"] += 1
        try:
            parsed = self._parse(topic)
        except topics.TopicError as exc:
            self._reject(topic, str(exc), payload)
            return
        if parsed.area != "gw" or parsed.channel not in ("data", "alarm"):
            self.counters["foreign_topic"] += 1  # not a gateway batch: not ours to store or quarantine
            return
        gateway = parsed.name
        if len(payload) > self.settings.max_payload:
            self._reject(gateway, f"gateway {gateway}: payload of {len(payload)} bytes exceeds "
                                  f"{self.settings.max_payload}", payload[:4096])
            return
        try:
            batch, bad = decode_batch_lenient(payload)
        except ContractError as exc:
            self._reject(gateway, f"gateway {gateway}: {exc}", payload)
            return
        if batch.gateway != gateway:
            self._reject(gateway, f"gateway {gateway}: field gateway says {batch.gateway!r}", payload)
            return
        pending = self._pending
        commit = pending.seqs[gateway]
        for broken in bad:
            self._reject(gateway, broken.reason, broken.raw)
            if broken.seq >= 0 and _committable(broken.device, broken.stream):
                commit[(broken.device, broken.stream)].append(broken.seq)
        devices = self.devices
        accepted = pending.items
        items = batch.items
        # The usual batch passes whole: every seq >= 0, every number finite, every device this gateway's; its
        # items are accepted at once, and only their seqs are grouped by stream for the commit.
        if items:
            seqs = list(map(_seq, items))
            if min(seqs) >= 0 and _finite(items) and all(
                    getattr(devices.get(device), "gateway", None) == gateway for device in set(map(_device, items))):
                accepted += items
                for key, keyed in groupby(zip(map(_device_stream, items), seqs, strict=True), _first):
                    commit[key] += map(_second, keyed)
                return
        # Otherwise run by run: a batch holds runs of one stream (a monitor frame, an outbox row), each checked at
        # once, in C where it can be; a run that does not pass whole goes item by item, each item with its reason.
        for key, run in groupby(items, _device_stream):
            items = list(run)
            seqs = list(map(_seq, items))
            spec = devices.get(key[0])
            if spec is not None or _committable(*key):
                commit[key] += seqs  # every item is released: stored, a duplicate, or quarantined below
            if spec is not None and spec.gateway == gateway and min(seqs) >= 0 and _finite(items):
                accepted += items
                continue
            for item in items:
                self._check(gateway, item)

    def _check(self, gateway: str, item: Item) -> None:
        """One item the run check did not pass: into the pending batch, or quarantined with its reason."""
        spec = self.devices.get(item.device)
        try:
            if item.device != gateway or spec is not None:  # a gateway's events about itself need no device
                if spec is None and isinstance(item, DeviceInfo):
                    spec = self._discovered(gateway, item)
                if spec is None:
                    raise ContractError(f"device {item.device}: unknown device (field device)")
                if spec.gateway != gateway:
                    raise ContractError(f"device {item.device}: belongs to gateway {spec.gateway}, "
                                        f"not {gateway} (field device)")
            check_item(item)  # every pending item is checked here or by the run check: the store need not
        except ContractError as exc:
            self._reject(gateway, str(exc), encode(item))
            return
        self._pending.items.append(item)

    def _parse(self, topic: str) -> topics.Topic:
        """:func:`devices.topics.parse`, remembered: a worker hears the same few hundred topics over and over."""
        parsed = self._topics.get(topic)
        if parsed is None:
            parsed = topics.parse(topic)
            if len(self._topics) >= 10_000:
                self._topics.clear()  # bounded: a flood of odd topics costs only re-parsing
            self._topics[topic] = parsed
        return parsed

    def _restore_discovered(self) -> None:
        """Devices gateways discovered before this worker started are theirs still (kept in the store)."""
        for info in self.store.events(kind="dev", start_ms=0, end_ms=2**62, limit=1_000_000):
            if isinstance(info, DeviceInfo) and info.device not in self.devices and info.gateway:
                self._discovered(info.gateway, info)

    def _discovered(self, gateway: str, info: DeviceInfo) -> DeviceSpec:
        """A gateway announced a device unknown to the site: from now on it is that gateway's."""
        spec = DeviceSpec(id=info.device, kind=info.driver, gateway=gateway, bed=info.bed,
                          manufacturer=info.manufacturer, model=info.model, serial_number=info.serial_number)
        self.devices[info.device] = spec
        self.counters["devices_discovered"] += 1
        log.info("ingest: gateway %s registered discovered device %s", gateway, info.device)
        return spec

    def _reject(self, source: str, reason: str, raw: bytes) -> None:
        self.counters["quarantined"] += 1
        if self.counters["quarantined"] % 1000 == 1:
            log.warning("ingest: quarantined input from %s: %s", source, reason)
        self._pending.rejected.append(Rejected(source, reason, raw))

    async def flush(self, client: Publisher) -> None:
        """Write the pending batch to the store (or the spool), then tell each gateway what it may release."""
        async with self._flush_lock:
            pending = self._pending
            if not len(pending):
                return
            self._pending = _Pending()
            self.metrics.batch_items.observe(len(pending))
            await self._persist(Record(items=pending.items, rejected=pending.rejected))
            self.counters["flushes"] += 1
            for gateway, seqs in pending.seqs.items():
                commit = Commit(gateway=gateway, ts=now_ms(), ranges=ranges(seqs))
                await client.publish(topics.gateway_topic(self.site.id, gateway, "commit"), encode(commit), qos=1)
                self.counters["commits_published"] += 1

    async def _persist(self, record: Record) -> None:
        """Store a record, or keep it durably in the spool; return only when one of them holds it."""
        if self.spool is None:
            await self._store_retrying(record)
            return
        if not self.spool.records():
            try:
                await self._store_once(record)
                return
            except StoreError as exc:  # only retryable ones reach here
                self.counters["store_errors"] += 1
                log.warning("ingest: store unavailable (%s); spooling to %s", exc, self.spool.path)
        await self._spool(record)

    async def _spool(self, record: Record) -> None:
        """Append to the spool; while it is full, wait (nothing read, nothing committed: back-pressure)."""
        assert self.spool is not None
        full_since: float | None = None
        while not await asyncio.to_thread(self.spool.append, record):
            if full_since is None:
                full_since = time.monotonic()
                self.counters["spool_full_waits"] += 1
                self.metrics.gauges["spool_full"] = 1
                log.error("ingest: spool %s is full (%d items); not reading or committing until it drains",
                          self.spool.path, self.spool.depth())
            await asyncio.sleep(0.5)
        self.metrics.gauges["spool_full"] = 0
        self.counters["spooled"] += len(record.items) + len(record.rejected)
        self._spool_wake.set()

    async def _store_once(self, record: Record) -> None:
        """One attempt: quarantine and write, timed; raises only retryable StoreErrors (or a dead store's)."""
        started = time.perf_counter()
        try:
            stored, duplicates = await asyncio.to_thread(self._write, record)
        finally:
            self.metrics.store_ms.observe(int((time.perf_counter() - started) * 1000))
        self.counters["stored"] += stored
        self.counters["duplicates"] += duplicates
        if record.items:
            self.lag_ms = max(0, now_ms() - min(map(_ts, record.items)))

    def _backoff(self, current: float) -> tuple[float, float]:
        """Capped exponential backoff with jitter: (seconds to sleep now, next backoff)."""
        return current * random.uniform(0.5, 1.0), min(current * 2, self.settings.retry_max_s)

    async def _store_retrying(self, record: Record) -> None:
        """Retry retryable store errors with capped, jittered backoff and no deadline."""
        backoff = self.settings.retry_initial_s
        while True:
            try:
                await self._store_once(record)
                return
            except StoreError as exc:
                self.counters["store_errors"] += 1
                sleep, backoff = self._backoff(backoff)
                log.warning("ingest: store unavailable (%s); retrying in %.1f s", exc, sleep)
                await asyncio.sleep(sleep)

    async def _drain(self) -> None:
        """Move spooled records into the store, oldest first, retrying without a deadline."""
        assert self.spool is not None
        backoff = self.settings.retry_initial_s
        while True:
            entry = await asyncio.to_thread(self.spool.oldest)
            if entry is None:
                self._spool_wake.clear()
                await self._spool_wake.wait()
                continue
            record_id, record = entry
            count = len(record.items) + len(record.rejected)
            try:
                await self._store_once(record)
            except StoreError as exc:
                self.counters["store_errors"] += 1
                sleep, backoff = self._backoff(backoff)
                log.warning("ingest: store still unavailable (%s); %d items spooled, next try in %.1f s", exc,
                            self.spool.depth(), sleep)
                await asyncio.sleep(sleep)
                continue
            backoff = self.settings.retry_initial_s
            await asyncio.to_thread(self.spool.remove, record_id)
            self.counters["spool_drained"] += count
            if not self.spool.records():
                log.info("ingest: spool drained into the store")

    async def _maintain(self) -> None:
        """Retention and rollups of the store, every ``maintain_s``."""
        assert isinstance(self.store, Maintainable)
        while True:
            await asyncio.sleep(self.settings.maintain_s)
            try:
                result = await asyncio.to_thread(self.store.maintain, now_ms())
            except StoreError as exc:
                self.counters["maintain_errors"] += 1
                log.warning("ingest: store maintenance failed (%s); trying again later", exc)
                continue
            self.counters["maintain_runs"] += 1
            self.counters["retention_deleted_rows"] += result.deleted

    def _write(self, record: Record) -> tuple[int, int]:
        """Quarantine, then store the items; a refused batch goes item by item. Raises retryable StoreErrors."""
        if record.rejected:
            now = now_ms()
            # One transaction for all of them (one each stalled the worker for seconds under a flood of bad input).
            self.store.quarantine_many([Quarantined(ts=now, source=r.source, reason=r.reason, raw=r.raw)
                                        for r in record.rejected])
            record.rejected.clear()  # quarantined: a retry must not quarantine them twice
        if not record.items:
            return 0, 0
        try:
            result = self.store.write(record.items, checked=True)
        except StoreError as exc:
            if exc.retryable:
                raise
            log.error("ingest: store refused a batch of %d (%s); storing item by item", len(record.items), exc)
            return self._write_one_by_one(record.items)
        return result.stored, result.duplicates

    def _write_one_by_one(self, items: list[Item]) -> tuple[int, int]:
        """The slow path after a refused batch: store what the store takes, quarantine what it refuses."""
        stored = duplicates = 0
        for item in items:
            try:
                result = self.store.write([item], checked=True)
            except StoreError as exc:
                if exc.retryable:
                    raise
                self.counters["quarantined"] += 1
                self.store.quarantine(source=item.device, reason=f"device {item.device}: store refused: {exc}",
                                      raw=encode(item), ts=now_ms())
                continue
            stored += result.stored
            duplicates += result.duplicates
        return stored, duplicates
