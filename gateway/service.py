"""The edge gateway service: runs its drivers, keeps their readings in the outbox, publishes them.

Store-and-forward: drivers hand readings to :meth:`Gateway.accept`, which returns only after the
outbox holds them. The uplink publishes alarm batches before data batches (QoS 1, persistent
session), and deletes rows only when ingest's commit message names their ranges. After a reconnect,
or when commits stop arriving, everything not yet committed is sent again; ingest de-duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import aiomqtt
import msgspec

from devices import bus, topics
from devices.contract import (
    UNDECODABLE,
    Commit,
    DeviceEvent,
    DeviceInfo,
    GatewayStatus,
    Item,
    Phase,
    Priority,
    SeqRange,
    ServiceStatus,
    encode,
)
from devices.site import DeviceSpec, Site
from gateway.driver import Driver, now_ms
from gateway.drivers.registry import create
from gateway.outbox import DATA_LANES, LANE_ALARM, LANE_TRENDS, Outbox, OutboxError, Pending

log = logging.getLogger(__name__)

VERSION = "0.1.0"
RELEASE_EVERY_S = 0.02  # commits that arrive within this are released in one outbox transaction


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Tuning of the uplink (all have sane defaults)."""

    batch_max: int = 500
    linger_s: float = 0.05  # how long to wait for more readings before publishing a small batch
    resend_after_s: float = 10.0  # resend uncommitted rows when no commit arrived for this long
    heartbeat_s: float = 5.0
    outbox_max_rows: int = 1_000_000
    outbox_max_bytes: int = 0  # the outbox file's disk quota (0: none); at it, the lowest-priority lane is shed
    uplink_alarm_s: float = 5.0  # broker unreachable this long: raise "gateway.uplink_lost"
    in_flight: int = 8  # batches published and not yet acknowledged by the broker


