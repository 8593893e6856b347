"""Benchmarks, as verbs of ``wardlink bench``: each returns a flat dict of figures.

Machines are noisy, so every benchmark also measures a baseline in the same run and reports its
figures as ratios to it. Nothing here asserts a speed; tests only check the figures are produced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from devices.contract import Batch, Observation, decode_batch, encode


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
