"""Serve a demo Modbus line: a pump (unit 1), a waste scale (2), a fridge logger (3) and an O2 detector (4)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from simulators.modbus.devices import FridgeLogger, O2Detector, WasteScale
from simulators.modbus.pump import PumpModel
from simulators.modbus.server import ModbusSimulator, UnitModel, serve_forever


def main() -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=("tcp", "rtu"), default="tcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020, help="TCP port (tcp only)")
    parser.add_argument("--baudrate", type=int, default=19200, help="line speed (rtu only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    units: list[UnitModel] = [PumpModel(unit=1), WasteScale(unit=2), FridgeLogger(unit=3), O2Detector(unit=4)]
    simulator = ModbusSimulator(units, transport=args.transport, host=args.host, port=args.port,
                                baudrate=args.baudrate)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(simulator))


if __name__ == "__main__":
    main()
