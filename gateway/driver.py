"""The driver contract: one small interface every device kind implements, and its shared link state."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar, Protocol

from devices.clock import now_ms
from devices.contract import ConnectionState, DeviceEvent, DeviceHealth, DeviceInfo, Item, Priority
from devices.site import DeviceSpec

__all__ = ["Driver", "Link", "Sink", "now_ms"]


class Sink(Protocol):
    """Where a driver hands its readings: they are durable once ``accept`` returns."""

    def accept(self, items: Sequence[Item]) -> None:
        """Store ``items`` (sequence numbers are assigned by the sink)."""

    def accept_soon(self, items: Sequence[Item]) -> Awaitable[None]:
        """Store ``items`` in the group commit at the end of this loop iteration; awaitable until durable."""

    def register(self, info: DeviceInfo) -> None:
        """Announce a device discovered at run time, or a change of identity (firmware); idempotent."""


class Driver(Protocol):
    """A device kind: reads one device on its own protocol until cancelled, reconnecting itself."""

    kind: ClassVar[str]

    def __init__(self, spec: DeviceSpec, sink: Sink) -> None:
        """Bind the driver to one device and the gateway's sink."""

    async def run(self) -> None:
        """Read the device until cancelled."""

    def health(self) -> DeviceHealth:
        """The link's current state and counters."""


class Link:
    """Connection state of one device link, with the technical events its transitions raise."""

    def __init__(self, spec: DeviceSpec, sink: Sink, *, stream: str = "link") -> None:
        """Start in ``connecting``."""
        self.spec = spec
        self.sink = sink
        self.stream = stream
        self.state: ConnectionState = "connecting"
        self.last_seen: int | None = None
        self.frames_ok = 0
        self.frames_bad = 0
        self._lost_raised = False

    def seen(self, good: int = 1) -> None:
        """Valid frames arrived: the device is connected (ends a raised disconnect alarm)."""
        self.frames_ok += good
        self.last_seen = now_ms()
        if self.state != "connected":
            self.state = "connected"
            if self._lost_raised:
                self._lost_raised = False
                self._event("device.disconnected", "end", "medium", f"{self.spec.id} reconnected")

    def lost(self, reason: str) -> None:
        """The device went silent or its port failed: raise one disconnect alarm per episode."""
        self.state = "lost"
        if not self._lost_raised:
            self._lost_raised = True
            self._event("device.disconnected", "start", "medium", f"{self.spec.id} disconnected: {reason}")

    def health(self) -> DeviceHealth:
        """Snapshot for the gateway status message."""
        return DeviceHealth(self.spec.id, self.state, self.last_seen, self.frames_ok, self.frames_bad)

    def _event(self, event: str, phase: Any, priority: Priority, text: str) -> None:
        self.sink.accept(
            [
                DeviceEvent(
                    device=self.spec.id,
                    stream=self.stream,
                    seq=0,
                    ts=now_ms(),
                    event=event,
                    alarm_kind="technical",
                    priority=priority,
                    phase=phase,
                    text=text,
                    bed=self.spec.bed,
                )
            ]
        )
