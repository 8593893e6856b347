"""The per-user WebSocket channel, alert-service side: a delivery becomes a Notification on the staff's bus topic.

The API process holds the WebSocket connections; it forwards each Notification to the streams of that
member of staff and records the delivery as delivered once the frame is written. A notification
nobody receives stays "sent" and its confirmation deadline raises a technical alarm.
"""

from __future__ import annotations

import aiomqtt

from devices import topics
from devices.contract import Alert, Notification, encode
from state.escalations import Delivery, Fired


class WebSocketChannel:
    """Publishes notifications for the API's per-user streams."""

    name = "websocket"

    def __init__(self, site_id: str) -> None:
        """Publish under ``site_id``."""
        self.site_id = site_id

    def notifications(self, fired: Fired, alert: Alert) -> list[tuple[Delivery, Notification]]:
        """The notification of each of a step's deliveries on this channel."""
        return [(d, Notification(delivery=d.id, staff=d.staff, alert=alert, step=fired.step.step,
                                 target=fired.step.target, reason=fired.step.reason, sent=d.sent_at,
                                 confirm_by=d.confirm_by))
                for d in fired.deliveries if d.channel == self.name]

    async def send(self, client: aiomqtt.Client, fired: Fired, alert: Alert) -> None:
        """Publish the step's notifications (QoS 1: the broker holds them for a reconnecting API)."""
        for delivery, notification in self.notifications(fired, alert):
            await client.publish(topics.notify_topic(self.site_id, delivery.staff), encode(notification), qos=1)
