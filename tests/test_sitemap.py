"""The site map loader: the demo hospital validates, and a broken map fails naming the feature and field."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from facilities.sitemap import SiteMapError, load_site_map, site_map_from_dict


def demo() -> dict[str, Any]:
    return tomllib.loads(resources.files("facilities").joinpath("data", "demo_hospital.toml").read_text("utf-8"))


def test_the_demo_hospital_has_what_the_issue_asks_for() -> None:
    site_map = load_site_map()
    assert len(site_map.buildings) >= 2
    assert len(site_map.floors) >= 4
    assert {lift.id for lift in site_map.lifts} >= {"L1", "L2"}
    assert site_map.stairs
    assert sorted(site_map.bed_rooms) == [f"ICU-{i:02d}" for i in range(1, 9)] + [f"W3-{i:02d}" for i in range(1, 9)]
    kinds = {room.kind for room in site_map.rooms}
    assert {"storage", "waste_storage", "exit", "patient_room"} <= kinds
    assert any(w.type == "ramp" for w in site_map.ways)
    assert any(not d.accessible for d in site_map.doors)
    assert any(room.restricted for room in site_map.rooms)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["rooms"][3].update(floor="A9"), r"room A1-IMAGING: field floor 'A9' is not a floor"),
    (lambda m: m["rooms"][5].update(x="east"), r"room A1-WC: field x: Expected `float`, got `str`"),
    (lambda m: m["rooms"][0].update(colour="red"), r"room A1-MAIN-EXIT: field \?: Object contains unknown field"),
    (lambda m: m["doors"][2].update(to="A1-J99"), r"door door-A1-PHARMACY: field to 'A1-J99' is not a room or "),
    (lambda m: m["doors"][2].update(length_m=-3), r"door door-A1-PHARMACY: field length_m: Expected `float` >"),
    (lambda m: m["ways"][0].update(to="A2-J01"), r"way A1-J00-A1-J01: field type 'corridor' cannot join two floors"),
    (lambda m: m["lifts"][0]["stops"].append("B2-J01"), r"lift L1: field stops: floors of more than one building"),
    (lambda m: m["stairs"][0].update(stops=["A1-J01"]), r"stairs SA-W: field stops needs at least two floors"),
    (lambda m: m["rooms"][20].update(beds=["ICU-01"]), r"bed ICU-01: field id appears twice"),
    (lambda m: m["ways"].append({"id": "x", "from": "A1-J00", "to": "A1-J00", "length_m": 1}), r"way x: field to is"),
])
def test_a_broken_map_names_the_feature_and_field(change: Any, message: str) -> None:
    data = demo()
    change(data)
    with pytest.raises(SiteMapError, match=message):
        site_map_from_dict(data)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SiteMapError, match=r"site map .*nope\.toml"):
        load_site_map(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("site = ")
    with pytest.raises(SiteMapError, match=r"bad\.toml"):
        load_site_map(bad)
