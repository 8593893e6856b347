"""The simulated hospital's equipment: the tags the scenario's readers hear become registered assets.

A hospital registers its tagged equipment (pumps, wheelchairs, beds, monitors) in the asset registry;
the demo does it for the scenario's simulated tags at start, once (an asset already registered is
left as it is), so the asset finder, nearest-available and routes to an asset work at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from devices.clock import now_ms
from devices.site import Site
from state.db import State

RFID_TYPES: Final = ("infusion_pump", "wheelchair", "monitor", "bed")
"""What the demo's UHF-tagged assets are, in turn; BLE beacons are on wheelchairs."""


def seed_demo_assets(state: State, site: Site, tags: Sequence[tuple[str, str]]) -> int:
    """Register each simulated tag as an asset owned by the unit its readers are in; return how many are new."""
    units = {device.gateway for device in site.devices if device.kind == "rfid_mqtt"}
    owner = next((g.unit for g in site.gateways if g.id in units), None)
    counts: dict[str, int] = {}
    new = 0
    now = now_ms()
    for n, (tag, tech) in enumerate(tags):
        kind = RFID_TYPES[n % len(RFID_TYPES)] if tech == "rfid" else "wheelchair"
        counts[kind] = counts.get(kind, 0) + 1
        asset_id = f"{kind.replace('_', '-')}-{counts[kind]:02d}"
        if state.assets.by_tag(tag) is not None or state.assets.get(asset_id) is not None:
            continue
        state.assets.upsert(asset_id, now=now, tag=tag, type=kind, unit=owner)
        new += 1
    return new
