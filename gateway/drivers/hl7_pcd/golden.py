"""Golden cases of the hl7_pcd driver: an HL7 message (``input.hl7``) through MLLP de-framing, mapping and ACK.

``input.hl7`` is either one bare message or MLLP-framed bytes (one or more frames). The output is
per message what the driver would register and store (DeviceInfo first), then that message's ACK
(MSA and ERR fields), the rows skipped and the containment (OBX-4) of each item; last the de-framer's
counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from devices.contract import DeviceInfo
from gateway.drivers.golden import GOLDEN_TS, case_spec, normalise
from gateway.drivers.hl7_pcd.ack import ack_fields
from gateway.drivers.hl7_pcd.config import load_settings
from gateway.drivers.hl7_pcd.context import changed
from gateway.drivers.hl7_pcd.mllp import START, Frame, MllpFramer
from gateway.drivers.hl7_pcd.pcd import answer, decode

_DEFAULT_CONNECTION = {"listen": "127.0.0.1:2575"}


def run(case_dir: Path) -> list[dict[str, Any]]:
    """Run every message of the case and normalise what comes out."""
    spec = case_spec(case_dir, "hl7_pcd")
    if not spec.connection:
        spec = msgspec.structs.replace(spec, connection=_DEFAULT_CONNECTION)
    settings = load_settings(spec)
    routing = settings.routing(spec)
    data = (case_dir / "input.hl7").read_bytes()
    framer = MllpFramer(settings.max_message_bytes)
    frames = framer.feed(data) if START in data else [Frame(data)]
    out: list[dict[str, Any]] = []
    registered: dict[str, DeviceInfo] = {}
    for number, frame in enumerate(frames, start=1):
        decoded = decode(frame.payload, routing, GOLDEN_TS, oversize=frame.oversize)
        ack = answer(decoded, f"WL{number}", GOLDEN_TS)
        # The driver registers a device again only when its bed, identifiers or firmware change; so does this.
        infos = [i for i in (changed(registered.get(d.device), d) for d in decoded.discovered) if i is not None]
        registered.update((i.device, i) for i in infos)
        out += normalise([*infos, *decoded.items])
        out.append({"ack": ack_fields(ack), "skipped": decoded.skipped, "containment": decoded.containment})
    mllp = {"frames_ok": framer.frames_ok, "frames_bad": framer.frames_bad, "bytes_discarded": framer.bytes_discarded,
            "pending": framer.pending()}
    return [*out, {"mllp": mllp}]
