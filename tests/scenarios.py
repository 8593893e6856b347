"""Scenario files for tests: the shipped hospital with its clinical events brought forward."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

# The SpO2 rule with a 3 s persistence delay: still longer than the artefact patient's 2 s dips.
RULES = [{"name": "spo2_low", "metric": "spo2", "direction": "below", "limit": 90, "priority": "high",
          "delay_s": 3, "hysteresis": 2}]


def fast_scenario(path: Path) -> Path:
    """Write the hospital scenario with ICU-03 desaturating at once and ICU-05's 2-second dips every 8 s."""
    scenario = tomllib.loads(resources.files("simulators").joinpath("scenarios", "hospital.toml").read_text())
    for monitor in scenario["bedside"]:
        if monitor["device"] == "mon-icu-03":
            monitor.update(profile="desaturating", onset_s=1)
        elif monitor["device"] == "mon-icu-05":
            monitor.update(profile="artefact", onset_s=3, period_s=8)
        else:
            monitor["profile"] = "stable"
    path.write_text(to_toml(scenario))
    return path


def to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML writing for these files: values, inline tables, and arrays of flat tables."""
    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not (isinstance(v, list) and v and
                                                                 isinstance(v[0], dict))]
    for key, tables in data.items():
        if isinstance(tables, list) and tables and isinstance(tables[0], dict):
            for table in tables:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
