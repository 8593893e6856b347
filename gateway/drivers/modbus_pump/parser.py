"""I/O-free side of the modbus_pump driver: the PV-300 register map and its state codes.

Decoding goes through the shared map machinery (:mod:`gateway.drivers.modbus_common.decode`) with the
pump's own map (``map.toml``, documented in ``map.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Final

from devices.contract import Item
from devices.site import DeviceSpec
from gateway.drivers.modbus_common.decode import decode_dumps
from gateway.drivers.modbus_common.regmap import RegisterMap, load_map

KIND: Final = "modbus_pump"
MAP_FILE: Final = Path(__file__).resolve().parent / "map.toml"

# Values of the WARDLINK_PUMP_STATE metric (map.toml translates the vendor's codes to these).
STATE_METRIC: Final = "WARDLINK_PUMP_STATE"
STATE_STOPPED: Final = 0
STATE_INFUSING: Final = 1
STATE_PAUSED: Final = 2
STATE_ALARM: Final = 3
STATE_KVO: Final = 4
STATE_NAMES: Final[dict[int, str]] = {STATE_STOPPED: "stopped", STATE_INFUSING: "infusing", STATE_PAUSED: "paused",
                                      STATE_ALARM: "alarm", STATE_KVO: "kvo"}


@cache
def pump_map() -> RegisterMap:
    """The PV-300 register map, compiled once."""
    return load_map(MAP_FILE)


def decode(spec: DeviceSpec, dumps: Sequence[object], received: int) -> list[Item]:
    """Contract items (DeviceInfo first) from a run of register dumps, poll after poll."""
    return decode_dumps(spec, pump_map(), dumps, KIND, received)
