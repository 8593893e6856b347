"""Medical-waste tracking: every scan recorded in the custody chain, and the "waste." alerts (being written)."""

from __future__ import annotations

import logging
from typing import Annotated, Final

import msgspec

from devices.contract import Alert, Observation, WasteEvent
from devices.site import Site
from state.db import State

log = logging.getLogger(__name__)

LEVELS: Final = ("handler", "department_head", "hospital")
"""The three escalation levels of a waste alert, first to last."""


class WasteSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits of the waste rules (DOMAIN.md section 7); the ``[facilities.waste]`` table of the config."""

    storage_max_h: Annotated[float, msgspec.Meta(gt=0)] = 48.0
    weight_tolerance: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.02
    retention_years: Annotated[int, msgspec.Meta(ge=3)] = 3
    escalate_after_min: list[Annotated[float, msgspec.Meta(gt=0)]] = [60.0, 240.0]


class WasteTracker:
    """Records waste scans in the custody chain and raises "waste." alerts (called by the facilities service)."""

    def __init__(self, site: Site, state: State, settings: WasteSettings | None = None) -> None:
        """Track the site's waste in ``state``."""
        self.site, self.state, self.settings = site, state, settings or WasteSettings()

    def handle(self, event: WasteEvent | Observation, now: int) -> list[Alert]:
        """Record one scan (or a storage-room temperature reading); return alerts raised or changed."""
        return []

    def tick(self, now: int) -> list[Alert]:
        """Periodic checks (storage beyond its limit, no handover today, escalation); return alerts changed."""
        return []
