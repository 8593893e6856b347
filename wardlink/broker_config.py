"""``wardlink broker-config``: a production Mosquitto configuration for a site, secure by default.

What it writes into one directory (RELIABILITY.md item 23):

- ``mosquitto.conf``: no anonymous access, one TLS listener, a packet-size limit, the client id forced
  to the authenticated identity (``use_username_as_clientid``: a ``+`` or ``#`` in a client id, or
  another process's id, selects nothing), bounded queues, persistence;
- ``passwd``: one identity per gateway and per service instance, PBKDF2-SHA512 hashed in Mosquitto's
  own ``$7$`` format (the plain passwords go to ``credentials/<identity>.password``, mode 0600, for
  the process that uses it, and nowhere else);
- ``acl``: deny by default; a gateway may publish only its own data, alarm and status topics and read
  only its own commits and the ingest workers' statuses (a new ingest session makes it resend); ingest
  reads every gateway's data, alarms and commits and publishes commits;
  alerts read gateway data and alarms and publish alerts; the API reads alerts and statuses;
- ``tls/``: with ``--tls self-signed``, a CA, the broker's certificate for ``--host`` names, and with
  ``--client-certs`` a certificate per identity (CN = identity; the broker then takes the identity from
  the certificate and no password is needed). With ``--tls files`` the operator's own files are named
  in the configuration instead.

Every identity's config fragment (``credentials/<identity>.toml``) is the ``[broker]`` table that
process needs: merge it with ``--config``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import pwd
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from devices import topics
from devices.site import Site

HASH_ITERATIONS: Final = 101  # what mosquitto_passwd 2.0 writes; the broker reads the count from the line
DEFAULT_PORT: Final = 8883
DEFAULT_MAX_PACKET: Final = 4 * 1024 * 1024 + 64 * 1024  # ingest's max_payload plus the MQTT header

Role = Literal["gateway", "ingest", "alerts", "api"]


@dataclass(frozen=True, slots=True)
class Identity:
    """One MQTT identity: a gateway or one service instance."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    """What to generate."""

    site: Site
    out: Path
    hosts: Sequence[str] = ("localhost",)
    port: int = DEFAULT_PORT
    tls: Literal["self-signed", "files"] = "self-signed"
    client_certs: bool = False
    ingest_workers: int = 2
    alerts_instances: int = 1
    api_instances: int = 1
    max_packet_size: int = DEFAULT_MAX_PACKET
    broker_user: str = "mosquitto"  # Mosquitto started as root drops to this user: it must read passwd, acl, key
    # --tls files: the operator's broker certificate, key and CA
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def identities(plan: BrokerPlan) -> list[Identity]:
    """Every identity of the site: its gateways, then the service instances."""
    found = [Identity(topics.check_name(g.id, "gateway"), "gateway") for g in plan.site.gateways]
    for role, count in (("ingest", plan.ingest_workers), ("alerts", plan.alerts_instances),
                        ("api", plan.api_instances)):
        found += [Identity(f"{role}-{n}", role) for n in range(1, count + 1)]  # type: ignore[arg-type]
    return found


def password_hash(password: str, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """A Mosquitto 2.0 password-file hash (``$7$``: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte key)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def acl_rules(site: str, identity: Identity) -> list[str]:
    """The ACL lines of one identity (``topic read|write FILTER``); everything else is denied."""
    gw = f"{topics.ROOT}/{topics.check_name(site, 'site')}/gw"
    svc = f"{topics.ROOT}/{site}/svc"
    if identity.role == "gateway":
        own = f"{gw}/{identity.name}"
        return [f"topic write {own}/data", f"topic write {own}/alarm", f"topic write {own}/status",
                f"topic read {own}/commit",
                f"topic read {svc}/ingest/+/status"]  # a new ingest session: resend what is uncommitted
    own_status = f"topic write {svc}/{identity.role}/{identity.name}/status"
    if identity.role == "ingest":
        return [f"topic read {gw}/+/data", f"topic read {gw}/+/alarm", f"topic readwrite {gw}/+/commit",
                f"topic write {gw}/+/alarm",  # data-gap events travel on the gateway's alarm lane
                f"topic read {svc}/+/+/status", own_status]
    if identity.role == "alerts":
        return [f"topic read {gw}/+/data", f"topic read {gw}/+/alarm", f"topic read {gw}/+/status",
                f"topic readwrite {topics.alert_filter(site)}", f"topic write {topics.notify_filter(site)}",
                f"topic read {topics.presence_filter(site)}", own_status]
    return [f"topic read {topics.alert_filter(site)}", f"topic read {topics.notify_filter(site)}",
            f"topic write {topics.presence_filter(site)}",  # who has a live alert stream here
            f"topic read {gw}/+/status", f"topic read {svc}/+/+/status"]


