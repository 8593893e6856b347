"""Perfusa PV-300 infusion pump on Modbus TCP or RTU: rate, volumes, state, alarms and identity."""

from __future__ import annotations

from typing import ClassVar

from devices.site import DeviceSpec
from gateway.driver import Sink
from gateway.drivers.modbus_common.errors import ModbusConfigError
from gateway.drivers.modbus_common.poller import ModbusDevice, parse_settings
from gateway.drivers.modbus_pump.parser import KIND, pump_map


class ModbusPumpDriver(ModbusDevice):
    """One infusion pump: observations on stream ``pump``, alarm-word events on ``alarms``, a DeviceInfo."""

    kind: ClassVar[str] = KIND
    simulator: ClassVar[str] = "simulators.modbus"

    def __init__(self, spec: DeviceSpec, sink: Sink) -> None:
        """Validate the connection table; the register map is the pump's own (map.toml)."""
        settings = parse_settings(spec)
        if settings.map:
            raise ModbusConfigError(f"device {spec.id}: connection.map: a modbus_pump uses its own map.toml; "
                                    "other devices are modbus_map")
        super().__init__(spec, sink, pump_map(), settings)
