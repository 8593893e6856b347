"""Driver for Perfusa PV-300 infusion pumps on Modbus TCP or RTU (register map: map.toml, map.md)."""
