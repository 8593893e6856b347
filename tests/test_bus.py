"""The bus helpers: a service loop ends on cancellation even when the cancellation was swallowed; a stop
never hangs on a task that will not end."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from devices import bus
from tests.conftest import Mosquitto


async def test_a_swallowed_cancellation_still_ends_the_message_loop(mosquitto: Mosquitto) -> None:
    in_body = asyncio.Event()
    handled: list[bytes] = []

    async def service(client: bus.aiomqtt.Client) -> None:
        async for message in bus.messages(client):
            handled.append(bytes(message.payload))  # type: ignore[arg-type]
            in_body.set()
            # What asyncio.wait_for does on Python 3.11 when the cancel meets a completing future:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

    async with bus.client(mosquitto.address, "test-loop") as client, \
            bus.client(mosquitto.address, "test-pub") as publisher:
        await client.subscribe("t/loop", qos=1)
        task = asyncio.create_task(service(client))
        await publisher.publish("t/loop", b"one", qos=1)
        await asyncio.wait_for(in_body.wait(), 10)
        task.cancel()  # swallowed by the body: the loop goes back to waiting for a message that never comes
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done, "the loop kept waiting after its cancellation was swallowed"
        assert task.cancelled()
        assert handled == [b"one"]


async def test_cancel_all_names_a_task_that_will_not_stop(caplog: pytest.LogCaptureFixture) -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    async def polite() -> None:
        await asyncio.sleep(30)

    hard = asyncio.create_task(stubborn(), name="stubborn")
    easy = asyncio.create_task(polite(), name="polite")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="devices.bus"):
        await bus.cancel_all([hard, easy], grace_s=0.5, what="services")
    assert easy.cancelled()
    assert not hard.done()
    assert "services did not stop within 0 s after cancellation: stubborn" in caplog.text
    released.set()  # leave nothing behind
    await asyncio.wait_for(hard, 5)
