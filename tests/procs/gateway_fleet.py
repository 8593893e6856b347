"""A gateway with one real device link, for the fleet's kill test: `python -m tests.procs.gateway_fleet OUTBOX URL`.

Gateway ``gw-icu`` of the shipped site reads ``mon-icu-01``, a simulated WLB/1 monitor on a pty in the same
process, with its bedside driver, and publishes its status (birth, a heartbeat every 0.5 s, last will).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import msgspec

from devices.bus import BrokerAddress
from gateway.drivers.registry import create
from gateway.service import Gateway, GatewaySettings
from simulators.bedside.monitor import SimulatedMonitor
from simulators.bedside.patient import PatientModel
from wardlink.config import load

DEVICE = "mon-icu-01"


async def main(outbox: Path, url: str) -> None:
    site = load(env={}).site
    with SimulatedMonitor("SIM-mon-icu-01", "WLB-100", "1.4.2", PatientModel("stable", seed=1), interval_s=0.2) as twin:
        spec = msgspec.structs.replace(site.device_index()[DEVICE], connection={"port": twin.port})
        gateway = Gateway(site, "gw-icu", outbox, BrokerAddress.parse(url), GatewaySettings(heartbeat_s=0.5),
                          drivers=False)
        gateway.drivers.append(create(spec, gateway))
        await asyncio.gather(gateway.run(), twin.run())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
