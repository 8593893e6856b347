"""The ingest worker's MQTT session: paho driven by the asyncio loop, reading and handing over in bulk.

aiomqtt (which the other services use) reads one packet per event-loop iteration with a ``recv`` per
header byte, wraps every message in an object and passes it through an asyncio queue to an ``async for``;
for a worker whose messages carry hundreds of observations that cost more than decoding them. A
:class:`Session` reads its socket in chunks, handles every complete packet of a chunk at once and gives
the consumer everything received since it last asked as ``(topic, payload)`` pairs.

Guarantees are aiomqtt's: QoS 1 messages are acknowledged (PUBACK) as they are read; at most
``max_queued`` wait to be taken, and past that new ones are discarded and counted (they are never
committed, so their gateway sends them again). Every failure of the connection becomes
:class:`devices.bus.BusError`, which :func:`devices.bus.supervise` restarts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.bus import BrokerAddress, BusError

log = logging.getLogger(__name__)

_CHUNK: Final = 256 * 1024  # bytes per recv: a few hundred-observation messages at once
_TAKE: Final = 1_000  # messages handed to the consumer at a time


class Publisher(Protocol):
    """What ingest publishes through (commits, gap events, its status): a session or an aiomqtt client."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Publish, returning once a QoS 1 message is acknowledged by the broker."""


class _ChunkedClient(mqtt.Client):
    """paho reading its socket a chunk at a time instead of one ``recv`` per header byte.

    paho reads a packet through ``_sock_recv`` (1 byte of type, 1-4 of length, then the rest); this
    serves those reads from one large ``recv``. Bytes left in the chunk are not seen by ``select``, so
    the owner must call ``loop_read`` again while :meth:`buffered` is true (paho-mqtt 2.1-2.2, pinned).
    """

    _chunk: bytes = b""
    _at: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        at, chunk = self._at, self._chunk
        if at >= len(chunk):
            data = super()._sock_recv(max(bufsize, _CHUNK))
            if len(data) <= bufsize:
                return data
            self._chunk = chunk = data
            at = 0
        self._at = at + bufsize
        return chunk[at:at + bufsize]

    def buffered(self) -> bool:
        """Whether bytes already received wait in the chunk."""
        return self._at < len(self._chunk)


def _identify(client: mqtt.Client, address: BrokerAddress) -> None:
    """Credentials and TLS as :func:`devices.bus.client` sets them, for an address that carries them.

    Read with ``getattr`` because the address gains them in the broker-security work (devices/bus.py);
    without them the connection is anonymous and in the clear, as every other client's.
    """
    username = getattr(address, "username", None)
    if username is not None:
        client.username_pw_set(username, getattr(address, "password", None))
    tls = getattr(address, "tls", None)
    if tls is not None:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)


