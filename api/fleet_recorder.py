"""The fleet recorder: turns the gateway statuses the API's live view hears into connection-state changes.

Gateways publish a status (birth, heartbeat, and a last will saying ``offline``) with the health of each
device they read. Uptime needs the history of those states, so the recorder keeps the last state of
every device and gateway in memory and writes only *changes* to ``connection_log`` (:mod:`state.fleet`).
When a gateway goes offline, each device last heard on it enters ``gateway_offline``: "device down"
and "gateway down" stay apart. A last will carries the time its session began (MQTT fixes the will at
connect), so one not newer than the gateway's newest status is recorded right after that status, its last
sign of life. Writes are idempotent (subject, time, state), so several API processes record each change
once; a failed write is retried by forgetting the state, so the next status records it.
Changes that happen while no API process runs are not seen (the period counts as unknown, not as down).
"""

from __future__ import annotations

import asyncio
import logging

from devices.contract import GatewayStatus
from state.errors import StateError
from state.fleet import Fleet, LinkChange

log = logging.getLogger(__name__)


class FleetRecorder:
    """Connection-state changes of devices and gateways, from gateway statuses, into the state."""

    def __init__(self, fleet: Fleet) -> None:
        """Record into ``fleet``."""
        self._fleet = fleet
        self._devices: dict[str, str] = {}
        self._gateways: dict[str, str] = {}
        self._heard: dict[str, int] = {}  # gateway -> the time of its newest status
        self._members: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.recorded = 0
        self.failures = 0

    def changes(self, status: GatewayStatus) -> list[LinkChange]:
        """The changes one status brings (and remember them as the current states)."""
        gateway, out, ts = status.gateway, [], status.ts
        last = self._heard.get(gateway)
        if status.state == "offline" and last is not None and ts <= last:
            # A last will: composed when the session began, published by the broker when the session died, after
            # the newest status heard. The same time in every API process, so the write stays idempotent.
            ts = last + 1
        self._heard[gateway] = max(ts, last if last is not None else ts)
        if self._gateways.get(gateway) != status.state:
            out.append(LinkChange(gateway, "gateway", gateway, status.state, ts))
            self._gateways[gateway] = status.state
        members = self._members.setdefault(gateway, set())
        members.update(h.device for h in status.devices)
        if status.state == "offline":
            states = dict.fromkeys(sorted(members), "gateway_offline")
        else:
            states = {h.device: h.state for h in status.devices}
        for device, state in states.items():
            if self._devices.get(device) != state:
                out.append(LinkChange(device, "device", gateway, state, ts))
                self._devices[device] = state
        return out

    def observe(self, status: GatewayStatus) -> None:
        """A live-view listener: record the changes in the background (at once when no event loop runs)."""
        changes = self.changes(status)
        if not changes:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(changes)
            return
        task = loop.create_task(asyncio.to_thread(self._write, changes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, changes: list[LinkChange]) -> None:
        try:
            self.recorded += self._fleet.record_links(changes)
        except StateError as exc:
            self.failures += 1
            log.warning("fleet recorder: %d connection changes not recorded (%s); retrying on the next status",
                        len(changes), exc)
            for change in changes:  # forget them, so the next status records the state again
                (self._gateways if change.kind == "gateway" else self._devices).pop(change.subject, None)

    async def drain(self) -> None:
        """Wait for the writes under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
