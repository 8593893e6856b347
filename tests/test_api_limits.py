"""Request limits on a real uvicorn server: body size, per-client rate, WebSocket frame size."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import websockets
from fastapi import FastAPI, Request, WebSocket

from api.app import create_app
from api.limits import Limits, LimitSettings, VerifiedTokens
from api.security import LocalTokens
from api.view import LiveView
from devices.bus import BrokerAddress
from devices.clock import now_ms
from state.db import open_state
from storage.memory import MemoryStore
from tests.auth import bearer, parts, served, staff
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
