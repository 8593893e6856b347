"""Driver registry: one line per device kind. A contract test checks every entry has all its parts."""

from __future__ import annotations

import importlib
from typing import Final

from devices.site import DeviceSpec
from gateway.driver import Driver, Sink

# kind -> "module:Class". Adding a device kind is one folder under gateway/drivers/ plus one line here.
DRIVERS: Final[dict[str, str]] = {
    "bedside_serial": "gateway.drivers.bedside_serial.driver:BedsideSerialDriver",
    "hl7_pcd": "gateway.drivers.hl7_pcd.driver:Hl7PcdDriver",
    "modbus_pump": "gateway.drivers.modbus_pump.driver:ModbusPumpDriver",
    "modbus_map": "gateway.drivers.modbus_map.driver:ModbusMapDriver",
    "rfid_mqtt": "gateway.drivers.rfid_mqtt.driver:RfidMqttDriver",
    "waste_mqtt": "gateway.drivers.waste_mqtt.driver:WasteMqttDriver",
}


class UnknownDriverError(KeyError):
    """A device names a driver kind that is not registered."""


def create(spec: DeviceSpec, sink: Sink) -> Driver:
    """Instantiate the registered driver for ``spec.kind``."""
    try:
        target = DRIVERS[spec.kind]
    except KeyError:
        raise UnknownDriverError(f"device {spec.id}: field kind {spec.kind!r} names no driver "
                                 f"(known: {', '.join(sorted(DRIVERS))})") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    driver: Driver = cls(spec, sink)
    return driver
