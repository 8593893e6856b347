"""Packaging: the clinical rule sets (alerts/rulesets/*.toml) are package data, shipped in the wheel and loadable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

from alerts.ruleset import RULESET_NAMES, load_ruleset

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wardlink", "gateway", "ingest", "alerts", "devices", "api", "simulators", "storage", "state",
            "facilities")


def test_rule_sets_load_through_importlib_resources() -> None:
    shipped = resources.files("alerts") / "rulesets"
    names = sorted(entry.name for entry in shipped.iterdir() if entry.name.endswith(".toml"))
    assert names == sorted(f"{name}.toml" for name in RULESET_NAMES)
    assert [load_ruleset(shipped / name).name for name in names] == [name.removesuffix(".toml") for name in names]


def test_the_wheel_ships_the_rule_sets(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, timeout=240)
    [wheel] = (tmp_path / "dist").glob("wardlink-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("alerts/rulesets/")}
    assert shipped == {f"alerts/rulesets/{name}.toml" for name in RULESET_NAMES}
