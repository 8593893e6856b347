"""The garbage-collector watch and settle (devices/gcwatch.py), on the real collector."""

from __future__ import annotations

import gc

from devices.gcwatch import WATCH, GcWatch, settle


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_the_watch_counts_full_collections_and_their_pauses() -> None:
    watch = GcWatch().install()
    try:
        for _ in range(1000):
            _Node()
        gc.collect()
        gc.collect(2)
    finally:
        watch.remove()
    counters = watch.counters()
    assert counters["gc_collections_gen2"] == 2
    assert watch.pause_max_ms[2] > 0
    assert counters["g_gc_full_pause_max_ms"] == round(watch.pause_max_ms[2])
    gc.collect()
    assert watch.counters()["gc_collections_gen2"] == 2  # removed: no longer counting


def test_settle_freezes_what_is_alive_out_of_later_collections() -> None:
    kept = [_Node() for _ in range(1000)]
    try:
        frozen = settle()
        assert frozen >= 1000
        # At most that many now: a frozen object freed by reference counting meanwhile (another thread of the
        # test process) leaves the permanent generation.
        assert frozen - 1000 < gc.get_freeze_count() <= frozen
        assert WATCH.counters()["g_gc_frozen_objects"] == frozen  # kept from settle(), not walked per heartbeat
        walked = {id(o) for generation in range(3) for o in gc.get_objects(generation=generation)}
        assert not any(id(n) in walked for n in kept)  # in no generation a collection walks
    finally:
        gc.unfreeze()  # the test process shares its collector with every other test
    assert gc.get_freeze_count() == 0
