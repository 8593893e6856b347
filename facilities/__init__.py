"""Facilities: where every tagged asset is (room-level location), asset status, par levels and facilities alerts.

A bus service like ``alerts``: it reads gateway batches (tag reads, observations, waste scans) and
publishes retained alerts; it meets the other services only through the bus and the relational state.
"""
