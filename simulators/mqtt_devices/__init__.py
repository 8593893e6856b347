"""Simulated MQTT devices: RFID readers and a BLE gateway watching assets move, and waste scan points."""
