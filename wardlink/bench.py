"""Benchmarks, as verbs of ``wardlink bench``: each returns a flat dict of figures.

Machines are noisy, so every benchmark also measures a baseline in the same run and reports its
figures as ratios to it. Nothing here asserts a speed; tests only check the figures are produced.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devices.contract import Batch, Observation, decode_batch, encode

log = logging.getLogger(__name__)


def _sample_batch(n: int) -> bytes:
    items = [Observation(device=f"mon-{i % 100:03d}", stream="numerics", seq=i, ts=1_700_000_000_000 + i,
                         metric="MDC_PULS_OXIM_SAT_O2", value=95.0 + (i % 5), unit="%", code=150456,
                         bed=f"ICU-{i % 100:02d}", device_ts=1_700_000_000_000 + i) for i in range(n)]
    return encode(Batch(gateway="gw-bench", sent=1_700_000_000_000, items=list(items)))


def _rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()  # warm up
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


def contract(quick: bool = False) -> dict[str, float]:
    """Decode a typed batch of 1,000 observations: msgspec (our fast path) vs pydantic vs untyped json."""
    from pydantic import BaseModel  # a dependency of FastAPI, so always installed

    payload = _sample_batch(1000)
    seconds = 0.3 if quick else 2.0

    class PObservation(BaseModel):
        kind: str
        device: str
        stream: str
        seq: int
        ts: int
        metric: str
        value: float
        unit: str
        code: int = 0
        bed: str | None = None
        device_ts: int | None = None
        flags: int = 0

    class PBatch(BaseModel):
        gateway: str
        sent: int
        items: list[PObservation]
        v: int = 1

    baseline = _rate(lambda: json.loads(payload), seconds)
    fast = _rate(lambda: decode_batch(payload), seconds)
    slow = _rate(lambda: PBatch.model_validate_json(payload), seconds)
    return {
        "baseline_json_loads_items_per_s": baseline * 1000,
        "msgspec_items_per_s": fast * 1000,
        "pydantic_items_per_s": slow * 1000,
        "msgspec_vs_pydantic": fast / slow,
        "msgspec_vs_baseline": fast / baseline,
        "pydantic_vs_baseline": slow / baseline,
    }


def store(quick: bool = False) -> dict[str, float]:
    """Embedded store candidates (SQLite, DuckDB): append rate and a 24 h downsampling query."""
    from storage.bench import run

    return run(quick=quick)


def gateway(quick: bool = False) -> dict[str, float]:
    """Readings/s of every driver kind through parse, outbox and uplink, beside the raw broker publish rate."""
    from wardlink.bench_gateway import run

    return run(quick=quick)


def ingest(quick: bool = False) -> dict[str, float]:
    """Observations/s of one ingest worker from Mosquitto into each store, beside a bare subscriber's rate."""
    from wardlink.bench_ingest import run

    return run(quick=quick)


def alerts(quick: bool = False) -> dict[str, float]:
    """Reading on the bus to the nurse's WebSocket frame, p50/p99/max, idle and under 50,000 observations/s."""
    from wardlink.bench_alerts import run

    return run(quick=quick)


BENCHES: dict[str, Callable[[bool], dict[str, float]]] = {"contract": contract, "store": store, "gateway": gateway,
                                                          "ingest": ingest, "alerts": alerts}


def location(quick: bool = False) -> dict[str, float]:
    """Tag reads/s resolved to rooms by the location engine on one core, beside a plain dict update per read."""
    from wardlink.bench_location import run

    return run(quick=quick)


BENCHES["location"] = location


def table(name: str, figures: dict[str, float]) -> str:
    """A readable two-column table of figures."""
    if name == "store":
        from storage.bench import table as store_table

        return store_table(figures)
    if name == "gateway":
        from wardlink.bench_gateway import table as gateway_table

        return gateway_table(figures)
    if name == "ingest":
        from wardlink.bench_ingest import table as ingest_table

        return ingest_table(figures)
    if name == "alerts":
        from wardlink.bench_alerts import table as alerts_table

        return alerts_table(figures)
    width = max(len(k) for k in figures)
    lines = [f"wardlink bench {name}", "-" * (width + 16)]
    lines += [f"{k:<{width}}  {v:>14,.2f}" for k, v in figures.items()]
    return "\n".join(lines)


# -- wardlink bench all -----------------------------------------------------------------------------------------------
BLOCK_START = "<!-- bench:all:start -->"
BLOCK_END = "<!-- bench:all:end -->"


