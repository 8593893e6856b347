"""The facilities service: gateway batches in, asset locations and facilities alerts out (skeleton)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class FacilitiesService:
    """Bus adapter around the location engine, the asset tracker and the waste tracker (being written)."""
