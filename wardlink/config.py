"""Configuration: embedded defaults, merged with an optional TOML file, then WARDLINK_* variables.

Validation only reads and checks; nothing connects while the configuration is built, and nothing
is built at import time.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from alerts.service import AlertSettings
from devices.bus import BrokerAddress, TlsFiles
from devices.site import Site, SiteError
from facilities.service import FacilitiesSettings
from gateway.service import GatewaySettings
from ingest.service import IngestSettings
from simulators.scenario import ScenarioError, load_scenario


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and field."""


class BrokerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which broker to use."""

    url: str = ""  # empty: the embedded broker; mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 1883
    # This process's identity on a secured broker (`wardlink broker-config` writes one per process):
    username: str = ""
    password_file: str = ""  # the password is read from this file, never written in the config
    ca_file: str = ""  # the CA of the broker's certificate (mqtts:// only; empty: the system's CAs)
    cert_file: str = ""  # this process's client certificate and key, when the broker asks for one
    key_file: str = ""

    def address(self) -> BrokerAddress:
        """The external broker's address with this process's identity; raise ConfigError when it is wrong."""
        try:
            address = BrokerAddress.parse(self.url)
            tls = None
            if self.ca_file or self.cert_file or self.key_file:
                if address.tls is None:
                    raise ValueError("broker.ca_file/cert_file/key_file need an mqtts:// URL")
                tls = TlsFiles(self.ca_file or None, self.cert_file or None, self.key_file or None)
            return address.with_identity(self.username or None, self.password_file or None, tls)
        except ValueError as exc:
            raise ConfigError(f"broker: {exc}") from exc


class ApiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the API listens, and its request limits (docs/security.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1024 * 1024
    rate_per_s: float = 50.0  # requests per client (its token, else its address) ...
    burst: int = 200  # ... with this burst
    ws_max_frame_bytes: int = 64 * 1024


class AuthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who may sign in: local users (the embedded identity provider) and/or the hospital's OIDC provider."""

    local: bool = True  # passwords in the state, tokens signed with <data>/token.key
    token_ttl_s: int = 900
    demo_users: bool = True  # `wardlink run` with the simulation seeds one user per role (data/demo-users.toml)
    oidc_issuer: str = ""  # e.g. https://idp.hospital.example/realms/wards; empty: no OIDC
    oidc_audience: str = "wardlink-api"
    oidc_jwks_url: str = ""  # the provider's published keys (its discovery document's jwks_uri)
    oidc_algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    oidc_subject_claim: str = "preferred_username"  # the claim holding the Wardlink staff id


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The time-series store: embedded DuckDB (chosen by measurement), embedded SQLite (several processes
    on one machine), or a VictoriaMetrics server (production; InfluxDB line protocol in, PromQL out)."""

    engine: Literal["duckdb", "sqlite", "victoria"] = "duckdb"
    url: str = "http://127.0.0.1:8428"  # victoria: the server
    retention_days: int = 31  # victoria: must match the server's -retentionPeriod
    memory_limit_mb: Annotated[int, msgspec.Meta(ge=64)] = 64  # duckdb: its buffer pool (docs/storage.md, Memory)


class StateSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The relational state: SQLite in the data directory unless a database URL is given."""

    url: str = ""  # e.g. postgresql+psycopg://wardlink@db/wardlink; empty: sqlite in the data directory


class SimulationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The simulated hospital: a shipped scenario's name or a scenario file's path."""

    enabled: bool = True
    scenario: str = "hospital"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything ``wardlink run`` needs."""

    site: Site
    data_dir: str = "data"
    broker: BrokerSettings = BrokerSettings()
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    store: StoreSettings = StoreSettings()
    state: StateSettings = StateSettings()
    gateway: GatewaySettings = GatewaySettings()
    ingest: IngestSettings = IngestSettings()
    alerts: AlertSettings = AlertSettings()
    facilities: FacilitiesSettings = FacilitiesSettings()
    simulation: SimulationSettings = SimulationSettings()

    @property
    def data_path(self) -> Path:
        """The data directory."""
        return Path(self.data_dir)


_ENV = {
    "WARDLINK_DATA_DIR": ("data_dir",),
    "WARDLINK_BROKER": ("broker", "url"),
    "WARDLINK_API_HOST": ("api", "host"),
    "WARDLINK_API_PORT": ("api", "port"),
    "WARDLINK_STORE_URL": ("store", "url"),
    "WARDLINK_STATE_URL": ("state", "url"),
}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge tables; arrays and values in ``over`` replace those in ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def defaults() -> dict[str, Any]:
    """The embedded defaults as a dict."""
    text = resources.files("wardlink").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load(path: Path | Sequence[Path] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Build and validate the configuration: defaults < files (in order) < environment < ``overrides``.

    Files are TOML, or JSON when they end in ``.json`` (what ``wardlink simulate`` writes).
    """
    data = defaults()
    paths = [path] if isinstance(path, Path) else list(path or [])
    for file in paths:
        try:
            text = file.read_text(encoding="utf-8")
            data = _merge(data, json.loads(text) if file.suffix == ".json" else tomllib.loads(text))
        except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            raise ConfigError(f"config file {file}: {exc}") from exc
    for name, keys in _ENV.items():
        value = (os.environ if env is None else env).get(name)
        if value is not None:
            table = data
            for key in keys[:-1]:
                table = table.setdefault(key, {})
            table[keys[-1]] = value
    if overrides:
        data = _merge(data, overrides)
    try:
        config = msgspec.convert(data, Config, strict=False)
    except (msgspec.ValidationError, SiteError) as exc:
        raise ConfigError(f"config{' ' + ', '.join(map(str, paths)) if paths else ''}: {exc}") from exc
    if config.simulation.enabled:
        try:
            scenario = load_scenario(config.simulation.scenario)
        except ScenarioError as exc:
            raise ConfigError(str(exc)) from exc
        unknown = scenario.devices() - {d.id for d in config.site.devices}
        if unknown:
            raise ConfigError(f"simulation.scenario {config.simulation.scenario}: devices {sorted(unknown)} "
                              "are not devices of the site")
    return config