def _is_ratio(name: str) -> bool:
    return name.endswith("_x") or "_vs_" in name


def _is_baseline(name: str) -> bool:
    return name.startswith("baseline") or name.startswith("idle_")


def ratio_of(name: str, figures: dict[str, float]) -> float | None:
    """A figure's ratio to its same-run baseline, as the benchmark states it or by the figure's unit; else None.

    In order: the benchmark's own ``<figure>_x``; its ``<prefix>_vs_baseline`` for the prefix's wall-clock rate;
    ``loaded_*`` over the same figure ``idle_*`` (alerts); a per-CPU-second rate over the one baseline in that
    unit. A baseline is 1.
    """
    if _is_baseline(name):
        return 1.0
    if f"{name}_x" in figures:
        return figures[f"{name}_x"]
    if name.endswith("_per_s") and not name.endswith("_per_cpu_s"):
        for key, value in figures.items():
            if key.endswith("_vs_baseline") and name.startswith(key.removesuffix("vs_baseline")):
                return value
    if name.startswith("loaded_") and figures.get("idle_" + name.removeprefix("loaded_")):
        return figures[name] / figures["idle_" + name.removeprefix("loaded_")]
    if name.endswith("_per_cpu_s"):
        bases = [k for k in figures if k.startswith("baseline") and k.endswith("_per_cpu_s")]
        if len(bases) == 1 and figures[bases[0]]:
            return figures[name] / figures[bases[0]]
    return None


def machine() -> str:
    """One paragraph on the machine and the versions the figures were measured with."""
    import os
    import platform
    import sqlite3
    import subprocess
    from importlib import metadata

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5,  # noqa: S607
                                   check=False).stdout.splitlines()[0].split()[-1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        mosquitto = "not found"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,  # noqa: S607
                                timeout=5, check=False).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    return (f"Machine: {os.cpu_count()} vCPUs ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, msgspec {version('msgspec')}, pydantic {version('pydantic')}, "
            f"SQLite {sqlite3.sqlite_version}, DuckDB {version('duckdb')}, paho-mqtt {version('paho-mqtt')}, "
            f"Mosquitto {mosquitto}; commit {commit}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


def run_all(quick: bool = False) -> dict[str, dict[str, float] | str]:
    """Every benchmark of BENCHES in turn: its figures, or why it failed (the others still run)."""
    results: dict[str, dict[str, float] | str] = {}
    for name, bench in BENCHES.items():
        started = time.perf_counter()
        try:
            results[name] = bench(quick)
        except (OSError, RuntimeError, ValueError, TimeoutError, ImportError) as exc:
            results[name] = f"failed: {exc}"
        log.info("bench all: %s done in %.0f s", name, time.perf_counter() - started)
    return results


def summary(results: dict[str, dict[str, float] | str], quick: bool) -> str:
    """The Markdown block ``bench all`` writes: machine header and every figure with its same-run baseline ratio."""
    lines = [BLOCK_START, "", "## Summary of every benchmark (`wardlink bench all`)", "",
             ("Written by `wardlink bench all" + (" --quick" if quick else "") + " --write docs/benchmarks.md` "
              "(`make bench-all`); do not edit by hand." + (" A quick (smoke) run: short measurements, noisy figures."
                                                           if quick else "")),
             "", machine(), "",
             "A ratio compares a figure with the baseline measured in the same run (the benchmark's own, a "
             "`baseline*` figure = 1.00; alerts: loaded over idle); the sections below say what each baseline is.", "",
             "| benchmark | figure | value | ratio to baseline |", "|---|---|---:|---:|"]
    for name, figures in results.items():
        if isinstance(figures, str):
            lines.append(f"| {name} | {figures} | | |")
            continue
        for key, value in figures.items():
            if _is_ratio(key):
                continue
            ratio = ratio_of(key, figures)
            shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
            lines.append(f"| {name} | `{key}` | {shown} | {'' if ratio is None else f'{ratio:.3g}'} |")
    lines += ["", BLOCK_END]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    """Replace the marked block of ``path`` (or put it before the first section) and keep everything else."""
    text = path.read_text(encoding="utf-8")
    if BLOCK_START in text and BLOCK_END in text:
        head, rest = text.split(BLOCK_START, 1)
        text = head + block + rest.split(BLOCK_END, 1)[1]
    else:
        at = text.find("\n## ")
        text = text + "\n" + block + "\n" if at < 0 else text[:at + 1] + block + "\n\n" + text[at + 1:]
    path.write_text(text, encoding="utf-8")
