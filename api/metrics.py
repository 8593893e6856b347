"""Prometheus text exposition (format 0.0.4) of every worker's ServiceStatus and the API's own view.

Services publish ints only (ServiceStatus.counters); their keys follow :mod:`ingest.metrics`: ``name``
is a counter (exposed as ``wardlink_<service>_<name>_total``), ``g_name`` a gauge, and
``h_name_le_<bound>`` / ``h_name_sum`` / ``h_name_count`` a cumulative histogram. Every service sample
carries an ``instance`` label. Prometheus computes rates from the counters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from api.view import LiveView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STALE_MS = 20_000
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(slots=True)
class _Family:
    kind: str
    help: str
    samples: list[str] = field(default_factory=list)


def _name(text: str) -> str:
    return _INVALID.sub("_", text)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}" if pairs else ""


class _Exposition:
    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}

    def add(self, family: str, kind: str, help_: str, value: float, labels: dict[str, str],
            suffix: str = "") -> None:
        entry = self.families.setdefault(family, _Family(kind, help_))
        entry.samples.append(f"{family}{suffix}{_labels(labels)} {value:g}" if isinstance(value, float)
                             else f"{family}{suffix}{_labels(labels)} {value}")

    def text(self) -> str:
        lines: list[str] = []
        for name, family in self.families.items():
            lines.append(f"# HELP {name} {family.help}")
            lines.append(f"# TYPE {name} {family.kind}")
            lines.extend(family.samples)
        return "\n".join(lines) + "\n"


def _order(entry: tuple[str, int]) -> tuple[str, float, str]:
    """Sort histogram buckets by bound (then sum, count) and everything else by name."""
    key = entry[0]
    if key.startswith("h_") and "_le_" in key:
        name, bound = key.rsplit("_le_", 1)
        return (name, float("inf") if bound == "inf" else float(bound), "")
    if key.startswith("h_"):
        name, _, part = key.rpartition("_")
        return (name, float("inf"), part)
    return (key, 0.0, "")


def render(view: LiveView, now: int) -> str:
    """The metrics of every service and gateway last heard on the bus, and of the API itself."""
    out = _Exposition()
    for status in sorted(view.services.values(), key=lambda s: (s.service, s.instance)):
        service = _name(status.service)
        base = {"instance": status.instance}
        up = int(status.state == "online" and now - status.ts <= STALE_MS)
        out.add("wardlink_service_up", "gauge", "1 when the service is online and heard recently", up,
                {"service": status.service, **base})
        out.add("wardlink_service_last_heard_seconds", "gauge", "seconds since the last status",
                max(0, now - status.ts) / 1000, {"service": status.service, **base})
        if status.lag_ms is not None:
            out.add(f"wardlink_{service}_lag_ms", "gauge", "age of the oldest reading of the last stored batch",
                    status.lag_ms, base)
        for key, value in sorted(status.counters.items(), key=_order):
            if key.startswith("g_"):
                out.add(f"wardlink_{service}_{_name(key[2:])}", "gauge", f"{status.service} gauge {key[2:]}", value,
                        base)
            elif key.startswith("h_"):
                rest = key[2:]
                if "_le_" in rest:
                    name, bound = rest.rsplit("_le_", 1)
                    le = "+Inf" if bound == "inf" else bound
                    out.add(f"wardlink_{service}_{_name(name)}", "histogram", f"{status.service} histogram {name}",
                            value, {**base, "le": le}, "_bucket")
                else:
                    name, _, part = rest.rpartition("_")
                    out.add(f"wardlink_{service}_{_name(name)}", "histogram", f"{status.service} histogram {name}",
                            value, base, f"_{part}")
            else:
                out.add(f"wardlink_{service}_{_name(key)}_total", "counter", f"{status.service} counter {key}",
                        value, base)
    for gateway in sorted(view.gateways.values(), key=lambda g: g.gateway):
        labels = {"gateway": gateway.gateway}
        out.add("wardlink_gateway_up", "gauge", "1 when the gateway is online and heard recently",
                int(gateway.state == "online" and now - gateway.ts <= STALE_MS), labels)
        out.add("wardlink_gateway_outbox_items", "gauge", "readings waiting in the outbox for a commit",
                gateway.outbox_depth, labels)
        out.add("wardlink_gateway_outbox_shed_total", "counter", "low-priority readings shed by a full outbox",
                gateway.outbox_shed, labels)
    for source in view.gauge_sources:
        for family, help_, labels, level in source(now):
            out.add(family, "gauge", help_, level, labels)
    out.add("wardlink_api_broker_connected", "gauge", "1 when the API's bus view is connected",
            int(view.connected), {})
    out.add("wardlink_api_open_alerts", "gauge", "open alerts", len(view.alerts), {})
    out.add("wardlink_api_live_clients", "gauge", "WebSocket clients following alerts", len(view.subscribers), {})
    out.add("wardlink_api_dropped_clients_total", "counter", "WebSocket clients cut off for being too slow",
            view.dropped_clients, {})
    return out.text()
