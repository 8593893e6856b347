"""Response models of the HTTP API (pydantic, so the OpenAPI document describes every field)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class DeviceRef(BaseModel):
    """A device bound to a bed."""

    id: str
    kind: str
    model: str = ""


class Bed(BaseModel):
    """A bed, its unit and its devices."""

    id: str
    unit: str
    devices: list[DeviceRef]


class Vital(BaseModel):
    """The latest value of one metric."""

    metric: str
    label: str
    code: int | None
    value: float
    unit: str
    ts: int
    time: str
    device: str
    flags: int = 0


class Point(BaseModel):
    """A raw reading (``value``) or a downsampled bucket (``mean``, ``min``, ``max``, ``count``)."""

    ts: int
    time: str
    value: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    count: int | None = None


class History(BaseModel):
    """History of one metric at one bed, or of one device."""

    bed: str | None = None
    device: str | None = None
    metric: str
    code: int | None
    unit: str | None
    start: str
    end: str
    step_ms: int | None
    points: list[Point]


class AlertOut(BaseModel):
    """An alert in its current state."""

    id: str
    type: str
    source: str
    alarm_kind: str
    priority: str
    state: str
    onset: int
    updated: int
    message: str
    bed: str | None = None
    unit: str | None = None
    metric: str | None = None
    value: float | None = None
    device_alert: str | None = None
    latched: bool = False
    condition_cleared: bool = False
    silenced_until: int | None = None
    silence_reason: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    repeats: int = 0
    delay_ms: int = 0
    v: int = 1


class DeviceOut(BaseModel):
    """A device in the registry (declared in the site file or discovered by a gateway) with its link state."""

    id: str
    kind: str
    gateway: str
    bed: str | None
    manufacturer: str
    model: str
    serial_number: str
    firmware: str = ""
    identifiers: dict[str, str] = {}
    discovered: bool = False
    state: str = "unknown"
    last_seen: str | None = None
    frames_ok: int = 0
    frames_bad: int = 0


class Component(BaseModel):
    """Health of one component."""

    state: str
    detail: dict[str, Any] = {}


class Health(BaseModel):
    """Health of the whole system."""

    status: str
    broker: Component
    store: Component
    gateways: dict[str, Component]
    services: dict[str, Component]
    open_alerts: int
    live_clients: int


class ErrorBody(BaseModel):
    """An error answer: what went wrong, in words (a 422 of request validation lists its problems instead)."""

    detail: str | list[Any]


# The errors any route may answer, declared once on the app so that the OpenAPI document lists what the API
# sends (tests/test_api_fuzz.py holds every response to it): the access check, an object missing or out of the
# caller's scope, a conflict, the rate limit, a body past the size limit and a store or broker that is down.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in (
        (401, "Not signed in, or the token is invalid or expired"),
        (403, "The caller's role may not use this route"),
        (404, "Not found, or outside the caller's units (answered alike)"),
        (409, "The request conflicts with the object's state"),
        (413, "Request body too large"),
        (422, "The request is not valid"),
        (429, "Too many requests"),
        (503, "A backend (store, broker) is unavailable"),
    )
}

# A route that answers CSV (an export): declared so the document lists text/csv beside JSON.
CSV: dict[int | str, dict[str, Any]] = {
    200: {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}}
