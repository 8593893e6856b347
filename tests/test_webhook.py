"""The signed webhook channel against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from alerts.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookChannel, WebhookSettings, verify
from alerts.routing import RoutingSettings, StepSpec
from devices.clock import now_ms
from devices.contract import Alert
from state import State, open_state
from state.escalations import Fired
from tests.test_escalation import alert, escalator, staffed

SECRET = "s3cret-for-tests"
SETTINGS = RoutingSettings(schedules={"high": [StepSpec("primary", 30)]}, confirm_s=10, channels=["webhook"])


class Pager(BaseHTTPRequestHandler):
    """A pager gateway: records each POST and answers with the class's status."""

    status: ClassVar[int] = 200
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Pager.received.append((dict(self.headers), body))
        self.send_response(Pager.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def pager() -> Iterator[str]:
    Pager.received = []
    Pager.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/page"
    server.shutdown()
    server.server_close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[State]:
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    staffed(state, start=now_ms() - 1000)
    yield state
    state.close()


def fired(state: State) -> tuple[Fired, Alert]:
    stored = alert(state)
    result = escalator(state, SETTINGS).start(stored, now_ms())
    assert isinstance(result, Fired)
    return result, stored


async def test_a_delivery_is_posted_signed_and_marked_delivered(pager: str, db: State,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDLINK_TEST_PAGER_SECRET", SECRET)
    channel = WebhookChannel(WebhookSettings("pager", pager, "WARDLINK_TEST_PAGER_SECRET"), escalator(db).escalations)
    step, stored = fired(db)
    (delivery,) = step.deliveries
    channel.send(step, stored)
    for _ in range(500):
        if channel.posted or channel.failed:
            break
        await asyncio.sleep(0.02)
    assert channel.posted == 1
    ((headers, body),) = Pager.received
    assert verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], now=now_ms())
    assert not verify(b"another secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], now=now_ms())
    assert not verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER],
                      now=now_ms())
    assert not verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER],
                      now=now_ms() + 3_600_000)  # a replay an hour later
    sent = json.loads(body)
    assert (sent["delivery"], sent["staff"], sent["alert"]["id"]) == (delivery.id, "n-ana", stored.id)
    recorded = escalator(db).escalations.delivery(delivery.id)
    assert recorded is not None
    assert recorded.status == "delivered"
    assert recorded.confirm_by is None


async def test_a_refused_post_leaves_the_delivery_to_its_deadline(pager: str, db: State,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDLINK_TEST_PAGER_SECRET", SECRET)
    Pager.status = 503
    channel = WebhookChannel(WebhookSettings("pager", pager, "WARDLINK_TEST_PAGER_SECRET"), escalator(db).escalations)
    step, stored = fired(db)
    assert not await channel.post(step.deliveries[0].id, msgspec.json.encode(stored))
    recorded = escalator(db).escalations.delivery(step.deliveries[0].id)
    assert recorded is not None
    assert recorded.status == "sent"
    assert recorded.confirm_by is not None  # the dispatcher raises "delivery.unconfirmed" when it passes


def test_the_secret_comes_from_the_environment(db: State, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARDLINK_TEST_PAGER_SECRET", raising=False)
    with pytest.raises(ValueError, match="WARDLINK_TEST_PAGER_SECRET"):
        WebhookChannel(WebhookSettings("pager", "http://127.0.0.1:9/", "WARDLINK_TEST_PAGER_SECRET"),
                       escalator(db).escalations)
