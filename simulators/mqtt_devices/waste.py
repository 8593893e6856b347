"""Simulated medical-waste scan points on MQTT and the bag journeys they record.

A bag is sealed and weighed on the ward, then scanned and weighed again by the collector, at the
temporary storage and by the licensed disposer. Every scale reads the same bag slightly differently,
always within 0.9% of the ward's weight, so any two scales agree within 2% and a traceability check of
+/-2% (collected vs stored) passes for honest journeys.
Each scan point is its own MQTT client and keeps scans it could not publish (broker down) in a small
queue, sending them when the broker is back, as handheld scanners do.

Scan payload (one JSON object per scan)::

    {"scanner": "wst-3w-ward", "point": "ward", "bag": "MW-3W-20260101-0007", "category": "infectious",
     "weight_kg": 2.35, "handler": "N-1042", "department": "3W", "time": "2026-01-01T08:00:00.000+08:00"}

This module knows the format on its own; it never imports the gateway. :meth:`ScanPointSim.send_raw`
injects any bytes (a scan with a negative weight, an unknown category, garbage).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal

import aiomqtt

logger = logging.getLogger(__name__)

Category = Literal["infectious", "sharps", "pathological", "pharmaceutical", "chemical"]
Point = Literal["ward", "collector", "storage", "disposer"]

CATEGORIES: Final[tuple[Category, ...]] = ("infectious", "sharps", "pathological", "pharmaceutical", "chemical")
JOURNEY: Final[tuple[Point, ...]] = ("ward", "collector", "storage", "disposer")
CHINESE_NAMES: Final[dict[Category, str]] = {
    "infectious": "感染性废物",
    "sharps": "损伤性废物",
    "pathological": "病理性废物",
    "pharmaceutical": "药物性废物",
    "chemical": "化学性废物",
}
# Typical sealed-bag weights in grams (a bag is sealed at 3/4 full; a sharps box is small and dense).
TYPICAL_G: Final[dict[Category, tuple[float, float]]] = {
    "infectious": (800.0, 4500.0),
    "sharps": (300.0, 1500.0),
    "pathological": (200.0, 3000.0),
    "pharmaceutical": (100.0, 2000.0),
    "chemical": (200.0, 5000.0),
}
SCALE_SPREAD: Final = 0.009  # every re-weighing stays within 0.9% of the ward's weight: two scales agree within 2%
CHINA_TIME: Final = timezone(timedelta(hours=8))
RECONNECT_S: Final = 0.3
MAX_QUEUED: Final = 1000


@dataclass(frozen=True, slots=True)
class Bag:
    """A sealed waste bag as labelled on the ward (``weight_g`` is what the ward's scale read)."""

    bag: str
    category: Category
    weight_g: float
    department: str


class ScanPointSim:
    """One scan point (scanner and scale) at one handover point, publishing scans with QoS 1."""

    def __init__(self, scanner_id: str, point: Point, *, host: str, port: int, topic: str,
                 chinese_names: bool = False, seed: int = 0) -> None:
        """``scanner_id`` is what the scan point writes in every scan."""
        self.scanner_id = scanner_id
        self.point = point
        self.host = host
        self.port = port
        self.topic = topic
        self.chinese_names = chinese_names
        self.rng = random.Random(seed)
        self.queue: collections.deque[bytes] = collections.deque(maxlen=MAX_QUEUED)
        self.published = 0
        self.connected = False
        self._wake = asyncio.Event()

    def scan_payload(self, bag: Bag, handler: str, weight_g: float) -> bytes:
        """The payload of one scan of ``bag`` weighed at ``weight_g``."""
        scan: dict[str, Any] = {
            "scanner": self.scanner_id, "point": self.point, "bag": bag.bag,
            "category": CHINESE_NAMES[bag.category] if self.chinese_names else bag.category,
            "handler": handler, "department": bag.department,
            "time": datetime.now(CHINA_TIME).isoformat(timespec="milliseconds"),
        }
        if self.point == "disposer":  # the licensed disposer signs a transfer manifest for what it takes away
            scan["manifest"] = f"ZY-{bag.bag}"
        if self.rng.random() < 0.5:  # scales differ: some report kilograms, some grams
            scan["weight_kg"] = round(weight_g / 1000.0, 3)
        else:
            scan["weight_g"] = round(weight_g, 1)
        return json.dumps(scan, ensure_ascii=False).encode()

    def scan(self, bag: Bag, handler: str) -> float:
        """Weigh and scan ``bag``; the scan is queued for publishing. Return the weight this scale read."""
        # The ward's scale wrote the label; every later scale reads within SCALE_SPREAD of it.
        spread = 0.0 if self.point == "ward" else SCALE_SPREAD
        weight = bag.weight_g * (1.0 + self.rng.uniform(-spread, spread))
        self.send_raw(self.scan_payload(bag, handler, weight))
        return weight

    def send_raw(self, payload: bytes) -> None:
        """Queue any payload for publishing (fault injection)."""
        self.queue.append(payload)
        self._wake.set()

    async def run(self) -> None:
        """Publish queued scans until cancelled; keep them queued while the broker is unreachable."""
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=f"sim-waste-{self.scanner_id}",
                                          keepalive=10) as client:
                    self.connected = True
                    while True:
                        while self.queue:
                            await client.publish(self.topic, self.queue[0], qos=1)
                            self.queue.popleft()  # only once the broker has it
                            self.published += 1
                        self._wake.clear()
                        await self._wake.wait()
            except aiomqtt.MqttError as exc:
                if self.connected:
                    logger.info("scan point %s: broker connection lost (%s)", self.scanner_id, exc)
                self.connected = False
                await asyncio.sleep(RECONNECT_S)


