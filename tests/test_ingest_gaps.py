"""Sequence-gap detection from commits: correct when several workers each see part of a stream."""

from __future__ import annotations

import random

import msgspec

from devices import topics
from devices.bus import BrokerAddress
from devices.contract import Batch, Commit, DeviceEvent, SeqRange, ServiceStatus, encode
from ingest.gaps import GAP_EVENT, GapTracker, Members
from ingest.service import Ingest, IngestSettings
from storage.memory import MemoryStore
from tests.test_ingest import DATA, RecordingClient, batch, obs
from wardlink.config import load

COMMIT = topics.gateway_topic("demo", "gw-icu", "commit")


def commit(*spans: tuple[int, int], device: str = "mon-icu-01") -> bytes:
    return encode(Commit(gateway="gw-icu", ts=1, ranges=[SeqRange(device, "numerics", a, b) for a, b in spans]))


def test_a_hole_becomes_a_gap_only_after_the_grace_period() -> None:
    tracker = GapTracker(grace_ms=30_000)
    tracker.observe("gw", [SeqRange("d", "s", 1, 10)], now=0)
    tracker.observe("gw", [SeqRange("d", "s", 21, 30)], now=1_000)
    assert tracker.due(now=30_999) == []
    tracker.observe("gw", [SeqRange("d", "s", 11, 14)], now=2_000)  # part of the hole arrives late
    gaps = tracker.due(now=31_000)
    assert [(g.device, g.stream, g.first, g.last) for g in gaps] == [("d", "s", 15, 20)]
    assert tracker.due(now=100_000) == []
    tracker.observe("gw", [SeqRange("d", "s", 15, 20)], now=101_000)
    assert tracker.filled_late == 1


def test_out_of_order_commits_within_grace_are_no_gap() -> None:
    tracker = GapTracker(grace_ms=30_000)
    spans = [(i, i + 9) for i in range(1, 10_000, 10)]
    random.Random(3).shuffle(spans)
    first = min(spans)  # the gateway resends from its oldest row: the stream is first seen at its start
    tracker.observe("gw", [SeqRange("d", "s", *first)], now=0)
    for a, b in spans:
        tracker.observe("gw", [SeqRange("d", "s", a, b)], now=10)
    assert tracker.due(now=10**9) == []
    assert tracker.open_holes() == 0


def test_the_range_bound_forces_out_the_lowest_gap() -> None:
    tracker = GapTracker(grace_ms=30_000, max_ranges=2)
    forced = tracker.observe("gw", [SeqRange("d", "s", 1, 1), SeqRange("d", "s", 3, 3), SeqRange("d", "s", 5, 5),
                                    SeqRange("d", "s", 7, 7)], now=0)
    assert [(g.first, g.last) for g in forced] == [(2, 2)]
    assert tracker.forced == 1


def test_the_smallest_live_instance_reports() -> None:
    members = Members("ingest-2", stale_ms=15_000)
    assert members.is_reporter(now=0)
    members.heard("ingest-1", True, ts=0)
    assert not members.is_reporter(now=10_000)
    assert members.is_reporter(now=20_000)  # ingest-1 went stale
    members.heard("ingest-1", False, ts=20_000)  # its last will
    assert members.is_reporter(now=20_001)


async def test_two_workers_sharing_a_stream_report_one_gap_through_the_alarm_topic() -> None:
    site = load(env={}).site
    store = MemoryStore()
    settings = IngestSettings(gap_grace_s=30)
    workers = [Ingest(site, store, BrokerAddress("127.0.0.1", 1), f"ingest-{i}", settings) for i in (1, 2)]
    clients = [RecordingClient(), RecordingClient()]
    # The shared subscription hands alternate batches to the two workers; seq 41-50 never arrives.
    for i, first in enumerate(range(1, 101, 10)):
        if first == 41:
            continue
        worker = workers[i % 2]
        worker.handle(DATA, batch(*[obs(s) for s in range(first, first + 10)]))
        await worker.flush(clients[i % 2])  # type: ignore[arg-type]
    commits = [payload for c in clients for topic, payload in c.published if topic == COMMIT]
    status = [encode(ServiceStatus(service="ingest", instance=w.instance, state="online", ts=55_000)) for w in workers]
    for worker in workers:  # every worker follows every commit and every ingest status
        for payload in commits:
            worker.dispatch(COMMIT, payload, now=1_000)
        for w, payload in zip(workers, status, strict=True):
            worker.dispatch(topics.service_topic("demo", "ingest", w.instance), payload)
    reports = [await w.report_gaps(c, now=10_000) for w, c in zip(workers, clients, strict=True)]  # type: ignore[arg-type]
    assert reports == [[], []]  # still within grace
    late = [await w.report_gaps(c, now=60_000) for w, c in zip(workers, clients, strict=True)]  # type: ignore[arg-type]
    assert [[(g.first, g.last) for g in r] for r in late] == [[(41, 50)], []]  # only the reporter, ingest-1
    alarm = [(t, p) for t, p in clients[0].published if t.endswith("/alarm")]
    assert len(alarm) == 1
    event = msgspec.json.decode(alarm[0][1], type=Batch).items[0]
    assert isinstance(event, DeviceEvent)
    assert (event.event, event.alarm_kind, event.source, event.device) == (GAP_EVENT, "technical", "numerics",
                                                                           "mon-icu-01")
    assert "seq 41-50" in event.text
    # The event comes back through the bus like any device event: stored once, never a gap of its own.
    for _ in range(2):
        workers[1].handle(alarm[0][0], alarm[0][1])
        await workers[1].flush(clients[1])  # type: ignore[arg-type]
    assert [e.event for e in store.events(device="mon-icu-01", start_ms=0, end_ms=2**62)] == [GAP_EVENT]  # type: ignore[union-attr]
    assert workers[1].metrics.counters["duplicates"] == 1
    assert workers[0].status().counters["gaps_reported"] == 1
