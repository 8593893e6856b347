"""Golden cases of the rfid_mqtt driver: one MQTT payload (``payload.json`` or ``payload.bin``) through the parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.drivers.golden import GOLDEN_TS, case_spec, normalise
from gateway.drivers.rfid_mqtt import parser


def run(case_dir: Path) -> list[dict[str, Any]]:
    """Parse the case's payload as its device (``device.json``) would; a refusal is an ``error`` record."""
    spec = case_spec(case_dir, "rfid_mqtt")
    settings = parser.load_settings(spec)
    source = case_dir / "payload.json"
    payload = (source if source.exists() else case_dir / "payload.bin").read_bytes()
    try:
        items = parser.parse(payload, spec, settings, GOLDEN_TS)
    except parser.PayloadError as exc:
        return [{"error": {"reason": exc.reason, "message": str(exc)}}]
    return normalise(items)