class WasteRound:
    """Bags of one department travelling ward -> collector -> storage -> disposer through four scan points."""

    def __init__(self, points: Sequence[ScanPointSim], *, department: str, seed: int = 0) -> None:
        """``points`` are the scan points in journey order (ward, collector, storage, disposer)."""
        if tuple(p.point for p in points) != JOURNEY:
            raise ValueError(f"scan points must be in journey order {JOURNEY}")
        self.points = list(points)
        self.department = department
        self.rng = random.Random(seed)
        self.bags = 0
        self.handlers: dict[Point, str] = {"ward": "N-1042", "collector": "C-0007", "storage": "S-0003",
                                           "disposer": "DISP-LIC-4401"}

    def new_bag(self, category: Category | None = None) -> Bag:
        """A freshly sealed bag on the ward."""
        self.bags += 1
        chosen: Category = category if category is not None else self.rng.choice(CATEGORIES)
        low, high = TYPICAL_G[chosen]
        day = datetime.now(CHINA_TIME).strftime("%Y%m%d")
        return Bag(f"MW-{self.department}-{day}-{self.bags:04d}", chosen, round(self.rng.uniform(low, high), 1),
                   self.department)

    async def journey(self, bag: Bag, *, leg_s: float) -> list[float]:
        """Scan ``bag`` at every point in order, ``leg_s`` apart; return the weights each scale read."""
        weights = []
        for index, point in enumerate(self.points):
            if index:
                await asyncio.sleep(leg_s)
            weights.append(point.scan(bag, self.handlers[point.point]))
        return weights

    async def run(self, bags: int, *, leg_s: float, between_s: float) -> None:
        """Send ``bags`` bags of every category in turn on their journeys, ``between_s`` before each.

        The pause comes first: a scan published before the gateway reading the scan point has subscribed
        is dropped by the broker, and the demo's first bag then raised a false "missing step" every start.
        """
        for index in range(bags):
            await asyncio.sleep(between_s)
            await self.journey(self.new_bag(CATEGORIES[index % len(CATEGORIES)]), leg_s=leg_s)
