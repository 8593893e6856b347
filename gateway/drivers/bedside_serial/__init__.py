"""Driver for bedside monitors speaking the WLB/1 serial protocol (docs/serial-protocol.md)."""
