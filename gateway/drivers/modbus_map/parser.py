"""I/O-free side of the modbus_map driver: find a register map by name or path; decode register dumps through it.

The decoding itself (registers to typed values to contract items) is shared with modbus_pump and lives in
:mod:`gateway.drivers.modbus_common.decode`; this module is the map driver's entry to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from devices.contract import Item
from devices.site import DeviceSpec
from gateway.drivers.modbus_common.decode import decode_dumps
from gateway.drivers.modbus_common.errors import ModbusConfigError
from gateway.drivers.modbus_common.regmap import RegisterMap, load_map

KIND: Final = "modbus_map"
MAPS_DIR: Final = Path(__file__).resolve().parent / "maps"


def shipped_maps() -> list[str]:
    """Names of the maps that ship with the driver (``maps/<name>.toml``)."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.toml"))


def map_path(name: str, base: Path | None = None) -> Path:
    """The file of map ``name``: a shipped map by bare name, else a path (relative ones from ``base``)."""
    if not name:
        raise ModbusConfigError("connection.map is required: a shipped map name or a path to a .toml file")
    if "/" not in name and not name.endswith(".toml"):
        path = MAPS_DIR / f"{name}.toml"
        if not path.is_file():
            raise ModbusConfigError(f"connection.map {name!r} is not a shipped map ({', '.join(shipped_maps())})")
        return path
    path = Path(name)
    return path if path.is_absolute() or base is None else base / path


def resolve_map(name: str, base: Path | None = None) -> RegisterMap:
    """Load and compile map ``name`` (see :func:`map_path`)."""
    return load_map(map_path(name, base))


def decode(spec: DeviceSpec, regmap: RegisterMap, dumps: Sequence[object], received: int) -> list[Item]:
    """Contract items from a run of register dumps, poll after poll, as this driver produces them."""
    return decode_dumps(spec, regmap, dumps, KIND, received)
