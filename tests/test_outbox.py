"""The gateway's durable outbox: sequence numbers, release on commit, bounds and shedding."""

from __future__ import annotations

from pathlib import Path

import msgspec

from devices.contract import DeviceEvent, Observation, SeqRange, TagRead
from gateway.outbox import DATA_LANES, LANE_ALARM, LANE_TRENDS, Outbox, Pending, merge_ranges


def o(device: str = "mon-1") -> Observation:
    return Observation(device=device, stream="numerics", seq=0, ts=1, metric="MDC_TEMP", value=37.0, unit="Cel")


def alarm() -> DeviceEvent:
    return DeviceEvent(device="mon-1", stream="alarms", seq=0, ts=1, event="X", alarm_kind="technical",
                       priority="high")


def tag() -> TagRead:
    return TagRead(device="rdr-1", stream="tags", seq=0, ts=1, tag="T", rssi=-50)


def test_sequence_numbers_are_per_stream_and_survive_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    stamped, _ = box.accept([o(), o(), o("mon-2"), alarm()])
    assert [(i.device, i.stream, i.seq) for i in stamped] == [
        ("mon-1", "numerics", 1), ("mon-1", "numerics", 2), ("mon-2", "numerics", 1), ("mon-1", "alarms", 1)]
    box.close()
    again = Outbox(tmp_path / "o.db")
    stamped, _ = again.accept([o()])
    assert stamped[0].seq == 3
    assert again.depth() == 5


def items_of(runs: list[Pending]) -> list[dict[str, object]]:
    """The items stored in some runs, as dicts."""
    return [item for run in runs for item in msgspec.json.decode(b"[" + run.payload + b"]")]


def test_alarms_and_data_travel_in_separate_lanes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.accept([o(), alarm(), o()])
    box.accept([o()])
    alarms = box.pending(LANE_ALARM, 0, 10)
    data = box.pending(LANE_TRENDS, 0, 10)
    assert [i["kind"] for i in items_of(alarms)] == ["evt"]
    assert [i["seq"] for i in items_of(data)] == [1, 2, 3]
    assert [r.count for r in data] == [2, 1]  # one run per stream and accept
    assert box.pending(LANE_TRENDS, data[0].id, 10) == data[1:]
    assert box.pending(LANE_TRENDS, 0, 1) == data[:1]  # a run is never split, even past the limit


