"""Ingest validation, quarantine, de-duplication and commit ranges (memory twin of the store)."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import topics
from devices.bus import BrokerAddress
from devices.contract import Batch, Commit, DeviceEvent, Item, Observation, SeqRange, TagRead, WasteEvent, encode
from ingest.service import Ingest, ranges
from storage.duckdb import DuckDbStore
from storage.memory import MemoryStore
from wardlink.config import load

DATA = topics.gateway_topic("demo", "gw-icu", "data")


class RecordingClient:
    """Stands in for the MQTT client in flush(): records what would be published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.published.append((topic, payload))


def obs(seq: int, device: str = "mon-icu-01", value: float = 97.0) -> Observation:
    return Observation(device=device, stream="numerics", seq=seq, ts=1_000 + seq, metric="MDC_PULS_OXIM_SAT_O2",
                       value=value, unit="%", code=150456, bed="ICU-01")


def batch(*items: Observation, gateway: str = "gw-icu") -> bytes:
    return encode(Batch(gateway=gateway, sent=1, items=list(items)))


def make() -> tuple[Ingest, MemoryStore]:
    store = MemoryStore()
    return Ingest(load(env={}).site, store, BrokerAddress("127.0.0.1", 1)), store


def test_ranges_merge_contiguous_sequence_numbers() -> None:
    assert ranges({("d", "s"): [5, 1, 2, 3, 3, 7, 8]}) == [SeqRange("d", "s", 1, 3), SeqRange("d", "s", 5, 5),
                                                           SeqRange("d", "s", 7, 8)]


async def test_replays_are_stored_once_and_all_committed() -> None:
    ingest, store = make()
    items = [obs(i) for i in range(1, 101)]
    messages = [batch(*items[i:i + 10]) for i in range(0, 100, 10)] * 3
    random.Random(7).shuffle(messages)
    client = RecordingClient()
    for message in messages:
        ingest.handle(DATA, message)
        await ingest.flush(client)  # type: ignore[arg-type]
    assert store.stats().observations == 100
    assert ingest.counters["stored"] == 100
    assert ingest.counters["duplicates"] == 200
    committed = {seq for _, payload in client.published
                 for r in msgspec.json.decode(payload, type=Commit).ranges for seq in range(r.first, r.last + 1)}
    assert committed == set(range(1, 101))


