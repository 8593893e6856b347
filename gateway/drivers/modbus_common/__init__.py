"""Shared Modbus machinery for the modbus_* drivers: bus (TCP/RTU), register codec, register maps, poll loop."""
