"""Store outage: ingest spools durably, commits what the spool holds, retries without a deadline, drains."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import msgspec

from devices.bus import BrokerAddress
from devices.contract import Commit, Item
from ingest.service import Ingest, IngestSettings
from ingest.spool import Record, Rejected, Spool
from storage.base import StoreUnavailable, WriteResult
from storage.memory import MemoryStore
from tests.test_ingest import DATA, RecordingClient, batch, obs
from wardlink.config import load


class FlakyStore(MemoryStore):
    """The memory twin that raises StoreUnavailable on every write and quarantine while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    def write(self, items: Sequence[Item], *, checked: bool = False) -> WriteResult:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("store down (test)")
        return super().write(items, checked=checked)

    def quarantine(self, *, source: str, reason: str, raw: bytes, ts: int) -> None:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("store down (test)")
        super().quarantine(source=source, reason=reason, raw=raw, ts=ts)


def committed(client: RecordingClient) -> set[int]:
    return {s for _, p in client.published for r in msgspec.json.decode(p, type=Commit).ranges
            for s in range(r.first, r.last + 1)}


async def test_an_outage_is_spooled_committed_and_drained_after_recovery(tmp_path: Path) -> None:
    store = FlakyStore()
    settings = IngestSettings(retry_initial_s=0.01, retry_max_s=0.05)
    ingest = Ingest(load(env={}).site, store, BrokerAddress("127.0.0.1", 1), settings=settings,
                    spool_path=tmp_path / "spool.db")
    assert ingest.spool is not None
    drain = asyncio.create_task(ingest._drain())
    client = RecordingClient()
    try:
        store.down = True
        for first in range(1, 1001, 100):
            ingest.handle(DATA, batch(*[obs(s) for s in range(first, first + 100)]))
            ingest.handle(DATA, b"{broken")
            await ingest.flush(client)  # type: ignore[arg-type]
        assert committed(client) == set(range(1, 1001))  # the spool holds them durably: the gateway may release
        assert store.stats().observations == 0
        assert ingest.spool.depth() == 1010
        await asyncio.sleep(0.5)  # many retries, no give-up
        assert store.refused > 5
        store.down = False
        for _ in range(100):
            if not ingest.spool.depth():
                break
            await asyncio.sleep(0.05)
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    assert store.stats().observations == 1000
    assert store.quarantine_count() == 10
    flat = ingest.status().counters
    assert flat["spooled"] == 1010
    assert flat["spool_drained"] == 1010
    assert flat["store_errors"] >= 5
    assert flat["g_spool_items"] == 0
    ingest.spool.close()


async def test_a_full_spool_stops_committing_until_it_drains(tmp_path: Path) -> None:
    store = FlakyStore()
    settings = IngestSettings(retry_initial_s=0.01, retry_max_s=0.05, spool_max_items=150)
    ingest = Ingest(load(env={}).site, store, BrokerAddress("127.0.0.1", 1), settings=settings,
                    spool_path=tmp_path / "spool.db")
    client = RecordingClient()
    store.down = True
    ingest.handle(DATA, batch(*[obs(s) for s in range(1, 101)]))
    await ingest.flush(client)  # type: ignore[arg-type]
    ingest.handle(DATA, batch(*[obs(s) for s in range(101, 201)]))
    second = asyncio.create_task(ingest.flush(client))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert not second.done()  # full: no commit, no reading (flush holds the lock)
    assert committed(client) == set(range(1, 101))
    assert ingest.metrics.gauges["spool_full"] == 1
    drain = asyncio.create_task(ingest._drain())
    store.down = False
    await asyncio.wait_for(second, 5)
    for _ in range(100):
        if not ingest.spool or not ingest.spool.depth():
            break
        await asyncio.sleep(0.05)
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)
    assert committed(client) == set(range(1, 201))
    assert store.stats().observations == 200
    assert ingest.counters["spool_full_waits"] == 1


def test_the_spool_survives_a_restart_and_quarantines_a_damaged_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_items=10)
    assert spool.append(Record(items=[obs(1)], rejected=[Rejected("gw", "bad", b"x")]))
    spool.close()
    spool = Spool(tmp_path / "s.db", max_items=10)
    assert spool.depth() == 2
    entry = spool.oldest()
    assert entry is not None
    assert entry[1].items == [obs(1)]
    spool.remove(entry[0])
    spool._db.execute("INSERT INTO spool (count, body) VALUES (1, x'00ff')")
    damaged = spool.oldest()
    assert damaged is not None
    assert "does not decode" in damaged[1].rejected[0].reason
    spool.close()
