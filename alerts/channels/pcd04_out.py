"""IHE PCD-04 out: Wardlink as Alarm Reporter, sending ORU^R40 over MLLP to an Alarm Manager (Vocera, Ascom, Spok ...).

Each alert transition becomes one ORU^R40: phase ``start`` when it first becomes active, ``update`` on
acknowledgement, escalation or a repeat, ``end`` when it resolves; OBR-3 carries
``<update counter>^<alert id>^WARDLINK`` so the manager correlates them. Facets follow IHE PCD
(event phase 68481, alarm state 68482, inactivation state 68483, priority 68484, kind 68485).

Every message must be answered by an ACK^R40 (``AA``/``CA`` with our MSH-10) within ``confirm_s``;
when idle, a watchdog message (a local code, ``WARDLINK_WATCHDOG``) is sent every ``watchdog_s``
so a silent manager is noticed. A missing or negative ACK, or an unreachable manager, raises the
technical alarm ``pcd04.no_ack`` (a secondary alarm path that stops working must say so) and the
connection is rebuilt; messages waiting in the bounded queue are sent after the reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Final, Protocol

import msgspec

from devices.clock import now_ms
from devices.contract import Alert, Priority
from devices.mllp import MllpFramer, wrap

log = logging.getLogger(__name__)

NO_ACK: Final = "pcd04.no_ack"
SOURCE: Final = "alarm-manager"
PROFILE: Final = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO"
_PRIORITY: Final = {"high": "PH", "medium": "PM", "low": "PL", "info": "PN"}
_KIND: Final = {"physiological": "SP", "technical": "ST", "advisory": "SA"}
_ESCAPES: Final = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))


class Pcd04Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Alarm Manager to report to (``host`` empty: PCD-04 out is off)."""

    host: str = ""
    port: int = 2576
    confirm_s: float = 5.0  # an ACK^R40 must arrive this fast
    watchdog_s: float = 30.0  # a watchdog message when nothing else was sent this long
    queue_max: int = 10_000
    receiving_application: str = "ALARM_MANAGER"
    facility: str = "WARDLINK"


class RaiseTechnical(Protocol):
    """How the channel raises its technical alarm."""

    def __call__(self, source: str, type_: str, priority: Priority, message: str, *, bed: str | None,
                 unit: str | None) -> Awaitable[None]:
        """Raise (or repeat) a technical alarm."""


def escape(text: str) -> str:
    """HL7 v2 escaping of the default delimiters."""
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text.replace("\r", " ").replace("\n", " ")


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d%H%M%S.%f")[:-3] + "+0000"


def report_message(alert: Alert, phase: str, counter: int, control_id: str, now: int, settings: Pcd04Settings,
                   escalated_to: list[str] | None = None) -> bytes:
    """One ORU^R40 (unframed) for an alert transition."""
    state = "inactive" if phase == "end" else "active"
    inactivation = "acknowledged" if alert.state == "acknowledged" else "enabled"
    location = f"{escape(alert.unit or '')}^^{escape(alert.bed or '')}"
    text = alert.message + (f" (escalated to {', '.join(escalated_to)})" if escalated_to else "")
    event = escape(alert.type)
    rows = [
        ("196616^MDC_EVT_ALARM^MDC", "CWE", f"0^{event}^WARDLINK^^^^^^{escape(text)}",
         f"{_PRIORITY.get(alert.priority, 'PM')}~{_KIND.get(alert.alarm_kind, 'ST')}"),
        ("68480^MDC_ATTR_ALERT_SOURCE^MDC", "ST", escape(alert.metric or alert.source), ""),
        ("68481^MDC_ATTR_EVENT_PHASE^MDC", "ST", phase, ""),
        ("68482^MDC_ATTR_ALARM_STATE^MDC", "ST", state, ""),
        ("68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC", "ST", inactivation, ""),
        ("68484^MDC_ATTR_ALARM_PRIORITY^MDC", "ST", _PRIORITY.get(alert.priority, "PM"), ""),
        ("68485^MDC_ATTR_ALERT_TYPE^MDC", "ST", _KIND.get(alert.alarm_kind, "ST"), ""),
    ]
    segments = [
        f"MSH|^~\\&|WARDLINK|{escape(settings.facility)}|{escape(settings.receiving_application)}||{_ts(now)}||"
        f"ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|||{PROFILE}",
        f"PV1||I|{location}",
        f"OBR|1|{escape(alert.id)}^WARDLINK|{counter}^{escape(alert.id)}^WARDLINK|196616^MDC_EVT_ALARM^MDC|||"
        f"{_ts(alert.onset)}",
    ]
    for n, (ident, value_type, value, marks) in enumerate(rows, start=1):
        segments.append(f"OBX|{n}|{value_type}|{ident}|1.0.0.{n}|{value}|||{marks}|||F|||{_ts(alert.updated)}")
    return ("\r".join(segments) + "\r").encode("utf-8")


