"""Ingest: subscribe to every gateway, validate, de-duplicate, batch into the store, publish commits.

A message is never left to stall the consumer: whatever fails validation is quarantined in the
store with its reason and raw bytes, and its ranges are committed like stored ones so the gateway
stops resending it. De-duplication is the store's key ``(device, stream, seq)``. Commits go out
only after the store has the batch, so a gateway never deletes a reading the store does not hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import aiomqtt
import msgspec

from devices import bus, topics
from devices.clock import now_ms
from devices.contract import (
    Commit,
    ContractError,
    DeviceInfo,
    Item,
    SeqRange,
    ServiceStatus,
    check_item,
    decode_batch_lenient,
    encode,
)
from devices.site import DeviceSpec, Site
from storage.base import StoreError, TimeSeriesStore

log = logging.getLogger(__name__)


class IngestSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Batching and limits."""

    batch_max: int = 5_000
    flush_s: float = 0.2
    max_payload: int = 4 * 1024 * 1024
    share_group: str | None = None  # MQTT 5 shared subscription group, for several workers
    heartbeat_s: float = 5.0


@dataclass(slots=True)
class _Rejected:
    source: str
    reason: str
    raw: bytes


@dataclass(slots=True)
class _Pending:
    items: list[Item] = field(default_factory=list)
    rejected: list[_Rejected] = field(default_factory=list)
    # gateway -> (device, stream) -> seqs to commit (stored, duplicate or quarantined)
    seqs: dict[str, dict[tuple[str, str], list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def __len__(self) -> int:
        return len(self.items) + len(self.rejected)


def ranges(seqs: dict[tuple[str, str], list[int]]) -> list[SeqRange]:
    """Merge sequence numbers per stream into inclusive contiguous ranges."""
    out: list[SeqRange] = []
    for (device, stream), numbers in seqs.items():
        numbers = sorted(set(numbers))
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
                 instance: str = "ingest-1", settings: IngestSettings | None = None) -> None:
        """Bind the worker to the site's device registry and a store."""
        self.site = site
        self.store = store
        self.address = address
        self.instance = instance
        self.settings = settings or IngestSettings()
        self.devices: dict[str, DeviceSpec] = site.device_index()
        self.counters: dict[str, int] = defaultdict(int)
        self._restore_discovered()
        self.lag_ms = 0
        self._pending = _Pending()
        self._flush_lock = asyncio.Lock()
        self._status_topic = topics.service_topic(site.id, "ingest", instance)

    async def run(self) -> None:
        """Consume until cancelled, reconnecting as needed."""
        await bus.supervise(f"ingest {self.instance}", self._session)

    def status(self, state: str = "online") -> ServiceStatus:
        """Heartbeat with lag and counters."""
        return ServiceStatus(service="ingest", instance=self.instance,
                             state="online" if state == "online" else "offline", ts=now_ms(),
                             lag_ms=self.lag_ms, counters=dict(self.counters))

    async def _session(self) -> None:
        will = aiomqtt.Will(self._status_topic, encode(self.status("offline")), qos=1, retain=True)
        client = bus.client(self.address, f"wardlink-{self.instance}", will=will, clean_session=False)
        async with client:
            share = self.settings.share_group
            for channel in ("alarm", "data"):
                await client.subscribe(topics.gateway_filter(self.site.id, channel, share), qos=1)
            log.info("ingest %s: consuming from %s", self.instance, self.address.url)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._receive(client))
                group.create_task(self._timer(client))
                group.create_task(bus.heartbeat(client, self._status_topic, lambda: encode(self.status()),
                                                self.settings.heartbeat_s))

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload).encode()
            self.handle(str(message.topic), raw)
            if len(self._pending) >= self.settings.batch_max:
                await self.flush(client)  # back-pressure: no more reading until the store has these

    async def _timer(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_s)
            await self.flush(client)

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate one message into the pending batch; never raises for bad input."""
        self.counters["messages"] += 1
        try:
            parsed = topics.parse(topic)
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
            if broken.seq >= 0:
                commit[(broken.device, broken.stream)].append(broken.seq)
        for item in batch.items:
            commit[(item.device, item.stream)].append(item.seq)
            spec = self.devices.get(item.device)
            if item.device == gateway and spec is None:
                pending.items.append(item)  # a gateway's events about itself (uplink lost, outbox shed)
                continue
            if spec is None and isinstance(item, DeviceInfo):
                spec = self._discovered(gateway, item)
            try:
                if spec is None:
                    raise ContractError(f"device {item.device}: unknown device (field device)")
                if spec.gateway != gateway:
                    raise ContractError(f"device {item.device}: belongs to gateway {spec.gateway}, "
                                        f"not {gateway} (field device)")
                check_item(item)
            except ContractError as exc:
                self._reject(gateway, str(exc), encode(item))
                continue
            pending.items.append(item)

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
        self._pending.rejected.append(_Rejected(source, reason, raw))

    async def flush(self, client: aiomqtt.Client) -> None:
        """Write the pending batch to the store, then tell each gateway what it may release."""
        async with self._flush_lock:
            pending = self._pending
            if not len(pending):
                return
            self._pending = _Pending()
            backoff = 0.2
            while True:
                try:
                    result = await asyncio.to_thread(self._write, pending)
                    break
                except StoreError as exc:
                    if not exc.retryable:
                        log.error("ingest: store refused a batch of %d (%s); storing item by item", len(pending), exc)
                        result = await asyncio.to_thread(self._write_one_by_one, pending)
                        break
                    self.counters["store_errors"] += 1
                    log.warning("ingest: store unavailable (%s); retrying in %.1f s", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
            self.counters["stored"] += result[0]
            self.counters["duplicates"] += result[1]
            self.counters["flushes"] += 1
            if pending.items:
                self.lag_ms = max(0, now_ms() - min(i.ts for i in pending.items))
            for gateway, seqs in pending.seqs.items():
                commit = Commit(gateway=gateway, ts=now_ms(), ranges=ranges(seqs))
                await client.publish(topics.gateway_topic(self.site.id, gateway, "commit"), encode(commit), qos=1)

    def _write_one_by_one(self, pending: _Pending) -> tuple[int, int]:
        """The slow path after a refused batch: store what the store takes, quarantine what it refuses."""
        stored = duplicates = 0
        for item in pending.items:
            try:
                result = self.store.write([item])
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

    def _write(self, pending: _Pending) -> tuple[int, int]:
        for rejected in pending.rejected:
            self.store.quarantine(source=rejected.source, reason=rejected.reason, raw=rejected.raw, ts=now_ms())
        pending.rejected.clear()  # quarantined: a retry of the items must not quarantine them twice
        if not pending.items:
            return 0, 0
        result = self.store.write(pending.items)
        return result.stored, result.duplicates
