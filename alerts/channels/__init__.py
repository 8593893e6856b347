"""Delivery channels of the alert service: per-user WebSocket stream (via the bus), signed webhook, IHE PCD-04 out."""
