"""The hl7_pcd driver's ``connection`` table, validated when the driver is built (nothing connects meanwhile)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

from devices.site import DeviceSpec
from devices.topics import TopicError, check_name
from gateway.drivers.hl7_pcd.context import Routing, equipment_key
from gateway.drivers.hl7_pcd.mllp import DEFAULT_MAX_SIZE

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 2575  # IANA's port for HL7 over MLLP
_KEYS: Final = frozenset({
    "listen", "serial_port", "baudrate", "devices", "discover", "max_message_bytes", "max_connections",
    "partial_timeout_s", "idle_timeout_s", "write_timeout_s", "silence_s",
})


class ConfigError(ValueError):
    """A device's ``connection`` table is not usable; the message names the device and the key."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Transport and routing settings of one hl7_pcd driver (see sample.toml for each key)."""

    host: str = ""
    port: int = 0
    serial_port: str = ""
    baudrate: int = 9600
    devices: dict[str, str] = field(default_factory=dict)
    discover: bool = True
    max_message_bytes: int = DEFAULT_MAX_SIZE
    max_connections: int = 32
    partial_timeout_s: float = 5.0
    idle_timeout_s: float = 600.0
    write_timeout_s: float = 5.0
    silence_s: float = 0.0

    @property
    def listening(self) -> bool:
        """True for the TCP listener, False for a serial line."""
        return not self.serial_port

    def routing(self, spec: DeviceSpec) -> Routing:
        """How rows are routed to devices for this driver's device."""
        return Routing(device_id=spec.id, bed=spec.bed, serial_number=spec.serial_number, devices=self.devices,
                       discover=self.discover)


def load_settings(spec: DeviceSpec) -> Settings:
    """Read and check ``spec.connection``; raise :class:`ConfigError` naming what is wrong."""
    conn: dict[str, Any] = dict(spec.connection)
    where = f"device {spec.id}: connection"
    unknown = sorted(set(conn) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(_KEYS)})")
    if ("listen" in conn) == ("serial_port" in conn):
        raise ConfigError(f"{where}: set exactly one of listen (TCP) or serial_port")
    try:
        host, port = _listen(str(conn["listen"])) if "listen" in conn else ("", 0)
        devices = {equipment_key(str(k)): check_name(str(v), "device id") for k, v in
                   dict(conn.get("devices", {})).items()}
        settings = Settings(
            host=host, port=port, serial_port=str(conn.get("serial_port", "")),
            baudrate=int(conn.get("baudrate", 9600)), devices=devices,
            discover=bool(conn.get("discover", "listen" in conn)),
            max_message_bytes=int(conn.get("max_message_bytes", DEFAULT_MAX_SIZE)),
            max_connections=int(conn.get("max_connections", 32)),
            partial_timeout_s=float(conn.get("partial_timeout_s", 5.0)),
            idle_timeout_s=float(conn.get("idle_timeout_s", 600.0)),
            write_timeout_s=float(conn.get("write_timeout_s", 5.0)),
            silence_s=float(conn.get("silence_s", 0.0)),
        )
    except (TypeError, ValueError, TopicError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if settings.max_message_bytes < 1024 or settings.max_connections < 1 or settings.baudrate <= 0:
        raise ConfigError(f"{where}: max_message_bytes >= 1024, max_connections >= 1 and baudrate > 0 are required")
    if min(settings.partial_timeout_s, settings.idle_timeout_s, settings.write_timeout_s) <= 0:
        raise ConfigError(f"{where}: timeouts must be positive")
    return settings


def _listen(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or ``:port`` (all interfaces)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 0 <= port <= 65535:
        raise ValueError(f"listen port {port} is out of range")
    return host, port
