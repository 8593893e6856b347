"""Every registered driver has all its parts (docs/drivers.md), and its golden cases hold."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import msgspec
import pytest

from devices.site import DeviceSpec
from gateway.drivers.registry import DRIVERS

ROOT = Path(__file__).resolve().parent.parent
KINDS = sorted(DRIVERS)
PARTS = ("__init__.py", "driver.py", "parser.py", "golden.py", "sample.toml")


def driver_class(kind: str) -> type:
    module, _, name = DRIVERS[kind].partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


@pytest.mark.parametrize("kind", KINDS)
def test_driver_has_every_part(kind: str) -> None:
    folder = ROOT / "gateway" / "drivers" / kind
    missing = [part for part in PARTS if not (folder / part).is_file()]
    assert missing == [], f"driver {kind} lacks {missing}"
    cases = [c for c in (folder / "testcases").iterdir() if c.is_dir()] if (folder / "testcases").is_dir() else []
    assert cases, f"driver {kind} has no golden cases in testcases/"
    assert all((c / "expected.json").is_file() for c in cases)
    cls = driver_class(kind)
    assert cls.kind == kind  # type: ignore[attr-defined]
    twin = cls.simulator  # type: ignore[attr-defined]
    assert twin.startswith("simulators."), f"driver {kind}: simulator must name a package under simulators/"
    importlib.import_module(twin)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_config_is_a_valid_device_entry(kind: str) -> None:
    sample = tomllib.loads((ROOT / "gateway" / "drivers" / kind / "sample.toml").read_text(encoding="utf-8"))
    devices = [msgspec.convert(d, DeviceSpec) for d in sample["devices"]]
    assert devices
    assert all(d.kind == kind for d in devices)


CASES = [(kind, case) for kind in KINDS
         for case in sorted((ROOT / "gateway" / "drivers" / kind / "testcases").glob("*/"))]


@pytest.mark.parametrize(("kind", "case"), CASES, ids=[f"{k}/{c.name}" for k, c in CASES])
def test_golden_case(kind: str, case: Path) -> None:
    golden = importlib.import_module(f"gateway.drivers.{kind}.golden")
    expected = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    assert golden.run(case) == expected


def test_the_contract_test_notices_a_missing_part(tmp_path: Path) -> None:
    (tmp_path / "driver.py").write_text("")
    assert [p for p in PARTS if not (tmp_path / p).is_file()] == ["__init__.py", "parser.py", "golden.py",
                                                                  "sample.toml"]