class Session:
    """One MQTT connection (3.1.1 or 5) of an ingest worker, used as ``async with Session(...) as session``."""

    def __init__(self, address: BrokerAddress, identifier: str, *, will: tuple[str, bytes] | None = None,
                 mqtt5: bool = False, clean: bool = True, session_expiry_s: int = 0, keepalive: int = 10,
                 max_queued: int = 10_000, timeout_s: float = 10.0,
                 on_drop: Callable[[], None] | None = None) -> None:
        """A session to ``address``; ``will`` is a retained QoS 1 (topic, payload) sent if the connection dies."""
        self.address = address
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self._on_drop = on_drop
        self._keepalive = keepalive
        self._mqtt5 = mqtt5
        self._clean_start: bool | Literal[3] = clean if mqtt5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self._properties: Properties | None = None
        if mqtt5 and not clean and session_expiry_s > 0:  # none when clean: the default expiry is 0
            self._properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            self._properties.SessionExpiryInterval = session_expiry_s
        client = _ChunkedClient(CallbackAPIVersion.VERSION2, client_id=identifier,
                                clean_session=None if mqtt5 else clean,
                                protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        _identify(client, address)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._client = client
        self._inbox: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        self._lost: BusError | None = None
        self._closing = False
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._connected: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._fd = -1

    # -- what the worker calls -------------------------------------------------------------------------------------
    def queued(self) -> int:
        """Messages received and not yet taken by :meth:`received`."""
        return len(self._inbox)

    async def received(self) -> list[tuple[str, bytes]]:
        """Wait for messages; return those received so far (up to 1,000) as ``(topic, payload)``, oldest first."""
        while not self._inbox:
            if self._lost is not None:
                raise self._lost
            self._wake.clear()
            await self._wake.wait()
        if self._lost is not None:
            raise self._lost  # taken or not, nothing of this session is committed: the gateways send it again
        taken = self._inbox[:_TAKE]
        del self._inbox[:_TAKE]
        return taken

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe; raise BusError if the broker refuses."""
        result, mid = self._client.subscribe(topic, qos=qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BusError(f"subscribe to {topic}: {mqtt.error_string(result)}")
        codes: list[ReasonCode] = await self._acked(mid, f"subscribe to {topic}")
        if any(code.is_failure for code in codes):
            raise BusError(f"subscribe to {topic}: refused by the broker ({', '.join(map(str, codes))})")

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Publish; with QoS 1, return once the broker acknowledged it."""
        if self._lost is not None:
            raise self._lost
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BusError(f"publish to {topic}: {mqtt.error_string(info.rc)}")
        if qos > 0:
            await self._acked(info.mid, f"publish to {topic}")

    async def _acked(self, mid: int, what: str) -> Any:  # a SUBACK's codes or a PUBACK's None
        if self._lost is not None:
            raise self._lost
        future = asyncio.get_running_loop().create_future()
        self._acks[mid] = future  # paho answers only from the reader, on this thread: never before this line
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise BusError(f"{what}: no answer from {self.address.url} within {self.timeout_s:.0f} s") from None
        finally:
            self._acks.pop(mid, None)

    # -- connecting and disconnecting ------------------------------------------------------------------------------
    async def __aenter__(self) -> Session:
        """Connect; raise BusError if the broker cannot be reached or refuses."""
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connected = loop.create_future()
        client = self._client
        try:
            # connect() blocks on the TCP connection, so it runs in a thread; paho calls our socket hooks there.
            await loop.run_in_executor(None, lambda: client.connect(
                self.address.host, self.address.port, self._keepalive, clean_start=self._clean_start,
                properties=self._properties))
        except (OSError, ValueError) as exc:
            raise BusError(f"broker {self.address.url}: {exc}") from exc
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), self.timeout_s)
        except (TimeoutError, BusError) as exc:
            self._close_socket()
            if isinstance(exc, BusError):
                raise
            raise BusError(f"broker {self.address.url}: no CONNACK within {self.timeout_s:.0f} s") from None
        self._misc = loop.create_task(self._keep_alive())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Disconnect cleanly (no will), or close the socket if the broker does not take the DISCONNECT in 2 s."""
        self._closing = True
        if self._misc is not None:
            self._misc.cancel()
        if self._lost is None and self._fd >= 0:
            assert self._loop is not None
            self._closed = self._loop.create_future()
            if self._client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._closed), 2.0)
        self._close_socket()

    def _close_socket(self) -> None:
        sock = self._client.socket()
        self._unregister()
        if isinstance(sock, socket.socket):
            sock.close()

    async def _keep_alive(self) -> None:
        # paho's keepalive clock: PINGREQ when idle, and a broker that stopped answering is noticed.
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - polling paho, not waiting on us
            await asyncio.sleep(1.0)

    # -- paho's hooks (on the loop's thread, except the socket ones during connect) --------------------------------
    def _call(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, _client: mqtt.Client, _userdata: object, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # commits leave at once
        self._fd = sock.fileno()
        assert self._loop is not None
        self._call(self._loop.add_reader, self._fd, self._readable)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: object, _sock: object) -> None:
        self._call(self._unregister)

    def _unregister(self) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = -1

    def _on_register_write(self, _client: mqtt.Client, _userdata: object, _sock: object) -> None:
        assert self._loop is not None
        self._call(self._add_writer)

    def _add_writer(self) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._loop.add_writer(self._fd, self._writable)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: object, _sock: object) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._call(self._loop.remove_writer, self._fd)

    def _readable(self) -> None:
        """Read every packet already received: the chunk's and, on TLS, the decrypted bytes OpenSSL holds."""
        client = self._client
        try:
            while client.loop_read() == mqtt.MQTT_ERR_SUCCESS:
                sock = client.socket()
                if not (client.buffered() or (isinstance(sock, ssl.SSLSocket) and sock.pending())):
                    break
        except OSError as exc:  # paho turns most socket errors into a return code; not all
            self._lose(BusError(f"broker {self.address.url}: {exc}"))
            self._close_socket()
        if self._inbox:
            self._wake.set()

    def _writable(self) -> None:
        try:
            self._client.loop_write()
        except OSError as exc:
            self._lose(BusError(f"broker {self.address.url}: {exc}"))
            self._close_socket()

    def _on_connect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode,
                    _properties: object = None) -> None:
        if self._connected is None or self._connected.done():
            return
        if reason.is_failure:
            self._connected.set_exception(BusError(f"broker {self.address.url} refused the connection: {reason}"))
        else:
            self._connected.set_result(None)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode,
                       _properties: object = None) -> None:
        self._call(self._disconnected, reason)

    def _disconnected(self, reason: ReasonCode) -> None:
        error = BusError(f"broker {self.address.url}: connection lost ({reason})")
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(error)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if not self._closing:
            self._lose(error)

    def _lose(self, error: BusError) -> None:
        if self._lost is None:
            self._lost = error
            log.debug("%s", error)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(error)
        self._wake.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if len(self._inbox) >= self.max_queued:
            if self._on_drop is not None:
                self._on_drop()  # never committed: its gateway sends it again
            return
        self._inbox.append((message.topic, bytes(message.payload)))

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, _reason: object,
                    _properties: object) -> None:
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, mid: int, codes: list[ReasonCode],
                      _properties: object) -> None:
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(codes)
