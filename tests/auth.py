"""Signing in from tests: tokens for seeded staff, the API's parts with a known key, and an app on a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn

from alerts.ruleset import catalogue
from api.app import ApiParts
from api.security import Authenticator, LocalTokens
from api.view import LiveView
from devices.site import Site
from facilities.sitemap import SiteMap
from state.db import State
from storage.base import TimeSeriesStore

KEY = b"a test key that is 32 bytes long"
TOKENS = LocalTokens(KEY)


def bearer(staff_id: str, tokens: LocalTokens = TOKENS) -> dict[str, str]:
    """The Authorization header of a member of staff."""
    return {"Authorization": f"Bearer {tokens.issue(staff_id)}"}


def system_bearer(data_dir: Path, staff_id: str = "n-icu") -> dict[str, str]:
    """A header for a member of staff of a running system (`wardlink run` seeds the demo users in data_dir)."""
    data_dir.mkdir(parents=True, exist_ok=True)  # the key is made by whoever comes first: the test or the system
    return bearer(staff_id, LocalTokens.from_data_dir(data_dir))


def staff(state: State, *people: tuple[str, str, str | None], at: int, until: int | None = None) -> None:
    """Seed ``(staff id, role, unit or None)``: clinical staff are assigned to every bed (charge: the unit)."""
    beds_of: dict[str, list[str]] = {}
    for unit_id, bed in _beds(state):
        beds_of.setdefault(unit_id, []).append(bed)
    for staff_id, role, unit in people:
        state.assignments.add_staff(staff_id, staff_id, role)
        if unit is None:
            continue
        end = until if until is not None else at + 86_400_000
        if role == "charge_nurse":
            state.assignments.assign(staff_id, unit, "charge", at, end)
        else:
            for bed in beds_of.get(unit, []):
                state.assignments.assign(staff_id, unit, "primary", at, end, bed=bed)


Roster = tuple[str, str, str, str | None, str | None, str | None]
"""(staff id, name, role, unit, duty, bed): one line of a test's staff; no unit or duty: not assigned."""


def roster(state: State, lines: list[Roster], *, now: int, hours: float = 1.0) -> None:
    """Seed staff with their exact duties (primary or buddy of a bed, charge of a unit) for ``hours`` around now."""
    span = int(hours * 3_600_000)
    for staff_id, name, role, unit, duty, bed in lines:
        state.assignments.add_staff(staff_id, name, role)
        if unit is not None and duty is not None:
            state.assignments.assign(staff_id, unit, duty, now - span, now + span, bed=bed)  # type: ignore[arg-type]


def _beds(state: State) -> list[tuple[str, str]]:
    with state.engine.connect() as conn:
        return [(str(u), str(b)) for b, u in conn.exec_driver_sql("SELECT id, unit_id FROM beds ORDER BY id")]


def parts(site: Site, store: TimeSeriesStore, view: LiveView, state: State, *,
          site_map: SiteMap | None = None) -> ApiParts:
    """The API's parts with the test key's tokens and the shipped rule catalogue."""
    return ApiParts(site=site, store=store, view=view, state=state, auth=Authenticator(state, TOKENS),
                    catalogue=catalogue(), site_map=site_map)


@asynccontextmanager
async def served(app: Any, *, send_buffer: int | None = None, **config: Any) -> AsyncIterator[str]:
    """``app`` on a real uvicorn on a free loopback port, in this event loop: yields ``host:port``.

    ``send_buffer``: the kernel's send buffer of every accepted connection, in bytes (small: a client that does
    not read stops the server's writes soon, instead of after megabytes)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited too: no Nagle delay per answer
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:  # uvicorn offers a flag, not an event
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()
