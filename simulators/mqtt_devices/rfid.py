"""Simulated location readers on MQTT: UHF RFID readers and BLE gateways watching assets move between rooms.

Assets wander along a corridor of rooms. A reader hears the assets in its own room loudly and those
in the rooms next door faintly, so one tag is often reported by two neighbouring readers at once and
its RSSI differs from report to report, as on a real ward. Each simulated reader is its own MQTT
client publishing what a real one would:

- :class:`RfidReaderSim`: one JSON object per report with the reader's name and MAC and a list of tag
  reports (EPC, antenna port, peak RSSI, first and last seen time), Speedway-Connect style; times in
  ISO 8601 or in microseconds since the epoch, and a heartbeat entry when no tag is in range;
- :class:`BleGatewaySim`: a JSON array of advertisements led by the gateway's own entry, Minew style.

This module knows the wire formats on its own; it never imports the gateway. Fault injection: a
reader's clock can run off (``clock_offset_ms``), and :func:`publish_once` sends any bytes (oversize,
garbage, another reader's report) to a topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aiomqtt

logger = logging.getLogger(__name__)

RSSI_SAME_ROOM_DBM: Final = -52.0
RSSI_PER_ROOM_DB: Final = 20.0  # walls: a room further away is this much fainter
RSSI_NOISE_DB: Final = 3.0
RECONNECT_S: Final = 0.3

Tech = Literal["rfid", "ble"]
TimeStyle = Literal["iso", "epoch_us"]


@dataclass(slots=True)
class Asset:
    """A tagged asset: a UHF EPC (24 hex digits) or a BLE beacon MAC (12 hex digits), and the room it is in."""

    tag: str
    tech: Tech
    room: int


class Ward:
    """Rooms 0..n-1 along a corridor and the assets in them; an asset moves only to a neighbouring room."""

    def __init__(self, rooms: int, assets: Sequence[Asset], *, seed: int = 0) -> None:
        """Place the assets; ``seed`` makes the walk and the radio noise repeatable."""
        if rooms < 2:
            raise ValueError("a ward needs at least two rooms")
        self.rooms = rooms
        self.assets = list(assets)
        self.rng = random.Random(seed)

    @classmethod
    def with_assets(cls, rooms: int, rfid: int, ble: int, *, seed: int = 0) -> Ward:
        """A ward with ``rfid`` EPC-tagged and ``ble`` beacon-tagged assets spread over the rooms."""
        rng = random.Random(seed)
        assets = [Asset(f"E280116060000{i:011X}", "rfid", rng.randrange(rooms)) for i in range(rfid)]
        assets += [Asset(f"AC233F{0xA00000 + i:06X}", "ble", rng.randrange(rooms)) for i in range(ble)]
        return cls(rooms, assets, seed=seed)

    def move(self) -> Asset:
        """One asset is wheeled to the next room (and back at the corridor's ends)."""
        asset = self.rng.choice(self.assets)
        step = self.rng.choice((-1, 1))
        target = asset.room + step
        asset.room = target if 0 <= target < self.rooms else asset.room - step
        return asset

    def heard(self, room: int, tech: Tech) -> list[tuple[str, float]]:
        """(tag, RSSI dBm) of the assets a reader in ``room`` hears now: its own room and the next ones."""
        out = []
        for asset in self.assets:
            distance = abs(asset.room - room)
            if asset.tech != tech or distance > 1:
                continue
            rssi = RSSI_SAME_ROOM_DBM - RSSI_PER_ROOM_DB * distance + self.rng.gauss(0.0, RSSI_NOISE_DB)
            out.append((asset.tag, round(max(-100.0, min(-20.0, rssi)), 1)))
        return out

    async def run(self, move_every_s: float) -> None:
        """Move an asset every ``move_every_s`` until cancelled."""
        while True:
            await asyncio.sleep(move_every_s)
            asset = self.move()
            logger.debug("asset %s now in room %d", asset.tag, asset.room)


class _Publisher:
    """An MQTT device: connects, publishes a report every interval, reconnects when the broker goes away."""

    def __init__(self, host: str, port: int, topic: str, client_id: str) -> None:
        self.host = host
        self.port = port
        self.topic = topic
        self.client_id = client_id
        self.published = 0
        self.connected = False

    def report(self) -> bytes:
        """The payload the device publishes now."""
        raise NotImplementedError

    async def run(self, interval_s: float) -> None:
        """Publish until cancelled; reports due while the broker is down are lost, as on a real reader."""
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.client_id, keepalive=10) as client:
                    self.connected = True
                    while True:
                        await client.publish(self.topic, self.report(), qos=0)
                        self.published += 1
                        await asyncio.sleep(interval_s)
            except aiomqtt.MqttError as exc:
                if self.connected:
                    logger.info("%s: broker connection lost (%s)", self.client_id, exc)
                self.connected = False
                await asyncio.sleep(RECONNECT_S)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RfidReaderSim(_Publisher):
    """A fixed UHF RFID reader in one room, reporting the EPC tags it hears."""

    def __init__(self, ward: Ward, room: int, reader_name: str, mac: str, *, host: str, port: int, topic: str,
                 time_style: TimeStyle = "iso", clock_offset_ms: int = 0) -> None:
        """``reader_name`` and ``mac`` are what the reader calls itself in every report."""
        super().__init__(host, port, topic, f"sim-rfid-{reader_name}")
        self.ward = ward
        self.room = room
        self.reader_name = reader_name
        self.mac = mac
        self.time_style = time_style
        self.clock_offset_ms = clock_offset_ms

    def _time(self, ms: int) -> str | int:
        return _iso(ms) if self.time_style == "iso" else ms * 1000

    def report(self) -> bytes:
        """One report: every tag heard, first seen a little before it was last seen."""
        now = time.time_ns() // 1_000_000 + self.clock_offset_ms
        reads: list[dict[str, Any]] = []
        for tag, rssi in self.ward.heard(self.room, "rfid"):
            first = now - self.ward.rng.randrange(50, 900)
            reads.append({"epc": tag, "antennaPort": 1, "peakRssi": rssi, "firstSeenTimestamp": self._time(first),
                          "lastSeenTimestamp": self._time(now), "tagSeenCount": self.ward.rng.randrange(1, 12)})
        if not reads:
            reads.append({"isHeartBeat": True})
        return json.dumps({"reader_name": self.reader_name, "mac_address": self.mac, "tag_reads": reads}).encode()