def acl_text(site: str, ids: Iterable[Identity]) -> str:
    """The whole ACL file: one ``user`` block per identity, no ``pattern`` lines, no anonymous block."""
    blocks = ["# Wardlink broker ACL: deny by default; each identity may use only the topics below.\n"]
    for identity in ids:
        blocks.append(f"# {identity.role}\nuser {identity.name}\n" + "\n".join(acl_rules(site, identity)) + "\n")
    return "\n".join(blocks)


def mosquitto_conf(plan: BrokerPlan, out: Path) -> str:
    """The broker configuration (Mosquitto 2.0)."""
    tls = out / "tls"
    ca, cert, key = ((plan.ca_file, plan.cert_file, plan.key_file) if plan.tls == "files"
                     else (str(tls / "ca.crt"), str(tls / "broker.crt"), str(tls / "broker.key")))
    lines = [
        "# Generated by `wardlink broker-config`; regenerate rather than edit.",
        "per_listener_settings false",
        f"user {plan.broker_user}",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        f"max_packet_size {plan.max_packet_size}",
        "max_inflight_messages 100",
        "# Send at once: with Nagle's algorithm a small publish (an alarm) can wait ~40 ms for a delayed ACK.",
        "set_tcp_nodelay true",
        "# Per client session: room for an ingest restart, bounded.",
        "max_queued_messages 100000",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        "",
        f"listener {plan.port}",
        "# The client id is the identity: a wildcard or another process's id in a client id selects nothing.",
        "# (A listener option: written before the first listener it would open a default one on 1883.)",
        "use_username_as_clientid true",
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
        "tls_version tlsv1.2",
    ]
    if plan.client_certs:
        lines += ["require_certificate true", "use_identity_as_username true"]
    return "\n".join(lines) + "\n"


def broker_fragment(plan: BrokerPlan, identity: Identity, out: Path) -> str:
    """The ``[broker]`` table of one process's config."""
    host = plan.hosts[0]
    lines = ["[broker]", f'url = "mqtts://{host}:{plan.port}"', f'username = "{identity.name}"']
    ca = plan.ca_file if plan.tls == "files" else str(out / "tls" / "ca.crt")
    lines.append(f'ca_file = "{ca}"')
    if plan.client_certs:
        lines += [f'cert_file = "{out / "tls" / "clients" / identity.name}.crt"',
                  f'key_file = "{out / "tls" / "clients" / identity.name}.key"']
    else:
        lines.append(f'password_file = "{out / "credentials" / identity.name}.password"')
    return "\n".join(lines) + "\n"


def _write_secret(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (created 0600, never world-readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate(plan: BrokerPlan) -> list[Identity]:
    """Write the configuration into ``plan.out``; return the identities."""
    out = plan.out.resolve()
    for sub in ("credentials", "data", "tls"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = identities(plan)
    passwd = []
    for identity in ids:
        password = secrets.token_urlsafe(24)
        passwd.append(f"{identity.name}:{password_hash(password)}")
        if not plan.client_certs:
            _write_secret(out / "credentials" / f"{identity.name}.password", password.encode() + b"\n")
        _write_secret(out / "credentials" / f"{identity.name}.toml", broker_fragment(plan, identity, out).encode())
    _write_secret(out / "passwd", ("\n".join(passwd) + "\n").encode())
    (out / "acl").write_text(acl_text(plan.site.id, ids), encoding="utf-8")
    (out / "mosquitto.conf").write_text(mosquitto_conf(plan, out), encoding="utf-8")
    if plan.tls == "self-signed":
        write_self_signed(out / "tls", plan.hosts, [i.name for i in ids] if plan.client_certs else [])
    _hand_to_broker(plan.broker_user, [out / "passwd", out / "acl", out / "data", out / "tls" / "broker.key"])
    return ids


def _hand_to_broker(user: str, paths: Iterable[Path]) -> None:
    """Give the broker's user the files it reads (only possible, and only needed, when run as root)."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # no such user here: the broker keeps running as whoever starts it
    for path in paths:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)


def write_self_signed(tls: Path, hosts: Sequence[str], clients: Sequence[str]) -> None:
    """A private CA (``ca.crt``/``ca.key``), the broker's certificate for ``hosts`` and one per client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Wardlink"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("Wardlink broker CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=825))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .sign(ca_key, hashes.SHA256()))
    (tls / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_secret(tls / "ca.key", key_pem(ca_key))

    def issue(common: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=397))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert, key = issue(hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)
    (tls / "broker.crt").write_bytes(cert)
    _write_secret(tls / "broker.key", key)
    if clients:
        (tls / "clients").mkdir(exist_ok=True)
    for client in clients:
        cert, key = issue(client, [], ExtendedKeyUsageOID.CLIENT_AUTH)
        (tls / "clients" / f"{client}.crt").write_bytes(cert)
        _write_secret(tls / "clients" / f"{client}.key", key)
