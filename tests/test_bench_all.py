"""``wardlink bench all``: the summary block, its baseline ratios and its place in docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wardlink import bench, cli


def test_ratios_come_from_the_benchmark_or_the_same_run_baseline() -> None:
    store = {"baseline.append_rows_s": 100.0, "sqlite.append_rows_s": 50.0, "sqlite.append_rows_s_x": 0.5}
    assert bench.ratio_of("sqlite.append_rows_s", store) == 0.5
    assert bench.ratio_of("baseline.append_rows_s", store) == 1.0
    gateway = {"baseline_broker_obs_per_s": 10.0, "hl7_full_per_s": 5.0, "hl7_full_per_cpu_s": 8.0,
               "hl7_full_vs_baseline": 0.5}
    assert bench.ratio_of("hl7_full_per_s", gateway) == 0.5
    assert bench.ratio_of("hl7_full_per_cpu_s", gateway) is None  # no per-CPU baseline in this run
    alerts = {"idle_data_bus_p99_ms": 20.0, "loaded_data_bus_p99_ms": 50.0}
    assert bench.ratio_of("loaded_data_bus_p99_ms", alerts) == 2.5
    location = {"baseline_dict_reads_per_cpu_s": 100.0, "engine_reads_per_cpu_s": 10.0, "moves": 3.0}
    assert bench.ratio_of("engine_reads_per_cpu_s", location) == pytest.approx(0.1)
    assert bench.ratio_of("moves", location) is None


def test_the_block_replaces_only_itself(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nIntro.\n\n## Contract\n\nHand-written.\n", encoding="utf-8")
    results: dict[str, dict[str, float] | str] = {"contract": {"baseline_x_per_s": 2.0, "fast_per_s": 4.0,
                                                               "fast_vs_baseline": 2.0}, "store": "failed: no disk"}
    bench.write_block(doc, bench.summary(results, quick=True))
    first = doc.read_text(encoding="utf-8")
    assert first.index(bench.BLOCK_START) < first.index("## Contract")  # before the hand-written sections
    assert "| contract | `fast_per_s` | 4 | 2 |" in first
    assert "| store | failed: no disk | | |" in first
    assert "fast_vs_baseline" not in first  # a ratio is a column, not a row
    assert "Machine:" in first
    bench.write_block(doc, bench.summary({"contract": {"fast_per_s": 8.0}}, quick=False))
    second = doc.read_text(encoding="utf-8")
    assert second.count(bench.BLOCK_START) == 1
    assert "| contract | `fast_per_s` | 8 |  |" in second
    assert second.endswith("## Contract\n\nHand-written.\n")


def test_the_command_runs_every_benchmark_and_writes_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, bool]] = []

    def fake(name: str) -> Callable[[bool], dict[str, float]]:
        def run(quick: bool) -> dict[str, float]:
            ran.append((name, quick))
            return {"baseline_per_s": 1.0, "figure_per_s": 3.0}
        return run

    monkeypatch.setattr(bench, "BENCHES", {name: fake(name) for name in bench.BENCHES})
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## A section\n", encoding="utf-8")
    assert cli.main(["bench", "all", "--quick", "--write", str(doc)]) == 0
    assert ran == [(name, True) for name in bench.BENCHES]
    assert doc.read_text(encoding="utf-8").count("`figure_per_s`") == len(bench.BENCHES)


def test_the_benchmarks_page_and_the_readme_link_it() -> None:
    root = Path(__file__).resolve().parent.parent
    assert "wardlink bench all" in (root / "README.md").read_text(encoding="utf-8")
    assert "docs/benchmarks.md" in (root / "README.md").read_text(encoding="utf-8")
