"""RFID readers and BLE gateways publishing tag reads to an edge MQTT broker (driver kind ``rfid_mqtt``)."""
