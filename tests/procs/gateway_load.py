"""A gateway process under synthetic load, for the kill -9 test: `python -m tests.procs.gateway_load OUTBOX URL`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from devices.bus import BrokerAddress
from gateway.service import Gateway, GatewaySettings
from tests.procs.load import produce
from wardlink.config import load


async def main(outbox: Path, url: str) -> None:
    site = load(env={}).site
    gateway = Gateway(site, "gw-icu", outbox, BrokerAddress.parse(url), GatewaySettings(resend_after_s=2.0),
                      drivers=False)
    devices = [d.id for d in site.devices_of("gw-icu")]
    await asyncio.gather(gateway.run(), produce(gateway, devices, per_tick=5, tick_s=0.01))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
