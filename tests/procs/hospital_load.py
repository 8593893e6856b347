"""A simulated 2,000-bed hospital's gateways in one process, for the soak: `python -m tests.procs.hospital_load JSON`.

Four floor gateways (real :class:`~gateway.service.Gateway` objects: SQLite outbox, MQTT uplink, commits)
fed as drivers feed them: a monitor at every bed sending 5 numerics once a second, an infusion pump at
every fourth bed (its rate every 5 s), 14,000 RFID tags each read every 30 s by its floor's reader, and
a waste scale per ward weighing a bag every 10 s. A tenth of the devices report each 100 ms tick.
Every 5 s a JSON line on stdout: readings accepted, outbox depth and shed; it stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path

from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Item, Observation, TagRead, WasteEvent
from devices.site import DeviceSpec, GatewaySpec, Site, Unit
from gateway.service import Gateway, GatewaySettings
from wardlink.bench_support import as_remote_load

SITE_ID = "soak"
FLOORS = 4
WARDS_PER_FLOOR = 5
BEDS_PER_WARD = 100
TAGS = 14_000
TICKS_PER_S = 10
NUMERICS = (("MDC_ECG_HEART_RATE", 72.0, "/min"), ("MDC_PULS_OXIM_SAT_O2", 97.0, "%"), ("MDC_RESP_RATE", 16.0, "/min"),
            ("MDC_PULS_OXIM_PULS_RATE", 71.0, "/min"), ("MDC_TEMP", 36.8, "Cel"))
PROBE_BED = "W01-001"  # the soak's alarm probe publishes this bed's readings itself: its monitor stays quiet here


def gateway_of(floor: int) -> str:
    """The floor's gateway id."""
    return f"gw-f{floor}"


def monitor_of(bed: str) -> str:
    """The bed's monitor id."""
    return f"mon-{bed.lower()}"


def hospital_site() -> Site:
    """20 wards of 100 beds on 4 floors: a gateway, an RFID reader per floor; a monitor per bed, a pump per 4 beds."""
    units: list[Unit] = []
    devices: list[DeviceSpec] = []
    gateways: list[GatewaySpec] = []
    for floor in range(1, FLOORS + 1):
        first_ward = (floor - 1) * WARDS_PER_FLOOR + 1
        gateways.append(GatewaySpec(gateway_of(floor), f"W{first_ward:02d}"))
        devices.append(DeviceSpec(f"rfid-f{floor}", "rfid_mqtt", gateway_of(floor)))
        for ward in range(first_ward, first_ward + WARDS_PER_FLOOR):
            beds = [f"W{ward:02d}-{n:03d}" for n in range(1, BEDS_PER_WARD + 1)]
            units.append(Unit(f"W{ward:02d}", f"Ward {ward}", beds))
            devices.append(DeviceSpec(f"scale-w{ward:02d}", "waste_mqtt", gateway_of(floor)))
            for n, bed in enumerate(beds):
                devices.append(DeviceSpec(monitor_of(bed), "bedside_serial", gateway_of(floor), bed=bed))
                if n % 4 == 0:
                    devices.append(DeviceSpec(f"pump-{bed.lower()}", "modbus_pump", gateway_of(floor), bed=bed))
    return Site(id=SITE_ID, name="Soak hospital", units=units, gateways=gateways, devices=devices)


def _floor_items(site: Site, gateway: str, tick: int) -> list[Item]:
    """What the floor's devices report in one tick (each device once a period, spread over the ticks)."""
    ts = now_ms()
    second = tick // TICKS_PER_S
    items: list[Item] = []
    for index, spec in enumerate(site.devices_of(gateway)):
        if spec.kind == "bedside_serial" and index % TICKS_PER_S == tick % TICKS_PER_S and spec.bed != PROBE_BED:
            wobble = (second + index) % 3
            items += [Observation(device=spec.id, stream="numerics", seq=0, ts=ts, metric=m, value=v + wobble, unit=u,
                                  bed=spec.bed) for m, v, u in NUMERICS]
        elif spec.kind == "modbus_pump" and index % (5 * TICKS_PER_S) == tick % (5 * TICKS_PER_S):
            items.append(Observation(device=spec.id, stream="numerics", seq=0, ts=ts, metric="MDC_FLOW_FLUID_PUMP",
                                     value=25.0, unit="ml/h", bed=spec.bed))
        elif spec.kind == "waste_mqtt" and index % (10 * TICKS_PER_S) == tick % (10 * TICKS_PER_S):
            items.append(WasteEvent(device=spec.id, stream="waste", seq=0, ts=ts, bag=f"bag-{spec.id}-{tick}",
                                    category="infectious", weight_g=850.0, point="ward", handler="porter-1"))
        elif spec.kind == "rfid_mqtt":
            floor = int(gateway.removeprefix("gw-f"))
            per_tick = TAGS // FLOORS // (30 * TICKS_PER_S)  # each of the floor's tags once every 30 s
            start = (tick % (30 * TICKS_PER_S)) * per_tick
            items += [TagRead(device=spec.id, stream="tags", seq=0, ts=ts, tag=f"tag-{floor}-{t:05d}", rssi=-60.0)
                      for t in range(start, start + per_tick)]
    return items


async def main(raw: dict[str, str]) -> None:
    """Run the floor gateways under the hospital's load until stdin closes."""
    site = hospital_site()
    workdir = Path(raw["workdir"])
    address = BrokerAddress.parse(raw["url"])
    gateways = [Gateway(site, g.id, workdir / f"{g.id}.db", address, GatewaySettings(), drivers=False)
                for g in site.gateways]
    stopped = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stopped.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    tasks = [asyncio.create_task(g.run()) for g in gateways]
    started = time.monotonic()
    tick = 0
    next_report = started + 5
    while not stopped.is_set():
        for gateway in gateways:
            gateway.accept(_floor_items(site, gateway.id, tick))
        tick += 1
        now = time.monotonic()
        if now >= next_report:
            next_report += 5
            _report(gateways, now - started)
        await asyncio.sleep(max(0.0, started + tick / TICKS_PER_S - time.monotonic()))
    _report(gateways, time.monotonic() - started, final=True)
    for _ in range(1200):  # let the backlog drain (at most 60 s) so the history is complete
        if sum(g.outbox.depth() for g in gateways) == 0:
            break
        await asyncio.sleep(0.05)
    _report(gateways, time.monotonic() - started, final=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _report(gateways: list[Gateway], elapsed: float, final: bool = False) -> None:
    line = {"t": round(elapsed, 1), "accepted": sum(g.accepted for g in gateways),
            "depth": sum(g.outbox.depth() for g in gateways), "shed": sum(g.outbox.shed_total for g in gateways),
            "final": final}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    as_remote_load()  # a hospital's gateways run on edge machines of their own
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(json.loads(sys.argv[1])))
