"""The firmware an MDS reports in PCD-01: an OBX row of its production specification (I/O-free).

IEEE 11073 models a device's versions as the MDS attribute ``MDC_ATTR_ID_PROD_SPECN``, one component per
kind; IHE PCD-01 carries each as an OBX row at the MDS level (OBX-4 ``<mds>.0.0.0``, often with a facet),
value type ST, the version in OBX-5. The rows read here are ``531976^MDC_ID_PROD_SPEC_FW^MDC`` (firmware
revision) and ``531975^MDC_ID_PROD_SPEC_SW^MDC`` (software revision, taken when no firmware row names the
device). A VMD's revision (a plug-in module's) is not the device's and is left alone. HL7's PRT segment
(v2.7+) names a device by UDI and serial number but has no field for its software, so it gives no firmware.
"""

from __future__ import annotations

from typing import Final

from gateway.drivers.hl7_pcd.context import MessageContext
from gateway.drivers.hl7_pcd.parser import Segment, first_leaf
from gateway.drivers.hl7_pcd.rows import Equipment, identity

FIRMWARE: Final = 2
SOFTWARE: Final = 1
_BY_CODE: Final = {531976: FIRMWARE, 531975: SOFTWARE}
_BY_REFID: Final = {"MDC_ID_PROD_SPEC_FW": FIRMWARE, "MDC_ID_PROD_SPEC_SW": SOFTWARE}
MAX_REVISION: Final = 64


def kind_of(segment: Segment) -> int:
    """FIRMWARE or SOFTWARE when the OBX row names a revision, else 0."""
    ident = identity(segment, 3)  # remembered by OBX-3's text: a sender repeats its rows
    return _BY_REFID.get(ident.metric, 0) or _BY_CODE.get(ident.code, 0)


def mds_level(containment: str) -> bool:
    """Whether OBX-4 places a row on the MDS itself (``1.0.0.0``, ``1.0.0.0.2``) or says nothing."""
    parts = containment.strip().split(".")
    return all(part in ("0", "") for part in parts[1:4])


def note(ctx: MessageContext, fields: list[str], containment: str, found: Equipment | None) -> None:
    """If a non-numeric OBX row reports its MDS's firmware (or software) revision, announce it with the device."""
    kind = kind_of(Segment(fields, ctx.seps))
    if not kind or not mds_level(containment):
        return
    text = first_leaf(fields[5], ctx.seps).strip()[:MAX_REVISION]
    if text.isprintable() and text:
        ctx.revision(found, text, firmware=kind == FIRMWARE)