def test_release_deletes_only_runs_committed_in_full(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for size in (4, 2, 1, 3):  # runs 1-4, 5-6, 7, 8-10
        box.accept([o() for _ in range(size)])
    assert box.release([SeqRange("mon-1", "numerics", 1, 4), SeqRange("mon-1", "numerics", 6, 7)]) == 5
    left = [i["seq"] for i in items_of(box.pending(LANE_TRENDS, 0, 100))]
    assert left == [5, 6, 8, 9, 10]  # 5-6 was only half committed: it stays, whole
    assert box.depth() == 5
    assert box.release([SeqRange("mon-1", "numerics", 1, 4)]) == 0  # a repeated commit is harmless


def test_releases_find_their_rows_after_shedding_out_of_order_and_after_a_restart(tmp_path: Path) -> None:
    """A release finds its rows however the others came and went: shed, released out of order, a restart between."""
    box = Outbox(tmp_path / "o.db", max_rows=8)
    for size in (2, 2, 2, 2):  # runs 1-2, 3-4, 5-6, 7-8 of mon-1
        box.accept([o() for _ in range(size)])
    box.accept([o("mon-2")])  # one too many: the oldest run (1-2) is shed
    assert box.shed_total == 2
    assert box.release([SeqRange("mon-1", "numerics", 5, 6)]) == 2  # out of order: a run in the middle
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.release([SeqRange("mon-1", "numerics", 1, 4)]) == 2  # 1-2 is gone already; 3-4 leaves
    assert again.release([SeqRange("mon-1", "numerics", 7, 8), SeqRange("mon-2", "numerics", 1, 1)]) == 3
    assert again.depth() == 0
    assert again.pending(LANE_TRENDS, 0, 100) == []
    stamped, _ = again.accept([o(), o("mon-2")])
    assert [i.seq for i in stamped] == [9, 2]  # numbers go on across shedding, releases and the restart
    assert again.release([SeqRange("mon-1", "numerics", 9, 9), SeqRange("mon-2", "numerics", 2, 2)]) == 2


def test_commits_released_together_merge_only_ranges_that_touch(tmp_path: Path) -> None:
    """The gateway releases several commits in one go: a run committed in two halves leaves, a gap stays."""
    box = Outbox(tmp_path / "o.db")
    for size in (4, 2, 1, 3):  # runs 1-4, 5-6, 7, 8-10 of mon-1
        box.accept([o() for _ in range(size)])
    box.accept([o("mon-2") for _ in range(3)])  # run 1-3 of mon-2
    committed = [SeqRange("mon-1", "numerics", 6, 6), SeqRange("mon-2", "numerics", 1, 1),
                 SeqRange("mon-1", "numerics", 1, 5), SeqRange("mon-2", "numerics", 3, 3),
                 SeqRange("mon-1", "numerics", 9, 10)]
    assert merge_ranges(committed) == [("mon-1", "numerics", 1, 6), ("mon-1", "numerics", 9, 10),
                                       ("mon-2", "numerics", 1, 1), ("mon-2", "numerics", 3, 3)]
    assert box.release(committed) == 6  # 1-4 and 5-6; 8-10 and mon-2's 1-3 were not committed in full
    assert [(i["device"], i["seq"]) for i in items_of(box.pending(LANE_TRENDS, 0, 100))] == [
        ("mon-1", 7), ("mon-1", 8), ("mon-1", 9), ("mon-1", 10), ("mon-2", 1), ("mon-2", 2), ("mon-2", 3)]


def test_full_outbox_sheds_lowest_priority_first_and_never_alarms(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=6)
    for item in (alarm(), alarm(), o(), o(), tag(), tag()):
        box.accept([item])
    _, result = box.accept([o(), o(), alarm()])
    assert result.shed == 3
    kinds = [i["kind"] for lane in (LANE_ALARM, *DATA_LANES) for i in items_of(box.pending(lane, 0, 100))]
    assert kinds.count("evt") == 3  # every alarm kept
    assert kinds.count("tag") == 0  # tags went first
    assert kinds.count("obs") == 3  # then the oldest trend
    assert box.depth() == 6
    assert box.shed_total == 3
    box.close()
    assert Outbox(tmp_path / "o.db", max_rows=6).shed_total == 3


def test_a_sequence_number_is_never_given_twice_across_release_shedding_and_restarts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=4)
    box.accept([o(), o(), o()])  # 1-3
    assert box.release([SeqRange("mon-1", "numerics", 1, 3)]) == 3  # the outbox is empty again
    box.close()
    box = Outbox(tmp_path / "o.db", max_rows=4)
    stamped, _ = box.accept([o(), o()])
    assert [i.seq for i in stamped] == [4, 5]  # not 1 again, although no row is left to say so
    box.accept([o(), o(), o()])  # 6-8: sheds the oldest run (4-5)
    box.close()
    box = Outbox(tmp_path / "o.db", max_rows=4)
    assert box.next_seq("mon-1", "numerics") == 9
    assert box.shed_total == 2


def test_oldest_row_per_lane(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    assert box.oldest() == {}
    box.accept([o()])
    box.accept([alarm()])
    box.accept([o()])
    first, second = box.pending(LANE_TRENDS, 0, 10)
    assert box.oldest() == {LANE_TRENDS: first.id, LANE_ALARM: box.pending(LANE_ALARM, 0, 10)[0].id}
    box.release([SeqRange("mon-1", "numerics", 1, 1)])
    assert box.oldest()[LANE_TRENDS] == second.id
