"""Request limits on a real uvicorn server: body size, per-client rate, WebSocket frame size."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI, Request, WebSocket

from api.app import create_app
from api.limits import Limits, LimitSettings, VerifiedTokens
from api.security import LocalTokens
from api.view import CLIENT_QUEUE, LiveView
from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import Alert, encode
from state.db import open_state
from storage.memory import MemoryStore
from tests.auth import bearer, parts, served, staff
from tests.test_api_access import World
from wardlink.config import load

SETTINGS = LimitSettings(max_body=1000, rate_per_s=5, burst=10, ws_max_frame=4096)


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        while True:
            await socket.send_text(await socket.receive_text())

    return app


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[str, Limits]]:
    """The echo app behind the limits; the token ``a-nurse`` is one the application verified (as n-ann's)."""
    verified = VerifiedTokens()
    verified.remember("a-nurse", "n-ann")
    limits = Limits(echo_app(), SETTINGS, verified=verified)
    async with served(limits, ws_max_size=SETTINGS.ws_max_frame) as host:
        yield host, limits


def test_a_large_body_is_refused_before_the_handler_reads_it() -> None:
    async def run() -> None:
        async with serving() as (host, limits), httpx.AsyncClient(base_url=f"http://{host}") as client:
            assert (await client.post("/echo", content=b"x" * 1000)).json() == {"bytes": 1000}
            assert (await client.post("/echo", content=b"x" * 1001)).status_code == 413

            async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
                for _ in range(5):
                    yield b"y" * 300

            answer = await client.post("/echo", content=chunked())
            assert answer.status_code == 413
            assert limits.counters["body_too_large"] == 2

    asyncio.run(run())


def test_a_flooding_client_is_slowed_while_others_go_on() -> None:
    async def run() -> None:
        async with serving() as (host, limits), httpx.AsyncClient(base_url=f"http://{host}") as client:
            flood = [await client.get("/ping", headers={"Authorization": "Bearer flooder"}) for _ in range(40)]
            codes = [r.status_code for r in flood]
            assert codes.count(429) >= 20  # the burst of 10 (plus what refilled meanwhile) passed, no more
            assert codes[:10] == [200] * 10
            refused = next(r for r in flood if r.status_code == 429)
            assert int(refused.headers["retry-after"]) >= 1
            other = await client.get("/ping", headers={"Authorization": "Bearer a-nurse"})
            assert other.status_code == 200  # a verified token: its owner's own bucket, not the address's
            assert limits.counters["rate_limited"] == codes.count(429)
            async with websockets.connect(f"ws://{host}/ws", additional_headers={"Authorization": "Bearer flooder"}):
                pytest.fail("the flooder's WebSocket handshake was accepted")

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(run())


def test_an_oversize_websocket_frame_ends_the_connection() -> None:
    async def run() -> None:
        async with serving() as (host, _), websockets.connect(f"ws://{host}/ws") as ws:
            await ws.send("a" * 100)
            assert await ws.recv() == "a" * 100
            await ws.send("b" * 5000)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009  # message too big

    asyncio.run(run())


def test_made_up_tokens_do_not_buy_fresh_buckets() -> None:
    async def run() -> None:
        async with serving() as (host, limits), httpx.AsyncClient(base_url=f"http://{host}") as client:
            rotating = [await client.get("/ping", headers={"Authorization": f"Bearer fake-{i}"}) for i in range(40)]
            codes = [r.status_code for r in rotating]
            assert codes[:10] == [200] * 10
            assert codes.count(429) >= 20  # a new unverified token each time: still the one address's bucket
            assert limits.counters["rate_limited"] == codes.count(429)
            nurse = await client.get("/ping", headers={"Authorization": "Bearer a-nurse"})
            assert nurse.status_code == 200

    asyncio.run(run())


async def test_the_api_gives_verified_tokens_their_own_bucket_and_forgeries_their_address(tmp_path: Path) -> None:
    config = load(env={})
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        state.registry.seed_from_site(config.site, now_ms())
        staff(state, ("n-icu", "nurse", "ICU"), at=now_ms() - 60_000)
        view = LiveView(config.site.id, BrokerAddress("127.0.0.1", 1))
        app = create_app(dataclasses.replace(parts(config.site, MemoryStore(), view, state),
                                             limits=LimitSettings(rate_per_s=0.5, burst=5)))
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
        forger = LocalTokens(b"not the API's key, but 32 bytes!")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            forged = [(await client.get("/api/v1/auth/me", headers=bearer("n-icu", forger))).status_code
                      for _ in range(20)]  # a new token every time, well formed, signed with the wrong key
            assert forged[:5] == [401] * 5  # the address's burst
            assert forged.count(429) >= 14
            mine = [(await client.get("/api/v1/auth/me", headers=bearer("n-icu"))).status_code for _ in range(10)]
            assert mine[:5] == [200] * 5  # a fresh valid token each time: the nurse's own bucket from the first
            assert mine.count(429) >= 4  # and that bucket is limited in its turn, whatever token she shows
    finally:
        state.close()


async def test_a_client_that_does_not_read_is_closed_1013_while_another_keeps_receiving(tmp_path: Path) -> None:
    world = World(tmp_path)
    padding = "x" * 8000  # large frames: the socket buffers between the two ends fill after hundreds, not thousands
    try:
        async with served(world.app, send_buffer=16384) as host, \
                httpx.AsyncClient(base_url=f"http://{host}") as client:

            async def connect(staff_id: str, **options: Any) -> Any:
                ticket = (await client.post("/api/v1/auth/ws-ticket", headers=bearer(staff_id))).json()["ticket"]
                return await websockets.connect(f"ws://{host}/api/v1/alerts/stream?ticket={ticket}", **options)

            stalled_socket = socket.create_connection(tuple(host.split(":")))  # type: ignore[arg-type]
            stalled_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled = await connect("n-icu", sock=stalled_socket, max_queue=1)  # reads nothing after the snapshot
            reader = await connect("c-icu")
            for ws in (stalled, reader):  # the snapshot: each stream is subscribed
                assert json.loads(await ws.recv())["type"] == "snapshot"
            received: list[str] = []

            async def read() -> None:
                async for raw in reader:
                    frame = json.loads(raw)
                    if frame["type"] == "alert":
                        received.append(frame["alert"]["id"])

            reading = asyncio.create_task(read())
            sent = 0
            deadline = time.monotonic() + 30
            while world.view.dropped_clients == 0:
                assert time.monotonic() < deadline, f"{sent} alerts and the stalled client was never cut off"
                for _ in range(CLIENT_QUEUE // 2):  # half a queue: a client that keeps up never overflows
                    sent += 1
                    alert = Alert(id=f"al-{sent}", type="spo2_low", source="ICU-01", alarm_kind="physiological",
                                  priority="high", state="active", onset=now_ms(), updated=now_ms(),
                                  message=padding, bed="ICU-01", unit="ICU")
                    world.view.apply(topics.alert_topic(world.site.id, alert.id), encode(alert))
                while len(received) < sent:  # the reading client keeps up: it has every alert before the next batch
                    assert time.monotonic() < deadline, f"{len(received)} of {sent} alerts reached the reader"
                    await asyncio.sleep(0.005)
            assert sent > CLIENT_QUEUE  # the stalled client's queue filled: not one burst too many for anyone
            assert world.view.dropped_clients == 1  # the stalled client only
            assert received == [f"al-{n}" for n in range(1, sent + 1)]  # every alert, in order
            assert not reading.done()
            async def drain() -> None:  # what the socket buffers still held for it, then the close
                while True:
                    await asyncio.wait_for(stalled.recv(), 10)

            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await drain()
            assert stalled.close_code == 1013
            await reader.close()
            await asyncio.gather(reading, return_exceptions=True)
            await stalled.close()
    finally:
        world.state.close()
