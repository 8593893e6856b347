"""``wardlink bench location``: the workload is realistic and the engine follows it (no timing asserted)."""

from __future__ import annotations

from wardlink import bench
from wardlink.bench_location import run, workload


def test_workload_beacons_every_asset_and_moves_some() -> None:
    rooms, readers, reads, true_moves = workload(assets=50, floors=2, rooms=10, reads=5_000, move_every=20)
    assert len(rooms) == len(readers) == 20
    assert {tag for tag, *_ in reads} == {f"E28011606000{i:012X}" for i in range(50)}
    assert all(reader in readers for _, reader, _, _ in reads)
    assert [ts for *_, ts in reads] == sorted(ts for *_, ts in reads)
    assert true_moves > 0


def test_bench_location_reports_rates_and_follows_only_real_moves() -> None:
    figures = bench.BENCHES["location"](True)
    counts = ("assets", "reads", "true_moves", "placements", "moves")
    again = run(quick=True)
    assert {k: figures[k] for k in counts} == {k: again[k] for k in counts}  # the same seeded workload
    assert figures["placements"] == figures["assets"]  # every asset placed once
    assert 0 < figures["moves"] <= figures["true_moves"]  # real moves followed, none invented by noise
    assert figures["engine_reads_per_s"] > 0
    assert figures["baseline_dict_reads_per_cpu_s"] > 0
