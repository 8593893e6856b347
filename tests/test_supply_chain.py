"""Supply chain: what is installed is exactly what the lock files pin, and the SBOM says so."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNLOCKED = {"pip", "setuptools", "wheel", "wardlink"}  # the installer itself and the project


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """``name -> version`` of a pip-compile lock file."""
    found: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            found[_norm(match.group(1))] = match.group(2)
    return found


def declared() -> tuple[set[str], set[str]]:
    """Names of the runtime and the dev dependencies in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(specs: list[str]) -> set[str]:
        return {_norm(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}

    return names(project["dependencies"]), names(project["optional-dependencies"]["dev"])


def test_every_declared_dependency_is_locked() -> None:
    runtime, dev = declared()
    runtime_lock, dev_lock = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert sorted(runtime - set(runtime_lock)) == [], "run `make lock` after changing pyproject.toml"
    assert sorted((runtime | dev) - set(dev_lock)) == [], "run `make lock` after changing pyproject.toml"
    shared = set(runtime_lock) & set(dev_lock)
    assert {n: (runtime_lock[n], dev_lock[n]) for n in shared if runtime_lock[n] != dev_lock[n]} == {}


def test_the_environment_is_what_the_lock_pins() -> None:
    locked = pins(ROOT / "requirements-dev.lock")
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {n: (v, installed.get(n)) for n, v in locked.items() if n not in UNLOCKED and installed.get(n) != v}
    assert differ == {}, "install with `make` (pip install -r requirements-dev.lock)"
    unpinned = sorted(set(installed) - set(locked) - UNLOCKED)
    assert unpinned == []


def test_the_sbom_lists_what_is_installed() -> None:
    path = ROOT / "build" / "sbom.cdx.json"
    assert path.exists(), "the dev install writes build/sbom.cdx.json (`make sbom`)"
    bom = json.loads(path.read_text(encoding="utf-8"))
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["name"] == "wardlink"
    listed = {_norm(c["name"]): c["version"] for c in bom["components"]}
    locked = pins(ROOT / "requirements-dev.lock")
    assert {n: (v, listed.get(n)) for n, v in locked.items() if n not in UNLOCKED and listed.get(n) != v} == {}
    assert all(c.get("purl", "").startswith("pkg:pypi/") for c in bom["components"])
