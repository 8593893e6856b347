"""Golden cases of the bedside serial driver: raw line bytes (``input.bin``) through parser and mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.drivers.bedside_serial.driver import frames_to_items
from gateway.drivers.bedside_serial.parser import FrameParser
from gateway.drivers.golden import GOLDEN_TS, case_spec, normalise


def run(case_dir: Path) -> list[dict[str, Any]]:
    """Feed ``input.bin`` in one piece and normalise what comes out."""
    parser = FrameParser()
    frames = parser.feed((case_dir / "input.bin").read_bytes())
    items = frames_to_items(case_spec(case_dir, "bedside_serial"), frames, GOLDEN_TS)
    return [*normalise(items), {"parser": {"frames_ok": parser.frames_ok, "frames_bad": parser.frames_bad,
                                           "bytes_discarded": parser.bytes_discarded}}]
