"""The typed contract and the topic module."""

from __future__ import annotations

import contextlib
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices import topics
from devices.contract import (
    Batch,
    Commit,
    ContractError,
    DeviceEvent,
    Observation,
    SeqRange,
    TagRead,
    WasteEvent,
    check_item,
    decode_batch,
    decode_batch_lenient,
    encode,
)


def obs(seq: int = 1, value: float = 97.0) -> Observation:
    return Observation(device="mon-1", stream="numerics", seq=seq, ts=1_000, metric="MDC_PULS_OXIM_SAT_O2",
                       value=value, unit="%", code=150456, bed="ICU-01")


def test_mixed_batch_round_trips() -> None:
    items = [obs(),
             DeviceEvent(device="mon-1", stream="alarms", seq=1, ts=2, event="MDC_EVT_LEAD_OFF",
                         alarm_kind="technical", priority="medium"),
             TagRead(device="rdr-1", stream="tags", seq=1, ts=3, tag="T-1", rssi=-60.5),
             WasteEvent(device="scale-1", stream="waste", seq=1, ts=4, bag="B-1", category="sharps",
                        weight_g=812.5, point="ward", handler="nurse-7")]
    batch = Batch(gateway="gw-1", sent=5, items=items)
    assert decode_batch(encode(batch)) == batch


def test_wire_form_is_tagged_and_omits_defaults() -> None:
    wire = msgspec.json.decode(encode(obs()))
    assert wire["kind"] == "obs"
    assert "flags" not in wire
    assert "device_ts" not in wire


@pytest.mark.parametrize(("payload", "needle"), [
    (b"not json", "undecodable"),
    (b'{"gateway":"g","sent":1,"items":[{"kind":"obs","device":"d"}]}', "invalid batch"),
    (b'{"gateway":"g","sent":1,"items":[{"kind":"nope"}]}', "invalid batch"),
    (b'{"gateway":"g","sent":1,"items":[],"v":2}', "unsupported schema version"),
])
def test_bad_batches_raise_contract_error(payload: bytes, needle: str) -> None:
    with pytest.raises(ContractError, match=needle):
        decode_batch(payload)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected_naming_device_and_field(value: float) -> None:
    with pytest.raises(ContractError, match=r"device mon-1: field value"):
        check_item(obs(value=value))


def test_commit_ranges_are_compact_arrays() -> None:
    commit = Commit(gateway="gw-1", ts=1, ranges=[SeqRange("mon-1", "numerics", 1, 500)])
    assert b'["mon-1","numerics",1,500]' in encode(commit)
    assert msgspec.json.decode(encode(commit), type=Commit) == commit


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_contract_error(data: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode_batch(data)


def test_topics_build_and_parse() -> None:
    topic = topics.gateway_topic("demo", "gw-icu", "data")
    assert topic == "wardlink/v1/demo/gw/gw-icu/data"
    assert topics.parse(topic) == topics.Topic("demo", "gw", "gw-icu", "data")
    assert topics.parse(topics.service_topic("demo", "ingest", "i-1")) == topics.Topic("demo", "svc", "ingest", "i-1")
    assert topics.parse(topics.alert_topic("demo", "al-1")).name == "al-1"
    assert topics.gateway_filter("demo", "alarm", share="ingest") == "$share/ingest/wardlink/v1/demo/gw/+/alarm"


@pytest.mark.parametrize("bad", ["gw/x", "gw+", "#", "", "a b"])
def test_names_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.gateway_topic("demo", bad, "data")


@pytest.mark.parametrize("topic", ["other/v1/demo/gw/g/data", "wardlink/v1/demo/gw/g/nope", "wardlink/v1/demo"])
def test_foreign_topics_do_not_parse(topic: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.parse(topic)


def test_lenient_decode_keeps_good_items_and_names_the_bad_one() -> None:
    payload = encode(Batch(gateway="gw-1", sent=1, items=[obs(1), obs(2), obs(3)]))
    payload = payload.replace(b'"seq":2,', b'"seq":2,"bogus":1,', 1).replace(b'"value":97.0', b'"value":"x"', 2)
    batch, bad = decode_batch_lenient(payload)
    assert [i.seq for i in batch.items] == [3]
    assert [(b.device, b.seq) for b in bad] == [("mon-1", 1), ("mon-1", 2)]
    assert all("device mon-1: invalid item" in b.reason for b in bad)
    with pytest.raises(ContractError):
        decode_batch_lenient(b'{"gateway": 1}')
