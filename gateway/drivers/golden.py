"""Shared helpers for drivers' golden cases: stable plain-dict output of contract items."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from devices.contract import Item
from devices.site import DeviceSpec

GOLDEN_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the receive time every golden case uses


def normalise(items: Sequence[Item]) -> list[dict[str, Any]]:
    """Items as plain dicts, with ``seq`` left out (the outbox assigns it) so expected files stay stable."""
    out = []
    for item in items:
        data = msgspec.to_builtins(item)
        data.pop("seq", None)
        out.append(data)
    return out


def case_spec(case_dir: Path, kind: str) -> DeviceSpec:
    """The device a case runs as: ``device.json`` in the case folder, or a default one of ``kind``."""
    path = case_dir / "device.json"
    data: dict[str, Any] = {"id": "dev-golden", "kind": kind, "gateway": "gw-golden", "bed": "BED-1"}
    if path.exists():
        data.update(json.loads(path.read_text(encoding="utf-8")))
    return msgspec.convert(data, DeviceSpec)
