"""Generic Modbus device (TCP or RTU) read through a register map from config (docs/modbus.md)."""

from __future__ import annotations

from typing import ClassVar

from devices.site import DeviceSpec
from gateway.driver import Sink
from gateway.drivers.modbus_common.errors import ModbusConfigError
from gateway.drivers.modbus_common.poller import ModbusDevice, parse_settings
from gateway.drivers.modbus_map.parser import KIND, resolve_map


class ModbusMapDriver(ModbusDevice):
    """A Modbus unit whose registers are described by ``connection.map``: a shipped map name or a TOML path."""

    kind: ClassVar[str] = KIND
    simulator: ClassVar[str] = "simulators.modbus"

    def __init__(self, spec: DeviceSpec, sink: Sink) -> None:
        """Validate the connection table and load the map; ModbusConfigError naming the device otherwise."""
        settings = parse_settings(spec)
        try:
            regmap = resolve_map(settings.map)
        except ModbusConfigError as exc:
            raise ModbusConfigError(f"device {spec.id}: {exc}") from exc
        super().__init__(spec, sink, regmap, settings)
