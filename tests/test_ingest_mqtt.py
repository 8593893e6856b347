"""The ingest worker's own MQTT session against a real Mosquitto: bulk reading, the bound, a lost broker."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.bus import BusError
from ingest.mqtt import Session
from tests.conftest import Mosquitto


def publish_all(mosquitto: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 from a plain paho client and wait until the broker acknowledged every one."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub")
    client.connect(mosquitto.address.host, mosquitto.address.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def take(session: Session, count: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    while len(got) < count:
        got += await asyncio.wait_for(session.received(), 10)
    return got


@pytest.mark.parametrize("mqtt5", [False, True])
async def test_every_message_arrives_once_in_order_whatever_its_size(mosquitto: Mosquitto, mqtt5: bool) -> None:
    # Small ones share a chunk; the 600 KB one spans three; lengths of 1 to 3 header bytes.
    sizes = [0, 1, 100, 127, 128, 16_383, 16_384, 200_000, 600_000, 5, 70_000] * 3
    messages = [(f"t/{i}", bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    async with Session(mosquitto.address, "test-sub", mqtt5=mqtt5, keepalive=60) as session:  # no PINGs to wake it
        await session.subscribe("t/#", qos=1)
        await asyncio.to_thread(publish_all, mosquitto, messages)
        assert await take(session, len(messages)) == messages
        assert session.queued() == 0


async def test_past_the_bound_messages_are_discarded_and_counted(mosquitto: Mosquitto) -> None:
    dropped: list[int] = []
    async with Session(mosquitto.address, "test-sub", max_queued=5, on_drop=lambda: dropped.append(1)) as session:
        await session.subscribe("t/#", qos=1)
        await asyncio.to_thread(publish_all, mosquitto, [("t/x", b"%d" % i) for i in range(20)])
        await session.publish("t/end", b"end", qos=1)  # acknowledged after the 20 were sent to us
        got: list[tuple[str, bytes]] = []
        while len(got) + len(dropped) < 21:
            taken = await asyncio.wait_for(session.received(), 10)
            assert len(taken) <= 5  # never more than the bound waiting
            got += taken
    assert len(got) + len(dropped) == 21  # every message kept or counted
    assert dropped  # the 20 were all read while nobody took any
    assert got[0] == ("t/x", b"0")


async def test_a_broker_that_dies_ends_the_session_with_a_bus_error(mosquitto: Mosquitto) -> None:
    async with Session(mosquitto.address, "test-sub", keepalive=2) as session:
        await session.subscribe("t/#", qos=1)
        waiting = asyncio.create_task(session.received())
        await asyncio.sleep(0.2)
        mosquitto.stop()
        with pytest.raises(BusError):
            await asyncio.wait_for(waiting, 15)
        with pytest.raises(BusError):
            await session.publish("t/x", b"x", qos=1)


async def test_no_broker_is_a_bus_error(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    with pytest.raises(BusError):
        async with Session(mosquitto.address, "test-sub"):
            pass
