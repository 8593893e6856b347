"""Alarm-load reports for the safety committee: pure arithmetic over alert episodes and limit changes.

What the Joint Commission's NPSG.06.01.01 asks a hospital to watch (DOMAIN.md section 5): alarms per bed
per day by rule and priority, time to acknowledge (median and 90th percentile, nearest rank), the share
of nuisance alerts (the condition ended within the rule's persistence window, or within N seconds of
the alert rising), the noisiest beds and rules, and every limit change. Reports name beds, rules and
staff ids, never patients.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from state.alerts import Episode
from state.audit import AuditRecord

DAY_MS: Final = 86_400_000
PRIORITIES: Final = ("high", "medium", "low")
LIMIT_ACTIONS: Final = frozenset({"alarm.ruleset.change", "alarm.override.change"})
FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "by_bed_day": ("day", "unit", "bed", "rule", "priority", "alarm_kind", "alerts"),
    "time_to_acknowledge": ("priority", "alerts", "acknowledged", "unacknowledged", "median_s", "p90_s"),
    "nuisance": ("rule", "alerts", "with_delay", "within_window", "within_window_share", "within_s",
                 "within_s_share"),
    "top_beds": ("bed", "unit", "alerts", "per_day"),
    "top_rules": ("rule", "alarm_kind", "alerts", *PRIORITIES),
    "limit_changes": ("at", "time", "actor", "role", "unit", "action", "object", "rule", "bed", "old", "new"),
}
"""The report's tables (each one CSV) and their columns."""


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in (0, 1]) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


def _iso(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).isoformat(timespec="seconds")


def _ack_stats(episodes: Iterable[Episode]) -> dict[str, Any]:
    episodes = list(episodes)
    waits = [e.acknowledged_at - e.raised_at for e in episodes if e.acknowledged_at is not None]
    return {"alerts": len(episodes), "acknowledged": len(waits), "unacknowledged": len(episodes) - len(waits),
            "median_s": _seconds(statistics.median(waits)) if waits else None,
            "p90_s": _seconds(percentile(waits, 0.9))}


def _nuisance_row(episodes: Sequence[Episode], within_ms: int) -> dict[str, Any]:
    windowed = [e for e in episodes if e.delay_ms > 0]
    in_window = sum(1 for e in windowed if e.cleared_at is not None and e.cleared_at - e.raised_at <= e.delay_ms)
    quick = sum(1 for e in episodes if e.cleared_at is not None and e.cleared_at - e.raised_at <= within_ms)
    return {"alerts": len(episodes), "with_delay": len(windowed), "within_window": in_window,
            "within_window_share": round(in_window / len(windowed), 4) if windowed else None,
            "within_s": quick, "within_s_share": round(quick / len(episodes), 4) if episodes else None}


def _change(record: AuditRecord, tz: ZoneInfo) -> dict[str, Any]:
    detail = record.detail
    return {"at": record.at, "time": _iso(record.at, tz), "actor": record.actor, "role": record.role,
            "unit": record.unit, "action": record.action, "object": record.object, "rule": detail.get("rule"),
            "bed": detail.get("bed"), "old": detail.get("old"), "new": detail.get("new")}


def alarm_load(episodes: Sequence[Episode], changes: Iterable[AuditRecord], *, beds: Mapping[str, str], start: int,
               end: int, tz: ZoneInfo, within_s: float = 30.0, top: int = 10) -> dict[str, Any]:
    """The report of the alerts that rose in ``[start, end)`` at ``beds`` (bed -> unit, the scope's beds).

    Alerts without a bed (a gateway, the delivery chain) count in the totals and timings, not per bed.
    Days are calendar days in ``tz``.
    """
    days = (end - start) / DAY_MS
    at_beds = [e for e in episodes if e.bed in beds]
    per_cell: Counter[tuple[str, str, str, str, str, str]] = Counter(
        (datetime.fromtimestamp(e.raised_at / 1000, UTC).astimezone(tz).date().isoformat(), beds[e.bed],
         e.bed, e.type, e.priority, e.alarm_kind) for e in at_beds if e.bed is not None)
    by_bed_day = [{"day": day, "unit": unit, "bed": bed, "rule": rule, "priority": priority, "alarm_kind": kind,
                   "alerts": n} for (day, unit, bed, rule, priority, kind), n in sorted(per_cell.items())]
    bed_counts = Counter(e.bed for e in at_beds if e.bed is not None)
    top_beds = [{"bed": bed, "unit": beds[bed], "alerts": n, "per_day": round(n / days, 2) if days else None}
                for bed, n in sorted(bed_counts.items(), key=lambda item: (-item[1], item[0]))[:top]]
    by_rule: dict[str, list[Episode]] = defaultdict(list)
    for episode in episodes:
        by_rule[episode.type].append(episode)
    top_rules = [{"rule": rule, "alarm_kind": found[0].alarm_kind, "alerts": len(found),
                  **{p: sum(1 for e in found if e.priority == p) for p in PRIORITIES}}
                 for rule, found in sorted(by_rule.items(), key=lambda item: (-len(item[1]), item[0]))[:top]]
    within_ms = int(within_s * 1000)
    return {
        "period": {"start": start, "end": end, "start_time": _iso(start, tz), "end_time": _iso(end, tz),
                   "days": round(days, 4), "timezone": str(tz.key)},
        "units": sorted(set(beds.values())), "beds": len(beds),
        "totals": {"alerts": len(episodes), "at_beds": len(at_beds),
                   "physiological": sum(1 for e in episodes if e.alarm_kind != "technical"),
                   "technical": sum(1 for e in episodes if e.alarm_kind == "technical"),
                   "per_bed_per_day": round(len(at_beds) / (len(beds) * days), 3) if beds and days else None,
                   **{p: sum(1 for e in episodes if e.priority == p) for p in PRIORITIES}},
        "by_bed_day": by_bed_day,
        "time_to_acknowledge": {"all": _ack_stats(episodes),
                                **{p: _ack_stats(e for e in episodes if e.priority == p) for p in PRIORITIES}},
        "nuisance": {"within_s": within_s, "all": _nuisance_row(episodes, within_ms),
                     "by_rule": [{"rule": rule, **_nuisance_row(found, within_ms)}
                                 for rule, found in sorted(by_rule.items())]},
        "top_beds": top_beds,
        "top_rules": top_rules,
        "limit_changes": [_change(r, tz) for r in changes if r.action in LIMIT_ACTIONS],
    }


def to_csv(report: Mapping[str, Any], name: str) -> str:
    """One table of a report (see :data:`FIELDS`) as CSV text with a header."""
    if name == "time_to_acknowledge":
        rows = [{"priority": p, **stats} for p, stats in report[name].items()]
    elif name == "nuisance":
        rows = [{"rule": "(all)", **report[name]["all"]}, *report[name]["by_rule"]]
    elif name == "limit_changes":
        rows = [{**row, "old": json.dumps(row["old"], sort_keys=True), "new": json.dumps(row["new"], sort_keys=True)}
                for row in report[name]]
    else:
        rows = list(report[name])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS[name])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
