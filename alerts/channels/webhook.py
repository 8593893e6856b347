"""Signed webhook for pagers and messaging systems: each delivery is POSTed as a JSON Notification.

The body is signed with HMAC-SHA256 over ``<timestamp>.<body>`` using a secret read from the
environment (never the configuration file): headers ``X-Wardlink-Timestamp`` (epoch ms) and
``X-Wardlink-Signature: sha256=<hex>``. A receiver checks the signature and refuses old timestamps
(replay). A 2xx answer marks the delivery delivered; anything else leaves it to the confirmation
deadline, which raises a technical alarm.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os

import httpx
import msgspec

from devices.clock import now_ms
from devices.contract import Alert, Notification, encode
from state.escalations import Escalations, Fired

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Wardlink-Signature"
TIMESTAMP_HEADER = "X-Wardlink-Timestamp"


class WebhookSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One webhook: where to POST, and the environment variable holding its signing secret."""

    name: str
    url: str
    secret_env: str
    timeout_s: float = 5.0


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, now: int, max_age_ms: int = 300_000) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (no replay)."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > max_age_ms:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


class WebhookChannel:
    """POSTs deliveries on the ``webhook`` channel to one URL."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, escalations: Escalations) -> None:
        """Read the secret from the environment; raise ``ValueError`` when it is missing."""
        secret = os.environ.get(settings.secret_env, "")
        if not secret:
            raise ValueError(f"webhook {settings.name}: environment variable {settings.secret_env} holds no secret")
        self.settings = settings
        self._secret = secret.encode()
        self._escalations = escalations
        self._tasks: set[asyncio.Task[bool]] = set()
        self.posted = 0
        self.failed = 0

    def send(self, fired: Fired, alert: Alert) -> None:
        """POST each of the step's webhook deliveries in the background."""
        for d in fired.deliveries:
            if d.channel != self.name:
                continue
            body = encode(Notification(delivery=d.id, staff=d.staff, alert=alert, step=fired.step.step,
                                       target=fired.step.target, reason=fired.step.reason, sent=d.sent_at,
                                       confirm_by=d.confirm_by))
            task = asyncio.create_task(self.post(d.id, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def post(self, delivery_id: int, body: bytes) -> bool:
        """POST one signed body; on 2xx mark the delivery delivered. True when the receiver took it."""
        timestamp = now_ms()
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                   SIGNATURE_HEADER: sign(self._secret, timestamp, body)}
        try:
            async with httpx.AsyncClient(timeout=self.settings.timeout_s) as client:
                response = await client.post(self.settings.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("webhook %s: delivery %d not posted: %s", self.settings.name, delivery_id, exc)
            return False
        if not response.is_success:
            self.failed += 1
            log.warning("webhook %s: delivery %d refused with HTTP %d", self.settings.name, delivery_id,
                        response.status_code)
            return False
        self.posted += 1
        await asyncio.to_thread(self._escalations.mark, delivery_id, "delivered", now_ms(),
                                detail=f"webhook {self.settings.name}")
        return True