class BleGatewaySim(_Publisher):
    """A BLE gateway in one room, reporting the beacons it hears as a JSON array led by its own entry."""

    def __init__(self, ward: Ward, room: int, mac: str, *, host: str, port: int, topic: str,
                 clock_offset_ms: int = 0) -> None:
        """``mac`` is the gateway's own MAC (12 hex digits), carried in its ``Gateway`` entry."""
        super().__init__(host, port, topic, f"sim-ble-{mac}")
        self.ward = ward
        self.room = room
        self.mac = mac
        self.clock_offset_ms = clock_offset_ms

    def report(self) -> bytes:
        """One scan window: the gateway entry, then an iBeacon entry per beacon heard."""
        now = time.time_ns() // 1_000_000 + self.clock_offset_ms
        entries: list[dict[str, Any]] = [{"timestamp": _iso(now), "type": "Gateway", "mac": self.mac,
                                          "gatewayFree": 87, "gatewayLoad": 0.42}]
        for index, (tag, rssi) in enumerate(self.ward.heard(self.room, "ble")):
            entries.append({"timestamp": _iso(now - self.ward.rng.randrange(0, 1000)), "type": "iBeacon",
                            "mac": tag, "bleName": "", "ibeaconUuid": "E2C56DB5DFFB48D2B060D0F5A71096E0",
                            "ibeaconMajor": self.room, "ibeaconMinor": index, "rssi": round(rssi),
                            "ibeaconTxPower": -59, "battery": 90})
        return json.dumps(entries).encode()


async def publish_once(host: str, port: int, topic: str, payload: bytes, *, qos: int = 0) -> None:
    """Publish one payload as a throwaway client (fault injection: garbage, oversize, another reader's report)."""
    async with aiomqtt.Client(host, port, identifier=f"sim-inject-{random.getrandbits(32):08x}") as client:
        await client.publish(topic, payload, qos=qos)