class Gateway:
    """One edge gateway: drivers -> outbox -> MQTT, with commits flowing back."""

    def __init__(self, site: Site, gateway_id: str, outbox_path: Path, address: bus.BrokerAddress,
                 settings: GatewaySettings | None = None, *, drivers: bool = True) -> None:
        """Open the outbox and create a driver per device of this gateway (none with ``drivers=False``,
        for a gateway fed by a test or benchmark through :meth:`accept`)."""
        self.site = site
        self.id = gateway_id
        self.address = address
        self.settings = settings or GatewaySettings()
        self.outbox = Outbox(outbox_path, max_rows=self.settings.outbox_max_rows,
                             max_bytes=self.settings.outbox_max_bytes)
        self.devices: dict[str, DeviceSpec] = site.device_index()
        self._announced: dict[str, DeviceInfo] = {}
        self.drivers: list[Driver] = [create(spec, self) for spec in site.devices_of(gateway_id)] if drivers else []
        self.accepted = 0
        self.published = 0
        self.released = 0
        self._committed: list[SeqRange] = []  # ranges ingest reported committed, not yet released
        self._released_wake = asyncio.Event()
        self._wake = asyncio.Event()
        self._queued: list[Item] = []
        self._group: asyncio.Future[None] | None = None
        self._shed_alarm_at = 0.0
        self._last_commit = time.monotonic()
        self.uplink_up = False
        self._down_since = time.monotonic()
        self._topic = {LANE_ALARM: topics.gateway_topic(site.id, gateway_id, "alarm"),
                       LANE_TRENDS: topics.gateway_topic(site.id, gateway_id, "data")}
        self._status_topic = topics.gateway_topic(site.id, gateway_id, "status")
        self._commit_topic = topics.gateway_topic(site.id, gateway_id, "commit")
        self._ingest_filter = topics.service_filter(site.id, "ingest")
        self._ingest_sessions: dict[str, int | None] = {}  # ingest instance -> the session it last announced
        self._resend = False  # set when an ingest worker starts a new session: resend from the oldest row
        self._prefix = b'{"gateway":"' + gateway_id.encode() + b'","sent":'

    # -- the sink drivers write into -------------------------------------------------------------
    def accept(self, items: Sequence[Item]) -> None:
        """Store readings durably (sequence numbers assigned) and wake the uplink."""
        _, result = self.outbox.accept(items)
        self.accepted += result.accepted
        self._wake.set()
        if result.shed and time.monotonic() - self._shed_alarm_at > 30:
            self._shed_alarm_at = time.monotonic()
            self._gateway_event("gateway.outbox_shed", "start", "medium",
                                f"outbox full: {self.outbox.shed_total} low-priority readings dropped", now_ms())

    def accept_soon(self, items: Sequence[Item]) -> asyncio.Future[None]:
        """Queue readings for one group commit at the end of this event-loop iteration.

        Every driver callback that runs in the same iteration lands in the same outbox transaction, which
        is what makes many monitors cheap. The future resolves once the items are durable; a driver that
        acknowledges its device (HL7) awaits it, one that has nobody to acknowledge (serial) need not.
        """
        self._queued.extend(items)
        if self._group is None:
            loop = asyncio.get_running_loop()
            self._group = loop.create_future()
            self._group.add_done_callback(_retrieve)  # a failure is logged here if nobody awaits it
            loop.call_soon(self._commit_group)
        return self._group

    def _commit_group(self) -> None:
        items, self._queued = self._queued, []
        group, self._group = self._group, None
        assert group is not None
        try:
            self.accept(items)
        except OutboxError as exc:
            log.error("gateway %s: %d readings could not be stored: %s", self.id, len(items), exc)
            group.set_exception(exc)
            return
        group.set_result(None)

    def register(self, info: DeviceInfo) -> None:
        """Announce a device (discovered, or its identity changed) ahead of its data; once per identity."""
        spec = self.devices.get(info.device)
        if spec is not None and spec.gateway != self.id:
            log.error("gateway %s: device %s belongs to gateway %s; not announcing it", self.id, info.device,
                      spec.gateway)
            return
        info = msgspec.structs.replace(info, gateway=self.id)
        key = msgspec.structs.replace(info, ts=0, seq=0)
        if self._announced.get(info.device) == key:
            return
        self._announced[info.device] = key
        if spec is None:
            log.info("gateway %s: discovered device %s (%s %s, %s)", self.id, info.device, info.manufacturer,
                     info.model, ", ".join(f"{k}={v}" for k, v in info.identifiers.items()))
            self.devices[info.device] = DeviceSpec(id=info.device, kind=info.driver, gateway=self.id, bed=info.bed,
                                                   manufacturer=info.manufacturer, model=info.model,
                                                   serial_number=info.serial_number)
        self.accept([info])

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run drivers and the uplink until cancelled."""
        log.info("gateway %s: %d devices, outbox %s holds %d rows", self.id, len(self.drivers),
                 self.outbox.path, self.outbox.depth())
        try:
            async with asyncio.TaskGroup() as group:
                for driver in self.drivers:
                    group.create_task(bus.supervise(f"driver {driver.kind}", driver.run))
                group.create_task(bus.supervise(f"gateway {self.id} uplink", self._session,
                                                max_backoff=bus.RECONNECT_MAX_S))
                group.create_task(self._uplink_watchdog())
        finally:
            self.outbox.close()

    def status(self, state: str = "online") -> GatewayStatus:
        """The status message for birth, heartbeat or will."""
        return GatewayStatus(
            gateway=self.id, state="online" if state == "online" else "offline", ts=now_ms(), version=VERSION,
            outbox_depth=self.outbox.depth(), outbox_shed=self.outbox.shed_total,
            devices=[d.health() for d in self.drivers],
        )

    def _gateway_event(self, event: str, phase: Phase, priority: Priority, text: str, ts: int) -> None:
        """A technical event about the gateway itself (the gateway speaks for itself as a device)."""
        self.accept([DeviceEvent(device=self.id, stream="gateway", seq=0, ts=ts, event=event,
                                 alarm_kind="technical", priority=priority, phase=phase, text=text)])

    async def _uplink_watchdog(self) -> None:
        """Raise one "uplink lost" event per outage; it waits in the outbox and keeps its onset time."""
        raised = False
        while True:
            await asyncio.sleep(0.5)
            if self.uplink_up:
                if raised:
                    raised = False
                    self._gateway_event("gateway.uplink_lost", "end", "high", "uplink restored", now_ms())
            elif not raised and time.monotonic() - self._down_since > self.settings.uplink_alarm_s:
                raised = True
                onset = now_ms() - int((time.monotonic() - self._down_since) * 1000)
                log.error("gateway %s: uplink to %s lost; readings are kept in the outbox (%d rows)",
                          self.id, self.address.url, self.outbox.depth())
                self._gateway_event("gateway.uplink_lost", "start", "high",
                                    f"gateway {self.id} cannot reach the broker {self.address.url}", onset)

    async def _session(self) -> None:
        self.uplink_up = False
        will = aiomqtt.Will(self._status_topic, encode(self.status("offline")), qos=1, retain=True)
        client = bus.client(self.address, f"wardlink-gw-{self.id}", will=will, clean_session=False)
        async with client:
            await client.subscribe(self._commit_topic, qos=1)
            await client.subscribe(self._ingest_filter, qos=1)
            self.uplink_up = True
            log.info("gateway %s: connected to %s", self.id, self.address.url)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._uplink(client))
                    group.create_task(self._commits(client))
                    group.create_task(self._releases())
                    group.create_task(bus.heartbeat(client, self._status_topic, lambda: encode(self.status()),
                                                    self.settings.heartbeat_s))
            finally:
                self.uplink_up = False
                self._down_since = time.monotonic()
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(client.publish(
                        self._status_topic, encode(self.status("offline")), qos=1, retain=True)), 1.0)

    async def _uplink(self, client: aiomqtt.Client) -> None:
        """Publish pending rows: alarms first, then the data lanes in turn; a few batches in flight at once.

        After a (re)connect, or when commits stop arriving, it starts over from the oldest uncommitted row.
        """
        lanes = (LANE_ALARM, *DATA_LANES)
        cursor = dict.fromkeys(lanes, 0)
        turn = 0  # which data lane goes first this round, so a busy lane never starves the others
        in_flight: set[asyncio.Task[None]] = set()
        last_send = time.monotonic()
        # Stragglers: a row still waiting a whole period after it was sent lost its commit (an ingest worker
        # died holding it) even while other rows keep being committed: send it again from there.
        watched: dict[int, int] = {}  # lane -> the oldest row id at the last check
        next_check = time.monotonic() + self.settings.resend_after_s
        try:
            while True:
                if self._resend:
                    self._resend = False
                    cursor = dict.fromkeys(lanes, 0)
                if time.monotonic() > next_check:
                    next_check = time.monotonic() + self.settings.resend_after_s
                    oldest = self.outbox.oldest()
                    for lane, row_id in oldest.items():
                        if watched.get(lane) == row_id and cursor[lane] >= row_id:
                            log.warning("gateway %s: lane %d row %d uncommitted for %.0f s; resending from it",
                                        self.id, lane, row_id, self.settings.resend_after_s)
                            cursor[lane] = row_id - 1
                    watched = oldest
                order = (LANE_ALARM, *DATA_LANES[turn:], *DATA_LANES[:turn])
                for lane in order:
                    rows = self.outbox.pending(lane, cursor[lane], self.settings.batch_max)
                    if rows:
                        break
                else:
                    rows = []
                if rows:
                    topic = self._topic[LANE_ALARM if lane == LANE_ALARM else LANE_TRENDS]
                    # Tasks start in creation order, so the client sends the batches in order.
                    in_flight.add(asyncio.create_task(client.publish(topic, self._batch(rows), qos=1)))
                    cursor[lane] = rows[-1].id
                    self.published += sum(r.count for r in rows)
                    last_send = time.monotonic()
                    if lane != LANE_ALARM:
                        turn = (DATA_LANES.index(lane) + 1) % len(DATA_LANES)
                    if len(in_flight) >= self.settings.in_flight:
                        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        for task in done:
                            task.result()  # a failed publish ends the session; the rows are still stored
                    continue
                if in_flight:
                    done, in_flight = await asyncio.wait(in_flight)
                    for task in done:
                        task.result()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                await asyncio.sleep(self.settings.linger_s)  # let a batch fill up
                quiet = time.monotonic() - max(self._last_commit, last_send)
                if self.outbox.depth() and quiet > self.settings.resend_after_s:
                    log.warning("gateway %s: no commit for %.0f s, resending %d uncommitted rows",
                                self.id, quiet, self.outbox.depth())
                    cursor = dict.fromkeys(lanes, 0)
                    last_send = time.monotonic()
        finally:
            for task in in_flight:
                task.cancel()

    def _batch(self, rows: list[Pending]) -> bytes:
        """A Batch message built from stored payloads without decoding them again."""
        return b"".join((self._prefix, str(now_ms()).encode(), b',"items":[',
                         b",".join(r.payload for r in rows), b"]}"))

    async def _commits(self, client: aiomqtt.Client) -> None:
        decoder = msgspec.json.Decoder(Commit)
        statuses = msgspec.json.Decoder(ServiceStatus)
        async for message in bus.messages(client):
            if not isinstance(message.payload, bytes):
                continue
            if message.topic.matches(self._ingest_filter):
                self._ingest_status(message.payload, statuses, retained=message.retain)
                continue
            if str(message.topic) != self._commit_topic:
                continue  # only our own commits (a broker must not send others, but do not trust it)
            try:
                commit = decoder.decode(message.payload)
            except UNDECODABLE as exc:
                log.warning("gateway %s: ignoring malformed commit on %s: %s", self.id, message.topic, exc)
                continue
            self._committed.extend(commit.ranges)
            self._released_wake.set()
            self._last_commit = time.monotonic()

    async def _releases(self) -> None:
        """Delete committed rows, the commits of ``RELEASE_EVERY_S`` together in one transaction.

        A row leaves only once ingest said it is committed; gathering commits only keeps it a few ms
        longer. Run in the loop, not a thread: a release of a few thousand readings takes a millisecond or
        two, a thread would not keep the loop free (an accept waits for the outbox lock the release holds),
        and the hop costs CPU (``wardlink bench gateway``). Rows whose commit has arrived when the session
        ends are released on the way out.
        """
        try:
            while True:
                await self._released_wake.wait()
                await asyncio.sleep(RELEASE_EVERY_S)
                self._released_wake.clear()
                self._release_committed()
        finally:
            try:
                self._release_committed()
            except OutboxError as exc:  # those rows stay and are sent again; ingest de-duplicates
                log.error("gateway %s: releasing committed rows failed: %s", self.id, exc)

    def _release_committed(self) -> None:
        ranges, self._committed = self._committed, []
        if ranges:
            self.released += self.outbox.release(ranges)

    def _ingest_status(self, payload: bytes, decoder: msgspec.json.Decoder[ServiceStatus], *, retained: bool) -> None:
        """Resend from the oldest uncommitted row as soon as an ingest worker starts a new broker session.

        A worker's new session has lost whatever was sent while it was away (a restarted broker, or a
        shared subscription with nobody in it), so waiting ``resend_after_s`` would only delay those rows,
        alarms among them. A retained status is the state at our own (re)connect, which resends anyway.
        """
        if not payload:
            return  # a cleared retained status
        try:
            status = decoder.decode(payload)
        except UNDECODABLE:
            log.warning("gateway %s: ignoring a malformed ingest status", self.id)
            return
        known = self._ingest_sessions.get(status.instance, 0)
        self._ingest_sessions[status.instance] = status.since if status.state == "online" else None
        if status.state == "online" and not retained and status.since != known:
            log.info("gateway %s: ingest %s started a new session; resending what is uncommitted",
                     self.id, status.instance)
            self._resend = True
            self._wake.set()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a group commit's outcome as seen (its failure was logged when it happened)."""
    if not future.cancelled():
        future.exception()
