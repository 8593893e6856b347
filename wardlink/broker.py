"""The embedded MQTT broker (amqtt) for ``wardlink run`` without an external broker.

It is a real MQTT listener on the loopback interface, so outside clients such as ``mosquitto_sub``
can watch the bus. Anonymous access is allowed only because it binds to loopback.
"""

from __future__ import annotations

import errno
import logging
import socket

from amqtt.broker import Broker

from devices.bus import BrokerAddress

log = logging.getLogger(__name__)


def pick_port(host: str, preferred: int) -> int:
    """``preferred`` when nothing listens there, otherwise a free port chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, preferred))
            return preferred
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    log.info("port %d on %s is taken (another broker?); the embedded broker takes %d", preferred, host, port)
    return port


class EmbeddedBroker:
    """An amqtt broker on the loopback interface."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        """Choose the port now; nothing listens until :meth:`start`."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the embedded broker allows anonymous clients, so it only binds to loopback")
        self.address = BrokerAddress(host, pick_port(host, port))
        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.address.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })

    async def start(self) -> BrokerAddress:
        """Start listening."""
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s", self.address.url)
        return self.address

    async def stop(self) -> None:
        """Stop listening and drop all sessions."""
        await self._broker.shutdown()