async def test_bad_input_is_quarantined_with_a_reason_and_committed() -> None:
    ingest, store = make()
    ingest.handle(DATA, b"{not json")
    ingest.handle(DATA, batch(obs(1), gateway="gw-other"))
    ingest.handle(DATA, batch(obs(2, device="mon-unknown"), obs(3)))
    infinite = batch(obs(4), obs(5)).replace(b'"value":97.0', b'"value":1e999', 1)  # JSON has no inf: overflow
    ingest.handle(DATA, infinite)
    ingest.handle(topics.gateway_topic("demo", "gw-icu", "data"), b"x" * (ingest.settings.max_payload + 1))
    client = RecordingClient()
    await ingest.flush(client)  # type: ignore[arg-type]
    reasons = [q.reason for q in store.quarantined()]
    assert len(reasons) == 5
    assert any("undecodable" in r for r in reasons)
    assert any("field gateway says 'gw-other'" in r for r in reasons)
    assert any("device mon-unknown: unknown device" in r for r in reasons)
    assert any("device mon-icu-01: invalid item: Number out of range - at `$.value`" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
    assert store.stats().observations == 2  # obs 3 and 5 are fine and stored, beside the bad ones
    commit = msgspec.json.decode(client.published[-1][1], type=Commit)
    assert {(r.device, r.first, r.last) for r in commit.ranges} == {("mon-unknown", 2, 2), ("mon-icu-01", 3, 5)}


async def test_a_device_of_another_gateway_is_refused() -> None:
    gateways = [{"id": "gw-icu", "unit": "ICU"}, {"id": "gw-w3", "unit": "W3"}, {"id": "gw-2", "unit": "ICU"}]
    site = load(env={}, overrides={"site": {"gateways": gateways}}).site
    store = MemoryStore()
    ingest = Ingest(site, store, BrokerAddress("127.0.0.1", 1))
    ingest.handle(topics.gateway_topic("demo", "gw-2", "data"), batch(obs(1), gateway="gw-2"))
    await ingest.flush(RecordingClient())  # type: ignore[arg-type]
    assert store.stats().observations == 0
    assert "belongs to gateway gw-icu, not gw-2" in store.quarantined()[0].reason


def test_messages_on_foreign_topics_are_ignored_not_quarantined() -> None:
    ingest, _ = make()
    ingest.handle(topics.service_topic("demo", "alerts", "a-1"), b'{"service":"alerts"}')
    assert ingest.counters["foreign_topic"] == 1
    assert ingest.counters["quarantined"] == 0


async def test_an_item_the_store_refuses_is_quarantined_and_the_rest_stored() -> None:
    store = DuckDbStore(Path(tempfile.mkdtemp()) / "s.duckdb")
    ingest = Ingest(load(env={}).site, store, BrokerAddress("127.0.0.1", 1))
    huge = Observation(device="mon-icu-01", stream="numerics", seq=2, ts=2**70, metric="MDC_TEMP",
                       value=37.0, unit="Cel")  # a time past 64 bits: valid JSON, not storable
    ingest.handle(DATA, batch(obs(1), huge, obs(3)))
    client = RecordingClient()
    await ingest.flush(client)  # type: ignore[arg-type]
    assert store.stats().observations == 2
    assert "store refused" in store.quarantined()[0].reason
    commit = msgspec.json.decode(client.published[-1][1], type=Commit)
    assert [(r.first, r.last) for r in commit.ranges] == [(1, 3)]  # the refused one is released too
    store.close()


_DEVICES = ("mon-icu-01", "mon-icu-02", "scale-w3", "mon-unknown", "gw-icu")  # ours, ours, gw-w3's, nobody's, itself


@st.composite
def runs(draw: st.DrawFn, devices: tuple[str, ...] = _DEVICES, lowest: int = -2,
         numbers: tuple[float, ...] = (1.0, -3.5, 1e308, -1e308)) -> list[Item]:
    """Items in runs of one stream, as gateways send them, with every way an item can be refused."""
    items: list[Item] = []
    for _ in range(draw(st.integers(1, 6))):
        device, stream = draw(st.sampled_from(devices)), draw(st.sampled_from(("a", "b")))
        kind = draw(st.sampled_from(("obs", "obs", "tag", "waste", "evt", "mixed")))
        for k in range(draw(st.integers(1, 8))):
            seq = draw(st.integers(lowest, 50))
            big = draw(st.sampled_from(numbers))  # two 1e308 overflow a sum, not a reading
            this = draw(st.sampled_from(("obs", "tag", "waste", "evt"))) if kind == "mixed" else kind
            if this == "obs":
                items.append(Observation(device=device, stream=stream, seq=seq, ts=1, metric="M", value=big, unit="%"))
            elif this == "tag":
                items.append(TagRead(device=device, stream=stream, seq=seq, ts=1, tag=f"t{k}", rssi=big))
            elif this == "waste":
                items.append(WasteEvent(device=device, stream=stream, seq=seq, ts=1, bag="b", category="sharps",
                                        weight_g=big, point="ward", handler="h"))
            else:
                items.append(DeviceEvent(device=device, stream=stream, seq=seq, ts=1, event="E",
                                         alarm_kind="technical", priority="low"))
    return items


@settings(max_examples=300, deadline=None)
@given(st.one_of(runs(), runs(devices=_DEVICES[:2], lowest=0, numbers=(1.0, -3.5))))  # the second: mostly whole
def test_the_run_check_accepts_and_refuses_exactly_what_the_item_check_does(items: list[Item]) -> None:
    fast, _ = make()
    fast.handle(DATA, encode(Batch(gateway="gw-icu", sent=1, items=items)))
    slow, _ = make()
    for item in items:
        slow._check("gw-icu", item)
    assert fast._pending.items == slow._pending.items
    assert [(r.reason, r.raw) for r in fast._pending.rejected] == [(r.reason, r.raw) for r in slow._pending.rejected]
    expected: dict[tuple[str, str], list[int]] = {}
    for item in items:
        expected.setdefault((item.device, item.stream), []).append(item.seq)
    assert {key: sorted(seqs) for key, seqs in fast._pending.seqs["gw-icu"].items()} == \
        {key: sorted(seqs) for key, seqs in expected.items()}


def test_ranges_of_contiguous_and_broken_runs() -> None:
    assert ranges({("d", "s"): [3, 2, 1, 2]}) == [SeqRange("d", "s", 1, 3)]
    assert ranges({("d", "s"): [1, 1, 3]}) == [SeqRange("d", "s", 1, 1), SeqRange("d", "s", 3, 3)]
