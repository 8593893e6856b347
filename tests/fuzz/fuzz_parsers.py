"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser of untrusted bytes; run by ``make fuzz``.

``python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer options]``, e.g. ``wlb1 -max_total_time=60``. Each target
feeds the fuzzer's bytes to one parser and lets through only the parser's documented error: any other exception
is a crash libFuzzer reports (with the input saved as ``crash-*``), and ``-timeout`` catches a hang. Not part of
the pytest suite (tests/test_fuzz_parsers.py holds the hypothesis properties); atheris is installed apart from
the virtual environment (build/atheris) so the lock files stay what the suite runs with.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    import msgspec

    from devices.contract import UNDECODABLE, ContractError, check_item, decode_batch, decode_batch_lenient
    from devices.mllp import MllpFramer
    from devices.site import DeviceSpec, SiteError, load_site
    from facilities.sitemap import SiteMapError, load_site_map
    from gateway.drivers.bedside_serial.parser import MAX_WIRE, FrameError, FrameParser, decode_frame
    from gateway.drivers.hl7_pcd.context import Routing
    from gateway.drivers.hl7_pcd.pcd import answer, decode
    from gateway.drivers.modbus_common.errors import RegisterError
    from gateway.drivers.modbus_pump import parser as pump_parser
    from gateway.drivers.rfid_mqtt import parser as rfid_parser
    from gateway.drivers.waste_mqtt import parser as waste_parser
    from simulators.scenario import ScenarioError, load_scenario

NOW = 1_767_225_600_000
RFID = DeviceSpec(id="rdr-1", kind="rfid_mqtt", gateway="gw",
                  connection={"broker": "mqtt://127.0.0.1:1883", "topic": "t", "format": "rfid_reader"})
BLE = DeviceSpec(id="AC233FC07DA5", kind="rfid_mqtt", gateway="gw",
                 connection={"broker": "mqtt://127.0.0.1:1883", "topic": "t", "format": "ble_gateway"})
WASTE = DeviceSpec(id="wst-1", kind="waste_mqtt", gateway="gw",
                   connection={"broker": "mqtt://127.0.0.1:1883", "topic": "t", "point": "ward"})
PUMP = DeviceSpec(id="pump-1", kind="modbus_pump", gateway="gw", bed="ICU-01")
FILE = Path(tempfile.mkdtemp(prefix="wardlink-fuzz-")) / "input.toml"


def wlb1(data: bytes) -> None:
    """Serial frames: feed never raises and stays bounded; decode_frame raises only FrameError."""
    parser = FrameParser()
    parser.feed(data)
    assert parser.pending() <= MAX_WIRE
    with contextlib.suppress(FrameError):
        decode_frame(data)


def hl7(data: bytes) -> None:
    """MLLP de-framing, then PCD-01/PCD-04 mapping: never raises, always a well-formed ACK."""
    framer = MllpFramer(max_size=4096)
    frames = framer.feed(data)
    for payload in [data, *(f.payload for f in frames)]:
        decoded = decode(payload, Routing("hl7-x"), NOW)
        assert answer(decoded, "WL1", NOW).startswith(b"MSH")
        for item in decoded.items:
            check_item(item)


def batch(data: bytes) -> None:
    """Gateway batches: only ContractError."""
    with contextlib.suppress(ContractError):
        decode_batch(data)
    with contextlib.suppress(ContractError):
        decode_batch_lenient(data)


def rfid(data: bytes) -> None:
    """RFID reader and BLE gateway payloads: only PayloadError."""
    for spec in (RFID, BLE):
        with contextlib.suppress(rfid_parser.PayloadError):
            rfid_parser.parse(data, spec, rfid_parser.load_settings(spec), NOW)


def waste(data: bytes) -> None:
    """Waste scans: only ScanError."""
    with contextlib.suppress(waste_parser.ScanError):
        waste_parser.parse(data, WASTE, waste_parser.load_settings(WASTE), NOW)


def modbus(data: bytes) -> None:
    """Register dumps (JSON) through the pump's map: only RegisterError (not JSON is not a dump: skipped)."""
    try:
        dump = msgspec.json.decode(data)
    except UNDECODABLE:
        return
    with contextlib.suppress(RegisterError):
        for item in pump_parser.decode(PUMP, [dump], NOW):
            check_item(item)


def files(data: bytes) -> None:
    """Site, scenario and site-map files: only SiteError, ScenarioError and SiteMapError."""
    FILE.write_bytes(data)
    with contextlib.suppress(SiteError):
        load_site(FILE)
    with contextlib.suppress(ScenarioError):
        load_scenario(str(FILE))
    with contextlib.suppress(SiteMapError):
        load_site_map(FILE)


TARGETS: dict[str, Callable[[bytes], None]] = {f.__name__: f for f in (wlb1, hl7, batch, rfid, waste, modbus, files)}


def main() -> None:
    """Run one target under libFuzzer with the remaining command-line options."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz_parsers.py {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
