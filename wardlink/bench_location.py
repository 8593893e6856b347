"""``wardlink bench location``: tag reads resolved to rooms per second on one core, beside a dict update.

A hospital floor plan of ``floors`` x ``rooms`` rooms, one reader per room, and ``assets`` tagged assets.
Every asset beacons every 5 s (a 2,000-bed hospital: 14,000 assets, 2,800 reads/s), heard by the
reader of its room (loud) and often by those of the neighbouring rooms (faint), with Gaussian noise;
now and then an asset is wheeled to the next room, so the engine also does real moves. The reads are
built before timing; the timed loop feeds them to :meth:`LocationEngine.read` one by one, as the
facilities service does. The same-run baseline is the least any tracker must do per read: one dict
update keyed by tag (last reader, RSSI, time). Figures are per wall second and per CPU second of this
process (one thread: one core).
"""

from __future__ import annotations

import random

from devices.site import Room
from facilities.location import LocationEngine, LocationEvent
from wardlink.bench_support import Clock

RSSI_SAME_ROOM = -52.0
RSSI_NEIGHBOUR = -72.0
NOISE_DB = 3.0
BEACON_MS = 5_000


def workload(assets: int, floors: int, rooms: int, reads: int, move_every: int,
             seed: int = 1) -> tuple[list[Room], dict[str, str], list[tuple[str, str, float, int]], int]:
    """Rooms, readers (one per room) and ``reads`` reads ``(tag, reader, rssi, ts)``: each asset beacons every
    :data:`BEACON_MS`, heard by its own room's reader (95 %) and each neighbouring room's (50 %, fainter);
    1 in ``move_every`` beacons follows a move to the next room."""
    rng = random.Random(seed)
    room_list = [Room(f"F{f}-R{r:03d}", floor=f"F{f}", zone=f"F{f}") for f in range(floors) for r in range(rooms)]
    readers = {f"rdr-{room.id}": room.id for room in room_list}
    place = [rng.randrange(rooms) for _ in range(assets)]
    floor = [rng.randrange(floors) for _ in range(assets)]
    tags = [f"E28011606000{i:012X}" for i in range(assets)]
    out: list[tuple[str, str, float, int]] = []
    start = 1_767_225_600_000
    order = list(range(assets))
    true_moves = 0
    for cycle in range(max(1, reads // (2 * assets))):  # every asset beacons once per cycle of BEACON_MS
        rng.shuffle(order)
        for k, i in enumerate(order):
            if rng.randrange(move_every) == 0:
                moved = min(rooms - 1, max(0, place[i] + rng.choice((-1, 1))))
                true_moves += moved != place[i]
                place[i] = moved
            ts = start + cycle * BEACON_MS + k * BEACON_MS // assets
            for heard, level, chance in ((place[i], RSSI_SAME_ROOM, 0.95), (place[i] - 1, RSSI_NEIGHBOUR, 0.5),
                                         (place[i] + 1, RSSI_NEIGHBOUR, 0.5)):
                if 0 <= heard < rooms and rng.random() < chance:
                    out.append((tags[i], f"rdr-F{floor[i]}-R{heard:03d}", level + rng.gauss(0.0, NOISE_DB), ts))
    return room_list, readers, out, true_moves


def run(quick: bool = False) -> dict[str, float]:
    """Reads per second through the location engine and through the dict-update baseline."""
    assets, reads = (2_000, 100_000) if quick else (14_000, 1_000_000)
    rooms, readers, stream, true_moves = workload(assets, floors=4, rooms=60, reads=reads, move_every=100)
    engine = LocationEngine(rooms, readers)
    for i in range(assets):
        engine.track(f"asset-{i}", f"E28011606000{i:012X}", "infusion_pump")
    events: list[LocationEvent] = []
    read = engine.read
    clock = Clock()
    for tag, reader, rssi, ts in stream:
        read(tag, reader, rssi, ts, events)
    engine_rate = clock.rate(len(stream))
    last: dict[str, tuple[str, float, int]] = {}
    clock = Clock()
    for tag, reader, rssi, ts in stream:
        last[tag] = (reader, rssi, ts)
    baseline = clock.rate(len(stream))
    moves = sum(1 for e in events if e.kind == "left")
    return {
        "assets": float(assets),
        "reads": float(len(stream)),
        "engine_reads_per_s": round(engine_rate.per_s),
        "engine_reads_per_cpu_s": round(engine_rate.per_cpu_s),
        "engine_us_per_read": round(engine_rate.cpu_s / len(stream) * 1e6, 2),
        "baseline_dict_reads_per_s": round(baseline.per_s),
        "baseline_dict_reads_per_cpu_s": round(baseline.per_cpu_s),
        "engine_vs_baseline": round(engine_rate.per_cpu_s / max(baseline.per_cpu_s, 1e-9), 4),
        "true_moves": float(true_moves),
        "placements": float(sum(1 for e in events if e.kind == "entered") - moves),
        "moves": float(moves),
        "target_reads_per_s": 20_000.0,
    }
