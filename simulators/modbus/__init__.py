"""Simulated Modbus devices (infusion pump, waste scale, fridge logger, O2 detector) on pymodbus servers, TCP or RTU."""
