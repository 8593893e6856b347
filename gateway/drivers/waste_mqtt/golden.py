"""Golden cases of the waste_mqtt driver: one scan payload (``payload.json`` or ``payload.bin``) through the parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.drivers.golden import GOLDEN_TS, case_spec, normalise
from gateway.drivers.waste_mqtt import parser


def run(case_dir: Path) -> list[dict[str, Any]]:
    """Parse the case's scan as its device (``device.json``) would; a refusal is an ``error`` record."""
    spec = case_spec(case_dir, "waste_mqtt")
    settings = parser.load_settings(spec)
    source = case_dir / "payload.json"
    payload = (source if source.exists() else case_dir / "payload.bin").read_bytes()
    try:
        event = parser.parse(payload, spec, settings, GOLDEN_TS)
    except parser.ScanError as exc:
        return [{"error": {"reason": exc.reason, "field": exc.field, "message": str(exc)}}]
    return normalise([event])