def watchdog_message(control_id: str, now: int, settings: Pcd04Settings) -> bytes:
    """The keep-alive ORU^R40 sent when idle (a local code: the manager only has to ACK it)."""
    return (f"MSH|^~\\&|WARDLINK|{escape(settings.facility)}|{escape(settings.receiving_application)}||{_ts(now)}||"
            f"ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|NE\r"
            f"OBR|1|||0^WARDLINK_WATCHDOG^WARDLINK|||{_ts(now)}\r").encode()


def read_ack(payload: bytes) -> tuple[str, str]:
    """``(MSA-1, MSA-2)`` of an ACK (``("", "")`` when it has no MSA)."""
    text = payload.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    for segment in text.split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3] if len(segment) > 3 else "|")
            return (fields[1] if len(fields) > 1 else "", fields[2] if len(fields) > 2 else "")
    return "", ""


class Pcd04Out:
    """The Alarm Reporter: a queue of transitions, one MLLP connection, confirm timeout and watchdog."""

    def __init__(self, settings: Pcd04Settings, raise_technical: RaiseTechnical) -> None:
        """Nothing connects until :meth:`run`."""
        self.settings = settings
        self._raise = raise_technical
        self._queue: deque[tuple[Alert, str, list[str] | None]] = deque()
        self._ready = asyncio.Event()
        self._counters: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.sent = 0
        self.acked = 0
        self.failures = 0
        self.dropped = 0
        self.healthy = False

    def report(self, alert: Alert, escalated_to: list[str] | None = None) -> None:
        """Queue one alert transition (start, update or end follows from the alert and what was sent before)."""
        if alert.type == NO_ACK:
            return  # its own failure cannot be reported over the link that failed
        if len(self._queue) >= self.settings.queue_max:
            self.dropped += 1  # counted and logged: the manager has been unreachable for long
            log.error("pcd04 out: queue full, alert %s transition dropped", alert.id)
            return
        known = alert.id in self._counters
        phase = "end" if alert.state == "resolved" else ("update" if known else "start")
        if phase == "end" and not known:
            return  # never started at the manager (raised and resolved before it was reported)
        self._counters[alert.id] = self._counters.get(alert.id, 0)
        self._queue.append((alert, phase, escalated_to))
        self._ready.set()

    async def run(self) -> None:
        """Keep a connection to the Alarm Manager and send everything queued, until cancelled."""
        backoff = 0.5
        while True:
            try:
                await self._connection()
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.failures += 1
                self.healthy = False
                log.error("pcd04 out: Alarm Manager %s:%d: %s", self.settings.host, self.settings.port, exc)
                await self._raise(SOURCE, NO_ACK, "high",
                                  f"Alarm Manager {self.settings.host}:{self.settings.port} not confirming: {exc}",
                                  bed=None, unit=None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _connection(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.settings.host, self.settings.port), self.settings.confirm_s)
        framer = MllpFramer()
        try:
            while True:
                try:
                    await asyncio.wait_for(self._ready.wait(), self.settings.watchdog_s)
                except TimeoutError:
                    await self._exchange(reader, writer, framer, None)  # the watchdog
                    continue
                while self._queue:
                    await self._exchange(reader, writer, framer, self._queue[0])
                    self._queue.popleft()
                self._ready.clear()
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: MllpFramer,
                        item: tuple[Alert, str, list[str] | None] | None) -> None:
        """Send one message and wait for its ACK^R40; raise ``ConnectionError`` when none (or a negative one) comes."""
        control_id = f"WL{now_ms()}{next(self._ids)}"
        if item is None:
            payload = watchdog_message(control_id, now_ms(), self.settings)
        else:
            alert, phase, escalated_to = item
            counter = self._counters.get(alert.id, 0) + 1
            payload = report_message(alert, phase, counter, control_id, now_ms(), self.settings, escalated_to)
        writer.write(wrap(payload))
        await writer.drain()
        self.sent += 1
        code, acked = await asyncio.wait_for(self._ack(reader, framer), self.settings.confirm_s)
        if code not in ("AA", "CA") or acked != control_id:
            raise ConnectionError(f"ACK^R40 {code or 'missing'} for {control_id} (answered {acked!r})")
        self.acked += 1
        self.healthy = True
        if item is not None:
            alert, phase, _ = item
            if phase == "end":
                self._counters.pop(alert.id, None)
            else:
                self._counters[alert.id] = self._counters.get(alert.id, 0) + 1

    async def _ack(self, reader: asyncio.StreamReader, framer: MllpFramer) -> tuple[str, str]:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the Alarm Manager closed the connection")
            frames = framer.feed(data)
            if frames:
                return read_ack(frames[0].payload)
