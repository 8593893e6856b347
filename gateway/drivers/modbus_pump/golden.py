"""Golden cases of the modbus_pump driver: ``registers.json`` (one dump or a list of polls) through map.toml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.drivers.golden import GOLDEN_TS, case_spec, normalise
from gateway.drivers.modbus_pump.parser import KIND, decode


def run(case_dir: Path) -> list[dict[str, Any]]:
    """Decode the case's dumps as the pump driver would, poll after poll."""
    dumps = json.loads((case_dir / "registers.json").read_text(encoding="utf-8"))
    return normalise(decode(case_spec(case_dir, KIND), dumps if isinstance(dumps, list) else [dumps], GOLDEN_TS))
