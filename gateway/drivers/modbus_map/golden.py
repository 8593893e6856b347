"""Golden cases of the modbus_map driver: ``registers.json`` (one dump or a list of polls) through the map."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.drivers.golden import GOLDEN_TS, case_spec, normalise
from gateway.drivers.modbus_map.parser import KIND, decode, resolve_map


def run(case_dir: Path) -> list[dict[str, Any]]:
    """Decode the case's dumps with the map its ``device.json`` names (relative paths from the case folder)."""
    spec = case_spec(case_dir, KIND)
    regmap = resolve_map(str(spec.connection.get("map", "")), base=case_dir)
    dumps = json.loads((case_dir / "registers.json").read_text(encoding="utf-8"))
    return normalise(decode(spec, regmap, dumps if isinstance(dumps, list) else [dumps], GOLDEN_TS))
