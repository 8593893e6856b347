"""The MQTT bus every service meets on: broker address, client factory and a supervised reconnect loop.

Library errors stop here: ``aiomqtt.MqttError`` and ``OSError`` from a connection become
:class:`BusError`, and :func:`supervise` restarts a service's session with jittered, capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


class BusError(ConnectionError):
    """The broker could not be reached or the connection broke."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The address as an ``mqtt://host:port`` URL."""
        return f"mqtt://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://host:port`` (port defaults to 1883); raise ValueError on anything else."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://HOST:PORT")
        return cls(parts.hostname, parts.port or 1883)


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
    return aiomqtt.Client(
        address.host,
        address.port,
        identifier=identifier,
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


async def heartbeat(client: aiomqtt.Client, topic: str, payload: Callable[[], bytes], interval_s: float) -> None:
    """Publish a retained status now and every ``interval_s`` (birth and heartbeat; the will says offline)."""
    while True:
        await client.publish(topic, payload(), qos=1, retain=True)
        await asyncio.sleep(interval_s)
