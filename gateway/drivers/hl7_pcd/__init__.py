"""HL7 v2 / IHE PCD-01 and PCD-04 over MLLP (TCP listener or serial line): any PCD-01 sender feeds Wardlink."""
