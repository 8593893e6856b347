"""The MQTT bus every service meets on: broker address, client factory and a supervised reconnect loop.

Library errors stop here: ``aiomqtt.MqttError`` and ``OSError`` from a connection become
:class:`BusError`, and :func:`supervise` restarts a service's session with jittered, capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


class BusError(ConnectionError):
    """The broker could not be reached or the connection broke."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS for the broker connection: the CA that signed the broker's certificate, and optionally this
    client's own certificate and key (when the broker authenticates clients by certificate)."""

    ca_file: str | None = None  # None: the system's trusted CAs
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens, and who this process is to it (username/password and/or TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never logged
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        """The address as an ``mqtt://host:port`` (or ``mqtts://``) URL, without credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://host:port`` (port defaults to 1883) or ``mqtts://host:port`` (8883, TLS with the
        system's CAs); raise ValueError on anything else, including credentials in the URL."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        if parts.username or parts.password:
            raise ValueError("broker URL: credentials do not belong in a URL; set broker.username and "
                             "broker.password_file")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls=TlsFiles() if tls else None)

    def with_identity(self, username: str | None, password_file: str | None = None,
                      tls: TlsFiles | None = None) -> BrokerAddress:
        """This address as ``username`` (its password read from ``password_file``), with ``tls`` if given."""
        password = None
        if password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"broker password file {password_file}: {exc.strerror or exc}") from exc
            if not password:
                raise ValueError(f"broker password file {password_file} is empty")
        return replace(self, username=username, password=password, tls=tls or self.tls)


def client(
    address: BrokerAddress,
    identifier: str,
    *,
    will: aiomqtt.Will | None = None,
    clean_session: bool = True,
    keepalive: int = 10,
    max_queued_incoming: int = 10_000,
    mqtt5: bool = False,
    session_expiry_s: int = 0,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
) -> aiomqtt.Client:
    """An MQTT 3.1.1 (or, with ``mqtt5``, 5.0) client with a bounded incoming queue (aiomqtt's is unbounded).

    With ``mqtt5`` the session is started clean when ``clean_session`` is true; otherwise it is resumed
    and kept ``session_expiry_s`` after a disconnect (MQTT 5 ends a session at disconnect by default).
    ``queue_type`` may count what the bounded queue discards when full (aiomqtt only logs it).
    """
    properties: Properties | None = None
    if mqtt5 and not clean_session and session_expiry_s > 0:  # none when clean: the default expiry is 0
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
    tls = address.tls
    return aiomqtt.Client(
        address.host,
        address.port,
        identifier=identifier,
        username=address.username,
        password=address.password,
        tls_params=aiomqtt.TLSParameters(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        if tls else None,
        will=will,
        protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else None,
        clean_session=None if mqtt5 else clean_session,
        clean_start=clean_session if mqtt5 else MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        keepalive=keepalive,
        max_queued_incoming_messages=max_queued_incoming,
        max_inflight_messages=100,
        queue_type=queue_type,
        timeout=10,
    )


def no_delay(client: aiomqtt.Client) -> None:
    """Send small packets at once (TCP_NODELAY) on a connected client: an alarm must not sit out Nagle's wait for
    the broker's delayed ACK (about 40 ms on Linux) behind the PUBACK just sent on the same connection."""
    sock = client._client.socket()  # aiomqtt keeps paho's client private; its socket exists once connected
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# A service's reconnect to the broker backs off to this at most: alarms raised while the broker is down must
# arrive within 5 s of its recovery (RELIABILITY.md 3), and every hop (gateway, ingest, alerts) reconnects on
# its own. One connection attempt every 2 s per client costs a broker nothing.
RECONNECT_MAX_S: Final = 2.0


async def supervise(
    name: str,
    session: Callable[[], Awaitable[None]],
    *,
    initial_backoff: float = 0.5,
    max_backoff: float = 15.0,
) -> None:
    """Run ``session`` until cancelled, restarting it after any failure with jittered backoff.

    This is the one supervisor loop of a long-running task, so it is the one place that catches
    every exception: a failing session is logged and restarted, never allowed to end the process.
    """
    backoff = initial_backoff
    while True:
        started = asyncio.get_running_loop().time()
        try:
            await session()
            log.info("%s: session ended, restarting", name)
        except asyncio.CancelledError:
            raise
        except (aiomqtt.MqttError, OSError, BusError) as exc:
            log.warning("%s: broker connection lost (%s); retrying in %.1f s", name, exc, backoff)
        except Exception:  # the supervisor: log, back off, restart
            log.exception("%s: crashed; restarting in %.1f s", name, backoff)
        if asyncio.get_running_loop().time() - started > 30:
            backoff = initial_backoff  # it ran well for a while: start the backoff over
        await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
        backoff = min(max_backoff, backoff * 2)


async def messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    """``client.messages``, but a cancelled task stops here even if its cancellation was swallowed.

    On Python 3.11 ``asyncio.wait_for`` (which aiomqtt's ``publish`` uses to wait for the PUBACK) can
    swallow a cancellation that arrives as the awaited future completes (CPython gh-86296, fixed in
    3.12). A service loop that then went back to waiting for the next message would never end, and
    with it the shutdown of the whole process. ``Task.cancelling()`` still counts the request, so the
    loop checks it before every wait.
    """
    task = asyncio.current_task()
    async for message in client.messages:
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        yield message
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], *, grace_s: float = 15.0, what: str = "tasks") -> None:
    """Cancel ``tasks`` and wait for them, at most ``grace_s``: one that does not end is named in the log and
    left behind, so that a stop always finishes (stores closed, outboxes flushed) instead of hanging."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=grace_s)
    if still:
        log.error("%s did not stop within %.0f s after cancellation: %s", what, grace_s,
                  ", ".join(sorted(t.get_name() for t in still)))
    for task in pending - still:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s ended with %r", task.get_name(), task.exception())


async def heartbeat(client: aiomqtt.Client, topic: str, payload: Callable[[], bytes], interval_s: float) -> None:
    """Publish a retained status now and every ``interval_s`` (birth and heartbeat; the will says offline)."""
    while True:
        await client.publish(topic, payload(), qos=1, retain=True)
        await asyncio.sleep(interval_s)
