"""Request limits on a real uvicorn server: body size, per-client rate, WebSocket frame size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI, Request, WebSocket

from api.limits import Limits, LimitSettings
from tests.conftest import free_port

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
    limits = Limits(echo_app(), SETTINGS)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(limits, host="127.0.0.1", port=port, log_level="warning",
                                           ws_max_size=SETTINGS.ws_max_frame))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}", limits
    finally:
        server.should_exit = True
        await task


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
            assert other.status_code == 200
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
