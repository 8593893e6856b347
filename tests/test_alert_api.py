"""The alert API on its own FastAPI app over SQLite and PostgreSQL: actions, scope, roles, settings, reports."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI

from alerts.ruleset import catalogue
from api.access import Access
from api.alarm_load import DAY_MS, percentile
from api.alerts_routes import alerts_router
from api.reports_routes import reports_router
from api.security import Authenticator, LocalTokens
from devices.clock import now_ms
from devices.contract import Alert
from state import State, lifecycle
from tests.auth import Roster, roster
from tests.test_state import T0, pg, pg_shared, state  # noqa: F401 (fixtures: SQLite and PostgreSQL)
from wardlink.config import load

SITE = load(env={}).site
STAFF: list[Roster] = [
    ("n-ann", "Ann", "nurse", "ICU", "primary", "ICU-03"),
    ("n-bob", "Bob", "nurse", "ICU", "buddy", "ICU-03"),
    ("c-cat", "Cat", "charge_nurse", "ICU", "charge", None),
    ("n-wes", "Wes", "nurse", "W3", "primary", "W3-01"),
    ("c-wil", "Wil", "charge_nurse", "W3", "charge", None),
    ("a-aud", "Aud", "auditor", None, None, None),
    ("f-fay", "Fay", "facilities", None, None, None),
]


@dataclass
class Api:
    client: httpx.AsyncClient
    state: State
    tokens: LocalTokens

    def auth(self, staff: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(staff)}"}

    async def get(self, path: str, staff: str | None, **params: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(staff) if staff else {}, params=params)

    async def post(self, path: str, staff: str | None, body: Any = None) -> httpx.Response:
        return await self.client.post(path, headers=self.auth(staff) if staff else {}, json=body)

    async def put(self, path: str, staff: str, body: Any) -> httpx.Response:
        return await self.client.put(path, headers=self.auth(staff), json=body)


@pytest.fixture
async def api(state: State) -> AsyncIterator[Api]:  # noqa: F811
    state.registry.seed_from_site(SITE, T0)
    now = now_ms()
    roster(state, STAFF, now=now)
    tokens = LocalTokens(b"k" * 32)
    access = Access(SITE, state, Authenticator(state, tokens))
    app = FastAPI()
    app.include_router(alerts_router(SITE, state, access, catalogue()))
    app.include_router(reports_router(SITE, access))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wardlink") as client:
        yield Api(client, state, tokens)


def alert(alert_id: str, type_: str, bed: str | None, at: int, *, priority: str = "high", delay_ms: int = 10_000,
          kind: str = "physiological", source: str | None = None) -> Alert:
    unit = SITE.unit_of_bed(bed) if bed else None
    return msgspec.convert({"id": alert_id, "type": type_, "source": source or bed, "alarm_kind": kind,
                            "priority": priority, "state": "active", "onset": at - delay_ms, "updated": at,
                            "message": type_, "bed": bed, "unit": unit, "delay_ms": delay_ms,
                            "latched": priority == "high" and kind != "technical"}, Alert)


def audited(db: State, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(r.actor, r.object, r.detail) for r in db.audit.records(limit=10_000) if r.action == action]


# --- alert actions -------------------------------------------------------------------------------------------------


async def test_acknowledge_own_unit_other_unit_missing_wrong_role_no_token(api: Api) -> None:
    api.state.alerts.save(alert("al-icu", "spo2_low", "ICU-03", now_ms()))
    first = await api.post("/api/v1/alerts/al-icu/acknowledge", "n-ann")
    assert first.status_code == 200
    assert (first.json()["acknowledged"], first.json()["alert"]["acknowledged_by"]) == (True, "n-ann")
    again = await api.post("/api/v1/alerts/al-icu/acknowledge", "c-cat")
    assert again.status_code == 200  # idempotent: the first acknowledgement stands
    assert (again.json()["acknowledged"], again.json()["alert"]["acknowledged_by"]) == (False, "n-ann")

    other = await api.post("/api/v1/alerts/al-icu/acknowledge", "n-wes")
    missing = await api.post("/api/v1/alerts/al-none/acknowledge", "n-ann")
    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json()["detail"] == "alert 'al-icu' not found"  # exactly like a missing one
    assert missing.json()["detail"] == "alert 'al-none' not found"
    assert (await api.post("/api/v1/alerts/al-icu/acknowledge", "f-fay")).status_code == 403
    assert (await api.post("/api/v1/alerts/al-icu/acknowledge", "a-aud")).status_code == 403
    assert (await api.post("/api/v1/alerts/al-icu/acknowledge", None)).status_code == 401
    assert [t.event for t in api.state.alerts.transitions("al-icu")] == ["onset", "acknowledged"]
    assert [a for a, _, _ in audited(api.state, "alert.acknowledge")] == ["n-ann", "c-cat"]


async def test_acknowledgement_race_has_one_winner_and_one_final_state(api: Api) -> None:
    for n in range(5):
        api.state.alerts.save(alert(f"al-race-{n}", "spo2_low", "ICU-03", now_ms()))
        ann, bob = await asyncio.gather(api.post(f"/api/v1/alerts/al-race-{n}/acknowledge", "n-ann"),
                                        api.post(f"/api/v1/alerts/al-race-{n}/acknowledge", "n-bob"))
        assert (ann.status_code, bob.status_code) == (200, 200)
        assert sorted([ann.json()["acknowledged"], bob.json()["acknowledged"]]) == [False, True]
        assert ann.json()["alert"] == bob.json()["alert"]  # both see the same final state
        winner = "n-ann" if ann.json()["acknowledged"] else "n-bob"
        assert ann.json()["alert"]["acknowledged_by"] == winner
        assert [t.actor for t in api.state.alerts.transitions(f"al-race-{n}") if t.event == "acknowledged"] == \
            [winner]


async def test_silence_comment_and_the_alarm_log(api: Api) -> None:
    api.state.alerts.save(alert("al-icu", "spo2_low", "ICU-03", now_ms()))
    before = now_ms()
    silenced = await api.post("/api/v1/alerts/al-icu/silence", "n-ann",
                              {"reason": "repositioning the probe", "timeout_s": 120})
    assert silenced.status_code == 200
    body = silenced.json()
    assert body["silence_reason"] == "repositioning the probe"
    assert before + 120_000 <= body["silenced_until"] <= now_ms() + 120_000
    too_long = await api.post("/api/v1/alerts/al-icu/silence", "n-ann", {"reason": "x", "timeout_s": 7200})
    assert too_long.status_code == 422
    assert (await api.post("/api/v1/alerts/al-icu/silence", "n-wes", {"reason": "x", "timeout_s": 60})).status_code \
        == 404
    comment = await api.post("/api/v1/alerts/al-icu/comments", "n-bob", {"text": "probe replaced"})
    assert comment.status_code == 201
    assert (comment.json()["by"], comment.json()["text"]) == ("n-bob", "probe replaced")

    log = await api.get("/api/v1/alerts/al-icu/log", "a-aud")  # the auditor reads every unit's logs
    assert log.status_code == 200
    assert [(line["event"], line["actor"]) for line in log.json()["log"]] == \
        [("onset", None), ("silenced", "n-ann"), ("comment", "n-bob")]
    assert log.json()["log"][1]["detail"]["reason"] == "repositioning the probe"
    assert log.json()["alert"]["latched"] is True
    assert (await api.get("/api/v1/alerts/al-icu/log", "n-wes")).status_code == 404
    assert (await api.get("/api/v1/alerts/al-icu/log", "f-fay")).status_code == 403
    assert audited(api.state, "read") == [("a-aud", "alert al-icu", {})]

    resolved = lifecycle.clear(lifecycle.acknowledge(alert("al-done", "hr_high", "ICU-03", now_ms(),
                                                           priority="medium"), "n-ann", now_ms()), now_ms())
    api.state.alerts.save(resolved)
    late = await api.post("/api/v1/alerts/al-done/silence", "n-ann", {"reason": "x", "timeout_s": 60})
    assert late.status_code == 409


async def test_a_gateway_alert_belongs_to_the_gateways_unit(api: Api) -> None:
    api.state.alerts.save(alert("al-gw", "gateway.offline", None, now_ms(), kind="technical", source="gw-w3",
                                delay_ms=0))
    assert (await api.post("/api/v1/alerts/al-gw/acknowledge", "n-ann")).status_code == 404
    done = await api.post("/api/v1/alerts/al-gw/acknowledge", "c-wil")
    assert (done.status_code, done.json()["alert"]["state"]) == (200, "acknowledged")


# --- alarm settings ------------------------------------------------------------------------------------------------


async def test_unit_ruleset_changes_by_the_units_charge_nurse_only_and_are_audited(api: Api) -> None:
    shown = await api.get("/api/v1/units/ICU/alarm-settings", "n-ann")
    assert shown.status_code == 200
    assert (shown.json()["ruleset"], shown.json()["chosen"]) == ("adult", False)
    assert shown.json()["rules"]["spo2_low"]["limit"] == 90
    assert (await api.get("/api/v1/units/ICU/alarm-settings", "n-wes")).status_code == 404
    assert (await api.get("/api/v1/units/NOPE/alarm-settings", "a-aud")).status_code == 404
    assert (await api.get("/api/v1/units/ICU/alarm-settings", "f-fay")).status_code == 403

    assert (await api.put("/api/v1/units/ICU/alarm-settings/ruleset", "n-ann", {"ruleset": "neonatal"})) \
        .status_code == 403
    assert (await api.put("/api/v1/units/ICU/alarm-settings/ruleset", "c-wil", {"ruleset": "neonatal"})) \
        .status_code == 404
    assert (await api.put("/api/v1/units/ICU/alarm-settings/ruleset", "c-cat", {"ruleset": "geriatric"})) \
        .status_code == 422
    changed = await api.put("/api/v1/units/ICU/alarm-settings/ruleset", "c-cat", {"ruleset": "neonatal"})
    assert changed.json() == {"unit": "ICU", "old": "adult", "new": "neonatal"}
    assert api.state.alarm_settings.ruleset("ICU") == "neonatal"
    assert audited(api.state, "alarm.ruleset.change") == \
        [("c-cat", "alarm rule set of unit ICU", {"old": "adult", "new": "neonatal"})]
    unit_wide = await api.put("/api/v1/units/ICU/alarm-settings/rules/spo2_low", "c-cat", {"settings": {"limit": 86}})
    assert unit_wide.json()["new"] == {"limit": 86}
    assert (await api.put("/api/v1/units/ICU/alarm-settings/rules/spo2_low", "n-ann",
                          {"settings": {"limit": 80}})).status_code == 403


async def test_bed_overrides_by_the_units_nurses_validated_merged_and_audited(api: Api) -> None:
    path = "/api/v1/beds/ICU-03/alarm-settings/rules/spo2_low"
    first = await api.put(path, "n-ann", {"settings": {"limit": 85}})
    assert (first.status_code, first.json()["old"], first.json()["new"]) == (200, None, {"limit": 85})
    second = await api.put(path, "n-bob", {"settings": {"priority": "medium", "delay_s": 20}})
    assert (second.json()["old"], second.json()["new"]) == \
        ({"limit": 85}, {"limit": 85, "priority": "medium", "delay_s": 20})
    for bad in ({"metric": "hr"}, {"priority": "urgent"}, {"limit": "low"}, {"delay_s": -1}, {"enabled": 1}):
        refused = await api.put(path, "n-ann", {"settings": bad})
        assert refused.status_code == 422, bad
    assert (await api.put("/api/v1/beds/ICU-03/alarm-settings/rules/nope", "n-ann",
                          {"settings": {"limit": 1}})).status_code == 422
    assert (await api.put(path, "n-wes", {"settings": {"limit": 80}})).status_code == 404
    assert (await api.put("/api/v1/beds/ICU-99/alarm-settings/rules/spo2_low", "n-ann",
                          {"settings": {"limit": 80}})).status_code == 404
    assert (await api.put(path, "a-aud", {"settings": {"limit": 80}})).status_code == 403

    shown = await api.get("/api/v1/beds/ICU-03/alarm-settings", "n-ann")
    assert (shown.json()["rules"]["spo2_low"]["limit"], shown.json()["rules"]["spo2_low"]["priority"]) == \
        (85, "medium")
    assert [(o["bed"], o["applies"]) for o in shown.json()["overrides"]] == [("ICU-03", True)]
    other_bed = await api.get("/api/v1/beds/ICU-04/alarm-settings", "a-aud")
    assert other_bed.json()["rules"]["spo2_low"]["limit"] == 90
    removed = await api.client.delete(path, headers=api.auth("n-bob"))
    assert (removed.json()["old"]["limit"], removed.json()["new"]) == (85, None)
    assert api.state.alarm_settings.overrides("ICU") == []
    changes = audited(api.state, "alarm.override.change")
    assert [(who, detail["old"], detail["new"]) for who, _, detail in changes] == [
        ("n-ann", None, {"limit": 85}),
        ("n-bob", {"limit": 85}, {"limit": 85, "priority": "medium", "delay_s": 20}),
        ("n-bob", {"limit": 85, "priority": "medium", "delay_s": 20}, None)]


# --- alarm-load reports --------------------------------------------------------------------------------------------


def seed_episodes(db: State, day: int) -> None:
    """ICU: a 5 s nuisance SpO2 alert acked after 10 s, an HR alert acked after 60 s, a silent monitor; W3: one."""
    spo2 = alert("al-1", "spo2_low", "ICU-03", day + 10_000)
    db.alerts.save(spo2)
    db.alerts.save(lifecycle.clear(spo2, day + 15_000))
    db.alerts.acknowledge("al-1", "n-ann", day + 20_000)
    hr = alert("al-2", "hr_high", "ICU-03", day + 100_000, priority="medium")
    db.alerts.save(hr)
    db.alerts.acknowledge("al-2", "n-bob", day + 160_000)
    db.alerts.save(lifecycle.clear(msgspec.structs.replace(hr, state="acknowledged"), day + 200_000))
    db.alerts.save(alert("al-3", "device.silent", "ICU-04", day + 50_000, priority="medium", kind="technical",
                            delay_ms=0, source="mon-icu-04"))
    db.alerts.save(alert("al-4", "spo2_low", "W3-01", day + DAY_MS + 5_000))


async def test_alarm_load_report_json_csv_and_scope(api: Api) -> None:
    day = (now_ms() // DAY_MS - 2) * DAY_MS
    seed_episodes(api.state, day)
    changed = await api.put("/api/v1/beds/ICU-03/alarm-settings/rules/spo2_low", "n-ann", {"settings": {"limit": 88}})
    assert changed.status_code == 200
    period = {"start": day, "end": now_ms() + 1000}

    icu = await api.get("/api/v1/reports/alarm-load", "c-cat", **period)
    assert icu.status_code == 200
    report = icu.json()
    assert report["units"] == ["ICU"]  # the charge nurse's unit only
    assert (report["totals"]["alerts"], report["totals"]["technical"], report["totals"]["high"]) == (3, 1, 1)
    assert [(r["bed"], r["rule"], r["priority"], r["alerts"]) for r in report["by_bed_day"]] == \
        [("ICU-03", "hr_high", "medium", 1), ("ICU-03", "spo2_low", "high", 1),
         ("ICU-04", "device.silent", "medium", 1)]
    assert {r["day"] for r in report["by_bed_day"]} == {datetime.fromtimestamp(day / 1000, UTC).date().isoformat()}
    ack = report["time_to_acknowledge"]
    assert (ack["all"]["acknowledged"], ack["all"]["unacknowledged"], ack["all"]["median_s"], ack["all"]["p90_s"]) == \
        (2, 1, 35.0, 60.0)
    assert (ack["high"]["median_s"], ack["medium"]["median_s"]) == (10.0, 60.0)
    nuisance = report["nuisance"]["all"]
    assert (nuisance["with_delay"], nuisance["within_window"], nuisance["within_window_share"]) == (2, 1, 0.5)
    assert (nuisance["within_s"], nuisance["alerts"]) == (1, 3)  # cleared 5 s after rising; 100 s; never
    assert [(b["bed"], b["alerts"]) for b in report["top_beds"]] == [("ICU-03", 2), ("ICU-04", 1)]
    assert report["top_rules"][0]["alerts"] == 1
    assert [(c["actor"], c["bed"], c["new"]) for c in report["limit_changes"]] == [("n-ann", "ICU-03", {"limit": 88})]

    site = await api.get("/api/v1/reports/alarm-load", "a-aud", **period)
    assert (site.json()["units"], site.json()["totals"]["alerts"]) == (["ICU", "W3"], 4)
    assert (await api.get("/api/v1/reports/alarm-load", "n-wes", unit="ICU", **period)).status_code == 404
    assert (await api.get("/api/v1/reports/alarm-load", "n-wes", **period)).json()["totals"]["alerts"] == 1
    assert (await api.get("/api/v1/reports/alarm-load", "f-fay")).status_code == 403
    assert (await api.get("/api/v1/reports/alarm-load", None)).status_code == 401
    assert (await api.get("/api/v1/reports/alarm-load", "a-aud", start=day, end=day + 100 * DAY_MS)).status_code \
        == 422

    as_csv = await api.get("/api/v1/reports/alarm-load/time_to_acknowledge.csv", "c-cat", **period)
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["priority"], r["median_s"], r["p90_s"]) for r in rows] == \
        [("all", "35.0", "60.0"), ("high", "10.0", "10.0"), ("medium", "60.0", "60.0"), ("low", "", "")]
    changes = list(csv.DictReader(io.StringIO(
        (await api.get("/api/v1/reports/alarm-load/limit_changes.csv", "a-aud", **period)).text)))
    assert [(c["actor"], c["new"]) for c in changes] == [("n-ann", '{"limit": 88}')]
    assert (await api.get("/api/v1/reports/alarm-load/nope.csv", "a-aud")).status_code == 422
    assert [who for who, _, _ in audited(api.state, "report.read")] == ["c-cat", "a-aud", "n-wes", "c-cat", "a-aud"]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.9) is None
    assert percentile([5.0], 0.9) == 5.0
    assert percentile([float(v) for v in range(1, 11)], 0.9) == 9.0
    assert percentile([float(v) for v in range(1, 12)], 0.9) == 10.0
