"""Driver for any Modbus device described by a register map in TOML (docs/modbus.md)."""
