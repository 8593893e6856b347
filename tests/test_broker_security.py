"""`wardlink broker-config` against a real Mosquitto started with exactly what it generates.

Refused: anonymous connect, a wrong password, a client without the CA, cross-gateway publish, a
gateway's wildcard subscription (it receives nothing of other gateways), a wildcard or a foreign id in
a client id, everything under an empty ACL file, an oversize packet. Allowed: each process's own topics,
through the same client factory and config loading the services use.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices import bus, topics
from devices.site import site_from_dict
from tests.conftest import Mosquitto, free_port
from wardlink.broker_config import BrokerPlan, generate, password_hash
from wardlink.cli import main
from wardlink.config import BrokerSettings

SITE = site_from_dict({
    "id": "h1",
    "name": "Test hospital",
    "units": [{"id": "ICU", "name": "ICU", "beds": ["ICU-01"]}],
    "gateways": [{"id": "gw-a", "unit": "ICU"}, {"id": "gw-b", "unit": "ICU"}],
    "devices": [],
})


T = TypeVar("T")


def _answer(answers: dict[int, T], mid: int) -> T:
    deadline = time.monotonic() + 10
    while mid not in answers:
        assert time.monotonic() < deadline, "no answer from the broker"
        time.sleep(0.01)
    return answers[mid]


@dataclass
class Probe:
    """A paho MQTT 5 client that records what the broker answered."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    acks: dict[int, str] = field(default_factory=dict)
    granted: dict[int, list[str]] = field(default_factory=dict)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def publish(self, topic: str, payload: bytes) -> str:
        info = self.client.publish(topic, payload, qos=1)
        return _answer(self.acks, info.mid)

    def subscribe(self, topic: str) -> list[str]:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return _answer(self.granted, mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def probe(port: int, ca: Path | None, user: str | None = None, password: str | None = None, *,
          client_id: str = "", cert: tuple[Path, Path] | None = None) -> Probe:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    p = Probe(client)
    if ca is not None:
        client.tls_set(ca_certs=str(ca), certfile=str(cert[0]) if cert else None,
                       keyfile=str(cert[1]) if cert else None)
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(_c, _u, _f, rc, _p) -> None:  # type: ignore[no-untyped-def]
        p.reason = str(rc)
        p.connected.set()

    client.on_connect = on_connect
    client.on_publish = lambda _c, _u, mid, rc, _p: p.acks.__setitem__(mid, str(rc))
    client.on_subscribe = lambda _c, _u, mid, rcs, _p: p.granted.__setitem__(mid, [str(r) for r in rcs])
    client.on_message = lambda _c, _u, m: p.received.append((m.topic, bytes(m.payload)))
    client.on_disconnect = lambda *_: p.disconnected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    p.connected.wait(10)
    return p


@dataclass
class Secured:
    out: Path
    port: int
    broker: Mosquitto

    def password(self, identity: str) -> str:
        return (self.out / "credentials" / f"{identity}.password").read_text().strip()

    @property
    def ca(self) -> Path:
        return self.out / "tls" / "ca.crt"

    def login(self, identity: str, **kw: object) -> Probe:
        p = probe(self.port, self.ca, identity, self.password(identity), **kw)  # type: ignore[arg-type]
        assert p.reason == "Success", f"{identity}: {p.reason}"
        return p


@contextmanager
def start_generated(tmp_path: Path, **plan: object) -> Iterator[Secured]:
    out = tmp_path / "broker"
    port = free_port()
    # The broker keeps running as root here: pytest's tmp_path is private to root (0700), so the
    # "mosquitto" user the broker would drop to could not reach the files.
    generate(BrokerPlan(SITE, out, hosts=["127.0.0.1"], port=port, broker_user="root", **plan))  # type: ignore[arg-type]
    broker = Mosquitto(tmp_path)
    broker.conf, broker.port = out / "mosquitto.conf", port
    broker.start()
    try:
        yield Secured(out, port, broker)
    finally:
        broker.stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    with start_generated(tmp_path) as started:
        yield started


def data(gateway: str) -> str:
    return topics.gateway_topic("h1", gateway, "data")


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "gw-a", "s3cret"], check=True)
    line = pwfile.read_text().strip().split(":", 1)[1]
    _, _, iterations, salt, digest = line.split("$")
    assert password_hash("s3cret", base64.b64decode(salt), int(iterations)) == line
    assert password_hash("other", base64.b64decode(salt), int(iterations)) != line
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), 101, 64)


def test_generated_files_keep_secrets_private(tmp_path: Path) -> None:
    assert main(["broker-config", "--out", str(tmp_path / "b"), "--host", "broker.example"]) == 0
    out = tmp_path / "b"
    for secret in ("passwd", "tls/broker.key", "tls/ca.key", "credentials/gw-icu.password"):
        assert (out / secret).stat().st_mode & 0o077 == 0, secret
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "max_packet_size" in conf
    assert "set_tcp_nodelay true" in conf  # alarms are small packets: no Nagle delay
    assert conf.index("listener ") < conf.index("use_username_as_clientid")  # no default listener on 1883
    acl = (out / "acl").read_text()
    assert "pattern" not in acl
    assert "topic write wardlink/v1/demo/gw/gw-icu/data" in acl


