"""Prometheus /metrics from the ServiceStatus of every worker and the API's own view."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from api.app import create_app
from api.view import LiveView
from devices import topics
from devices.bus import BrokerAddress
from devices.clock import now_ms
from devices.contract import GatewayStatus, encode
from ingest.metrics import Metrics
from ingest.service import Ingest
from state.db import open_state
from storage.memory import MemoryStore
from tests.auth import parts
from tests.test_ingest import DATA, batch, obs
from wardlink.config import load

_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="[^"]*",?)*\})? -?[0-9.e+Inf-]+$')


async def test_metrics_expose_every_worker_with_an_instance_label(tmp_path: Path) -> None:
    site = load(env={}).site
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    view = LiveView(site.id, BrokerAddress("127.0.0.1", 1))
    for name in ("ingest-1", "ingest-2"):
        ingest = Ingest(site, MemoryStore(), BrokerAddress("127.0.0.1", 1), name)
        ingest.handle(DATA, batch(obs(1), obs(2)))
        ingest.metrics.store_ms.observe(7)
        ingest.metrics.batch_items.observe(2)
        ingest.counters["stored"] += 2
        view.apply(topics.service_topic(site.id, "ingest", name), encode(ingest.status()))
    view.apply(topics.gateway_topic(site.id, "gw-icu", "status"),
               encode(GatewayStatus(gateway="gw-icu", state="online", ts=now_ms(), outbox_depth=12, outbox_shed=3)))
    transport = httpx.ASGITransport(app=create_app(parts(site, MemoryStore(), view, state)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/metrics")  # open to the monitoring network: no sign-in
    state.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in text.splitlines():
        assert line.startswith("# ") or _SAMPLE.match(line), line
    assert 'wardlink_ingest_stored_total{instance="ingest-1"} 2' in text
    assert 'wardlink_ingest_stored_total{instance="ingest-2"} 2' in text
    assert 'wardlink_ingest_pending_items{instance="ingest-1"} 2' in text
    assert 'wardlink_ingest_store_ms_bucket{instance="ingest-1",le="10"} 1' in text
    assert 'wardlink_ingest_store_ms_bucket{instance="ingest-1",le="+Inf"} 1' in text
    assert 'wardlink_ingest_store_ms_sum{instance="ingest-1"} 7' in text
    assert 'wardlink_ingest_lag_ms{instance="ingest-1"} 0' in text
    assert 'wardlink_service_up{service="ingest",instance="ingest-2"} 1' in text
    assert 'wardlink_gateway_outbox_items{gateway="gw-icu"} 12' in text
    assert 'wardlink_gateway_outbox_shed_total{gateway="gw-icu"} 3' in text
    assert "wardlink_api_open_alerts 0" in text
    assert text.count("# TYPE wardlink_ingest_store_ms histogram") == 1  # one family, both instances


def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    for value in (1, 3, 20_000):
        metrics.store_ms.observe(value)
    flat = metrics.flat()
    assert (flat["h_store_ms_le_1"], flat["h_store_ms_le_5"], flat["h_store_ms_le_10000"]) == (1, 2, 2)
    assert (flat["h_store_ms_le_inf"], flat["h_store_ms_count"], flat["h_store_ms_sum"]) == (3, 3, 20_004)
