"""Medical-waste scan points publishing bag scans to an edge MQTT broker (driver kind ``waste_mqtt``)."""
