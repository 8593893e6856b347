"""Simulated HL7 v2 device gateway: PCD-01 vitals and PCD-04 alarms over MLLP on TCP or a pseudo-terminal."""