def test_anonymous_wrong_password_and_untrusted_tls_are_refused(secured: Secured) -> None:
    assert probe(secured.port, secured.ca).reason == "Not authorized"
    assert probe(secured.port, secured.ca, "gw-a", "not-the-password").reason in ("Not authorized",
                                                                                "Bad user name or password")
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):  # the system CAs do not know the site's private CA
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    # Plain MQTT on the TLS port: a CONNECT (MQTT 3.1.1, client id "x") gets no CONNACK.
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as raw:
        raw.sendall(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 1]) + b"x")
        try:
            answer = raw.recv(4)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"\x20")


def test_a_gateway_speaks_only_for_itself(secured: Secured) -> None:
    ingest = secured.login("ingest-1")
    assert ingest.subscribe(topics.gateway_filter("h1", "data")) == ["Granted QoS 1"]
    gw_a = secured.login("gw-a")
    assert gw_a.subscribe(topics.gateway_filter("h1", "data")) != []  # granted or not, it must see nothing
    gw_b = secured.login("gw-b")
    assert gw_b.publish(data("gw-b"), b"b-own") in ("Success", "No matching subscribers")
    assert gw_a.publish(data("gw-b"), b"a-as-b") == "Not authorized"
    assert gw_a.publish(topics.gateway_topic("h1", "gw-a", "commit"), b"self-commit") == "Not authorized"
    assert gw_a.publish(data("gw-a"), b"a-own") in ("Success", "No matching subscribers")
    deadline = time.monotonic() + 5
    while len(ingest.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert sorted(p for _, p in ingest.received) == [b"a-own", b"b-own"]
    assert gw_a.received == []  # its wildcard subscription got neither gw-b's nor even its own data
    for p in (ingest, gw_a, gw_b):
        p.close()


@pytest.mark.parametrize("client_id", ["gw-b", "#", "gw-a/+", "ingest-1"])
def test_a_client_id_selects_nothing(secured: Secured, client_id: str) -> None:
    spy = secured.login("ingest-1", client_id="ingest-1")  # a sneaky "ingest-1" must not take its session over
    assert spy.subscribe(topics.gateway_filter("h1", "data")) == ["Granted QoS 1"]
    sneaky = secured.login("gw-a", client_id=client_id)
    assert sneaky.publish(data("gw-b"), b"x") == "Not authorized"
    assert sneaky.subscribe("#") != []
    assert sneaky.publish(data("gw-a"), b"mine") != "Not authorized"
    deadline = time.monotonic() + 5
    while not spy.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [t for t, _ in spy.received] == [data("gw-a")]
    assert not sneaky.received  # `#` gave it nothing, not even its own publish
    sneaky.close()
    spy.close()


def test_an_empty_acl_denies_everything(tmp_path: Path) -> None:
    with start_generated(tmp_path) as secured:
        secured.broker.stop()
        (secured.out / "acl").write_text("")
        secured.broker.start()
        ingest = secured.login("ingest-1")
        ingest.subscribe(topics.gateway_filter("h1", "data"))
        gw = secured.login("gw-a")
        assert gw.publish(data("gw-a"), b"x") == "Not authorized"
        time.sleep(0.5)
        assert ingest.received == []


def test_an_oversize_packet_ends_the_connection(tmp_path: Path) -> None:
    with start_generated(tmp_path, max_packet_size=64 * 1024) as secured:
        gw = secured.login("gw-a")
        gw.client.publish(data("gw-a"), b"x" * (128 * 1024), qos=1)
        assert gw.disconnected.wait(10)


def test_client_certificates_are_the_identity(tmp_path: Path) -> None:
    with start_generated(tmp_path, client_certs=True) as secured:
        clients = secured.out / "tls" / "clients"
        assert probe(secured.port, secured.ca, "gw-a", "whatever").reason != "Success"  # no certificate
        gw = probe(secured.port, secured.ca, cert=(clients / "gw-a.crt", clients / "gw-a.key"))
        assert gw.reason == "Success"
        assert gw.publish(data("gw-a"), b"x") in ("Success", "No matching subscribers")
        assert gw.publish(data("gw-b"), b"x") == "Not authorized"
        gw.close()


def test_services_connect_with_their_generated_config(secured: Secured) -> None:
    """Through BrokerSettings.address() and bus.client, as `wardlink serve` does: publish, share, commit."""

    def address(identity: str) -> bus.BrokerAddress:
        fragment = tomllib.loads((secured.out / "credentials" / f"{identity}.toml").read_text())["broker"]
        return BrokerSettings(**fragment).address()

    async def run() -> tuple[bytes, bytes]:
        async with bus.client(address("ingest-1"), "ignored-client-id", mqtt5=True) as ingest, \
                bus.client(address("gw-a"), "ignored-too", mqtt5=True) as gw:
            await ingest.subscribe(topics.gateway_filter("h1", "data", share="ingest"), qos=1)
            await gw.subscribe(topics.gateway_topic("h1", "gw-a", "commit"), qos=1)
            await gw.publish(data("gw-a"), b"batch", qos=1)
            got = await asyncio.wait_for(anext(aiter(ingest.messages)), 10)
            await ingest.publish(topics.gateway_topic("h1", "gw-a", "commit"), b"commit", qos=1)
            commit = await asyncio.wait_for(anext(aiter(gw.messages)), 10)
            return bytes(got.payload), bytes(commit.payload)

    assert asyncio.run(run()) == (b"batch", b"commit")
    assert "password" not in repr(address("gw-a"))
