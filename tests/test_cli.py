"""The `wardlink` command as a user runs it: embedded broker, outside MQTT clients, Ctrl-C, benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.auth import system_bearer
from tests.conftest import free_port

pytestmark = pytest.mark.slow
WARDLINK = [sys.executable, "-m", "wardlink.cli"]


def test_run_on_embedded_defaults_and_stop_with_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*WARDLINK, "run", "--data-dir", str(tmp_path / "data"), "--api-port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ})
    try:
        health = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2,
                                   headers=system_bearer(tmp_path / "data", "b-biomed")).json()
                if health["gateways"].get("gw-icu", {}).get("state") == "online":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert health is not None, log.read_text()
        assert health["broker"]["detail"]["embedded"] is True
        broker_port = health["broker"]["detail"]["url"].rsplit(":", 1)[1]
        assert f"broker mqtt://127.0.0.1:{broker_port} (embedded)" in log.read_text()
        assert "demo sign-in for n-icu (nurse)" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 401
        # An outside client (mosquitto_sub) sees the gateway's retained birth message on the embedded broker.
        sub = shutil.which("mosquitto_sub")
        assert sub, "mosquitto-clients is not installed (make test installs it)"
        seen = subprocess.run([sub, "-p", broker_port, "-t", "wardlink/v1/demo/gw/+/status", "-C", "1", "-W", "10"],
                              capture_output=True, timeout=20, check=True)
        assert json.loads(seen.stdout)["state"] == "online"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    text = log.read_text()
    assert code == 0, text
    assert "stopped" in text
    assert "Traceback" not in text


def test_bench_prints_json_figures() -> None:
    out = subprocess.run([*WARDLINK, "bench", "contract", "--quick", "--json"], capture_output=True, check=True,
                         timeout=60)
    figures = json.loads(out.stdout)
    assert figures["msgspec_items_per_s"] > 0
    assert figures["msgspec_vs_pydantic"] == pytest.approx(
        figures["msgspec_items_per_s"] / figures["pydantic_items_per_s"])


def test_invalid_config_is_refused_with_the_field_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[site.devices]]\nid = "m1"\nkind = "bedside_serial"\ngateway = "nope"\n')
    out = subprocess.run([*WARDLINK, "run", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "gateway 'nope' is not a gateway of the site" in out.stderr
