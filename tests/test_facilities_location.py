"""The location engine: placement, no flapping between neighbours, real moves followed, speed cap, lost."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.contract import TagRead
from devices.site import Room
from facilities.location import LocationEngine, LocationEvent, LocationSettings, corridor_distance

ROOMS = [Room("W3-R01", unit="W3", zone="W3", floor="3"), Room("W3-R02", unit="W3", zone="W3", floor="3"),
         Room("W3-R03", unit="W3", zone="W3", floor="3"), Room("ICU-R01", unit="ICU", zone="ICU", floor="2")]
READERS = {"ra": "W3-R01", "rb": "W3-R02", "rc": "W3-R03", "ricu": "ICU-R01"}
T0 = 1_767_225_600_000


def engine(**overrides: float) -> LocationEngine:
    located = LocationEngine(ROOMS, READERS, LocationSettings(**overrides))  # type: ignore[arg-type]
    located.track("pump-1", "TAG1", "infusion_pump")
    return located


def feed(located: LocationEngine, reads: list[tuple[str, float, int]]) -> list[LocationEvent]:
    events: list[LocationEvent] = []
    for reader, rssi, ts in reads:
        located.read("TAG1", reader, rssi, ts, events)
    return events


def settle(located: LocationEngine, reader: str, start: int, tag: str = "TAG1", rssi: float = -50.0) -> int:
    """Reads of one reader, a second apart, until the asset is placed (6 reads over 5 s); the last read's ts."""
    events: list[LocationEvent] = []
    for i in range(6):
        located.read(tag, reader, rssi, start + i * 1000, events)
    assert [e.kind for e in events] == ["entered"]
    return start + 5000


def alternating(a: tuple[str, float], b: tuple[str, float], start: int, count: int, every_ms: int = 1000,
                noise: list[float] | None = None) -> list[tuple[str, float, int]]:
    """Two readers reporting the tag in turn, ``every_ms`` apart, with optional noise per read."""
    out = []
    for i in range(count):
        reader, level = a if i % 2 == 0 else b
        out.append((reader, level + (noise[i] if noise else 0.0), start + i * every_ms))
    return out


def test_sustained_reads_place_the_asset_with_the_whole_contract() -> None:
    located = engine()
    reads = [TagRead(device="rb", stream="tags", seq=i, ts=T0 + i * 1000, tag="TAG1", rssi=-52.0) for i in range(6)]
    assert located.process(reads[:5]) == []  # 3 reads, but not yet spanning 5 s: not placed
    assert located.location("pump-1") is None
    events = located.process(reads[5:])
    assert [(e.kind, e.room, e.zone, e.floor, e.source) for e in events] == [("entered", "W3-R02", "W3", "3", "rb")]
    where = located.location("pump-1")
    assert where is not None
    assert (where.room, where.zone, where.floor, where.since, where.last_seen, where.source, where.lost) == (
        "W3-R02", "W3", "3", T0 + 5000, T0 + 5000, "rb", False)
    assert 0.5 < where.confidence <= 1.0  # strong and unchallenged
    assert located.take_dirty() == [where]
    assert located.take_dirty() == []


def test_halfway_between_two_readers_it_is_placed_after_the_staleness_bound_with_low_confidence() -> None:
    located = engine()
    events = feed(located, alternating(("ra", -65.0), ("rb", -66.0), T0, 40))
    assert [(e.kind, e.room, e.ts) for e in events] == [("entered", "W3-R01", T0 + 15_000)]
    assert events[0].confidence < 0.5  # a 1 dB lead, a middling signal


def test_a_neighbour_heard_first_never_places_the_asset() -> None:
    # The tag stands in room 1. Room 2's reader happens to report first, faintly (it hears the tag
    # through the wall); room 1's reader reports half a second later, loudly. The first placement must
    # wait for the same sustained evidence as a move, so the asset is never shown next door.
    located = engine()
    reads = []
    for i in range(12):
        reads.append(("rb", -76.0 + (i % 3), T0 + i * 1000))
        reads.append(("ra", -50.0 - (i % 2), T0 + i * 1000 + 500))
    events = feed(located, reads)
    assert [(e.kind, e.room) for e in events] == [("entered", "W3-R01")]
    assert events[0].ts >= T0 + 500 + 5_000  # 3 reads spanning 5 s with room 1 ahead by the margin
    where = located.location("pump-1")
    assert where is not None
    assert (where.room, where.since, where.source) == ("W3-R01", events[0].ts, "ra")
    assert where.confidence > 0.5


def test_unknown_tags_and_readers_are_counted_and_ignored() -> None:
    located = engine()
    assert located.process([TagRead(device="ra", stream="t", seq=1, ts=T0, tag="NOT-OURS", rssi=-50.0),
                            TagRead(device="rdr-nowhere", stream="t", seq=2, ts=T0, tag="TAG1", rssi=-50.0)]) == []
    assert (located.unknown_tags, located.unknown_readers, located.location("pump-1")) == (1, 1, None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-2.9, max_value=2.9), min_size=50, max_size=400),
       st.integers(min_value=200, max_value=5000))
def test_no_flapping_between_two_adjacent_readers_within_the_margin(noise: list[float], every_ms: int) -> None:
    # Halfway between two readers, equal mean signal: bounded noise can never open a 6 dB lead.
    located = engine()
    events = feed(located, alternating(("ra", -65.0), ("rb", -65.0), T0, len(noise), every_ms, noise))
    # No room leads: placed once, after the staleness bound (15 s) of reads, then never moved.
    assert [e.kind for e in events] == (["entered"] if (len(noise) - 1) * every_ms >= 15_000 else [])


