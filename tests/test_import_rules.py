"""Services meet only through the bus: no service package imports another, the contract imports none."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("devices", "storage", "state", "gateway", "ingest", "alerts", "facilities", "api", "simulators",
            "wardlink")
ALLOWED = {
    "devices": {"devices"},
    "storage": {"storage", "devices"},
    "state": {"state", "devices"},
    "gateway": {"gateway", "devices"},
    "ingest": {"ingest", "devices", "storage"},
    "alerts": {"alerts", "devices", "state"},
    "facilities": {"facilities", "devices", "state", "storage"},
    "api": {"api", "devices", "storage", "state", "facilities"},  # facilities' pure engines only (below)
    "simulators": {"simulators", "devices"},  # never the gateway: the encoder must stay independent
    "wardlink": set(PACKAGES),
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of the project's packages that a module imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"package {package} has no modules"
    offences = [f"{m.relative_to(ROOT)} imports {sorted(imported_packages(m) - ALLOWED[package])}"
                for m in modules if imported_packages(m) - ALLOWED[package]]
    assert offences == []


def test_api_uses_only_the_pure_facilities_modules() -> None:
    """The API may use the site map, wayfinding and asset queries, never the facilities bus service."""
    offences = []
    for module in sorted((ROOT / "api").rglob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offences += [f"{module.name}: {n}" for n in names if n.startswith("facilities.service")]
    assert offences == []


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from gateway.outbox import Outbox\nimport ingest.service\n")
    assert imported_packages(module) == {"gateway", "ingest"}
