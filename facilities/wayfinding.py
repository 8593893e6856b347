"""Walking routes over the site map graph (being written)."""

from __future__ import annotations

from typing import Literal

Profile = Literal["staff", "visitor", "wheelchair", "bed_transport"]


class Wayfinder:
    """Routes and walking distances over one site map."""

    def distances_from(self, room: str, profile: Profile = "staff") -> dict[str, float]:
        """Walking distance in metres from ``room`` to every room reachable with ``profile``."""
        return {room: 0.0}
