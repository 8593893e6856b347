"""MQTT topic names: every topic string is built and parsed here and nowhere else.

Layout (``v1`` is the contract version, ``site`` one hospital or campus)::

    wardlink/v1/{site}/gw/{gateway}/data      Batch of observations, tag reads, waste events (QoS 1)
    wardlink/v1/{site}/gw/{gateway}/alarm     Batch of device events: its own topic, never behind telemetry
    wardlink/v1/{site}/gw/{gateway}/status    GatewayStatus, retained; the last will says offline
    wardlink/v1/{site}/gw/{gateway}/commit    Commit from ingest: ranges the gateway may release
    wardlink/v1/{site}/svc/{service}/{instance}/status   ServiceStatus, retained
    wardlink/v1/{site}/alert/{alert_id}       Alert, retained while not resolved
    wardlink/v1/{site}/notify/{staff}         Notification: an alert routed to one member of staff
    wardlink/v1/{site}/presence/{instance}    Presence: staff with a live stream on an API instance, retained
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

ROOT: Final = "wardlink/v1"
GatewayChannel = Literal["data", "alarm", "status", "commit"]
_GATEWAY_CHANNELS: Final = ("data", "alarm", "status", "commit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class TopicError(ValueError):
    """A topic that is not one of Wardlink's, or a name that cannot be a topic level."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as one topic level (no wildcards, separators or spaces)."""
    if not _NAME.match(name):
        raise TopicError(f"{what} {name!r} cannot be used in a topic (letters, digits, _ . : - only)")
    return name


def gateway_topic(site: str, gateway: str, channel: GatewayChannel) -> str:
    """Topic of one gateway channel."""
    return f"{ROOT}/{check_name(site, 'site')}/gw/{check_name(gateway, 'gateway')}/{channel}"


def gateway_filter(site: str, channel: GatewayChannel, share: str | None = None) -> str:
    """Subscription filter for one channel of every gateway, optionally as an MQTT 5 shared subscription."""
    topic = f"{ROOT}/{check_name(site, 'site')}/gw/+/{channel}"
    return f"$share/{check_name(share, 'share group')}/{topic}" if share else topic


def service_topic(site: str, service: str, instance: str) -> str:
    """Status topic of one backend service instance."""
    return f"{ROOT}/{check_name(site, 'site')}/svc/{check_name(service, 'service')}/{check_name(instance)}/status"


def service_filter(site: str, service: str = "+") -> str:
    """Subscription filter for every service's status, or every instance of one ``service``."""
    kind = service if service == "+" else check_name(service, "service")
    return f"{ROOT}/{check_name(site, 'site')}/svc/{kind}/+/status"


def alert_topic(site: str, alert_id: str) -> str:
    """Topic of one alert."""
    return f"{ROOT}/{check_name(site, 'site')}/alert/{check_name(alert_id, 'alert id')}"


def alert_filter(site: str) -> str:
    """Subscription filter for every alert."""
    return f"{ROOT}/{check_name(site, 'site')}/alert/+"


def notify_topic(site: str, staff: str) -> str:
    """Topic of one member of staff's notifications."""
    return f"{ROOT}/{check_name(site, 'site')}/notify/{check_name(staff, 'staff id')}"


def notify_filter(site: str) -> str:
    """Subscription filter for every member of staff's notifications."""
    return f"{ROOT}/{check_name(site, 'site')}/notify/+"


def presence_topic(site: str, instance: str) -> str:
    """Topic of one API instance's live streams."""
    return f"{ROOT}/{check_name(site, 'site')}/presence/{check_name(instance, 'instance')}"


def presence_filter(site: str) -> str:
    """Subscription filter for every API instance's live streams."""
    return f"{ROOT}/{check_name(site, 'site')}/presence/+"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed Wardlink topic."""

    site: str
    area: Literal["gw", "svc", "alert", "notify", "presence"]
    name: str  # gateway, service, alert id, staff id or API instance
    channel: str  # gateway channel, service instance, or "" for alerts


def parse(topic: str) -> Topic:
    """Parse a topic; raise :class:`TopicError` for anything not built by this module."""
    parts = topic.split("/")
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise TopicError(f"not a wardlink/v1 topic: {topic!r}")
    site, area = parts[2], parts[3]
    if area == "gw" and len(parts) == 6 and parts[5] in _GATEWAY_CHANNELS:
        return Topic(site, "gw", parts[4], parts[5])
    if area == "svc" and len(parts) == 7 and parts[6] == "status":
        return Topic(site, "svc", parts[4], parts[5])
    if area == "alert" and len(parts) == 5:
        return Topic(site, "alert", parts[4], "")
    if area == "notify" and len(parts) == 5:
        return Topic(site, "notify", parts[4], "")
    if area == "presence" and len(parts) == 5:
        return Topic(site, "presence", parts[4], "")
    raise TopicError(f"unknown wardlink topic: {topic!r}")
