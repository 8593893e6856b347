"""MLLP framing for the HL7 driver: the framer lives in :mod:`devices.mllp`, shared with the PCD-04 out channel."""

from __future__ import annotations

from devices.mllp import CR, DEFAULT_MAX_SIZE, END, START, Frame, MllpFramer, wrap

__all__ = ["CR", "DEFAULT_MAX_SIZE", "END", "START", "Frame", "MllpFramer", "wrap"]