def test_no_flapping_with_gaussian_noise_over_a_day_of_reads() -> None:
    rng = random.Random(7)
    noise = [rng.gauss(0.0, 3.0) for _ in range(50_000)]  # 2 reads a second for ~7 hours
    located = engine()
    events = feed(located, alternating(("ra", -65.0), ("rb", -65.0), T0, len(noise), 500, noise))
    assert [e.kind for e in events] == ["entered"]


def test_a_real_move_is_followed_within_seconds() -> None:
    rng = random.Random(3)
    located = engine()
    before = alternating(("ra", -52.0), ("rb", -72.0), T0, 30, 1000, [rng.gauss(0, 3) for _ in range(30)])
    moved_at = T0 + 30_000
    after = alternating(("ra", -72.0), ("rb", -52.0), moved_at, 60, 1000, [rng.gauss(0, 3) for _ in range(60)])
    events = feed(located, before + after)
    assert [(e.kind, e.room) for e in events] == [("entered", "W3-R01"), ("left", "W3-R01"), ("entered", "W3-R02")]
    left, entered = events[1], events[2]
    assert left.ts == entered.ts
    assert moved_at + 5_000 <= entered.ts <= moved_at + 20_000  # sustained 5 s, then followed
    where = located.location("pump-1")
    assert where is not None
    assert (where.room, where.since, where.source) == ("W3-R02", entered.ts, "rb")


def test_a_walk_along_the_corridor_enters_every_room_in_order() -> None:
    located = engine()
    reads = []
    ts = T0
    for reader in ("ra", "rb", "rc", "rb"):  # a reader hears only its own room; 20 s in each
        for _ in range(20):
            reads.append((reader, -50.0, ts))
            ts += 1000
    events = feed(located, reads)
    assert [(e.kind, e.room) for e in events if e.kind == "entered"] == [
        ("entered", "W3-R01"), ("entered", "W3-R02"), ("entered", "W3-R03"), ("entered", "W3-R02")]


def test_implausible_speed_waits_until_the_move_could_have_happened() -> None:
    # The ICU room is another floor: 40 m + walks, at 3 m/s at least ~16 s. A reader there hearing the
    # tag strongly at once (a tag read through a floor, a misplaced reader) does not move the asset early.
    located = engine()
    last = settle(located, "ra", T0)
    events = feed(located, [("ricu", -40.0, last + 1000 + i * 1000) for i in range(30)])
    entered = [e for e in events if e.kind == "entered"]
    assert len(entered) == 1
    assert entered[0].room == "ICU-R01"
    distance = corridor_distance(ROOMS)("W3-R01", "ICU-R01")
    assert distance is not None
    assert entered[0].ts - last >= distance / 3.0 * 1000


def test_stale_reads_of_the_old_room_do_not_hold_the_asset() -> None:
    located = engine(stale_ms=5_000)
    last = settle(located, "ra", T0)
    # 10 s later only rb hears it, faintly: the old room's signal is stale, so no margin is needed.
    events = feed(located, [("rb", -85.0, last + 10_000 + i * 1000) for i in range(8)])
    assert [(e.kind, e.room) for e in events] == [("left", "W3-R01"), ("entered", "W3-R02")]


def test_lost_after_the_type_timeout_then_found_again() -> None:
    located = LocationEngine(ROOMS, READERS, LocationSettings(lost_after_ms=60_000,
                                                              lost_after_ms_by_type={"wheelchair": 10_000}))
    located.track("pump-1", "TAG1", "infusion_pump")
    located.track("wc-1", "TAG2", "wheelchair")
    settle(located, "ra", T0 - 5000)
    settle(located, "rb", T0 - 5000, tag="TAG2")
    assert located.tick(T0 + 9_999) == []
    lost = located.tick(T0 + 10_000)
    assert [(e.asset, e.kind, e.room) for e in lost] == [("wc-1", "lost", "W3-R02")]
    assert located.tick(T0 + 20_000) == []  # lost once
    where = located.location("wc-1")
    assert where is not None
    assert where.lost
    assert where.last_seen == T0
    assert [(e.asset, e.kind) for e in located.tick(T0 + 60_000)] == [("pump-1", "lost")]
    found: list[LocationEvent] = []
    located.read("TAG2", "rc", -50.0, T0 + 70_000, found)
    assert found == []  # heard again: placed on the same evidence as a first placement
    where = located.location("wc-1")
    assert where is not None
    assert (where.lost, where.last_seen) == (True, T0 + 70_000)
    for i in range(1, 6):
        located.read("TAG2", "rc", -50.0, T0 + 70_000 + i * 1000, found)
    assert [(e.kind, e.room) for e in found] == [("entered", "W3-R03")]
    where = located.location("wc-1")
    assert where is not None
    assert not where.lost
    assert where.since == T0 + 75_000


def test_restore_does_not_enter_the_room_again() -> None:
    first = engine()
    last = settle(first, "ra", T0)
    stored = first.location("pump-1")
    assert stored is not None
    second = engine()
    second.restore(stored)
    assert feed(second, [("ra", -51.0, last + 1000)]) == []
    where = second.location("pump-1")
    assert where is not None
    assert where.since == last
    assert where.last_seen == last + 1000


def test_retagging_keeps_the_asset_and_drops_the_old_tag() -> None:
    located = engine()
    settle(located, "ra", T0)
    located.track("pump-1", "TAG9", "infusion_pump")
    assert located.tracked() == {"TAG9": "pump-1"}
    events: list[LocationEvent] = []
    located.read("TAG1", "rb", -40.0, T0 + 1000, events)
    assert events == []
    assert located.unknown_tags == 1
