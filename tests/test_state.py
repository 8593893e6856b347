"""The relational state layer against both databases: SQLite (a temporary file) and PostgreSQL (a fresh database)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql as pgsql
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from devices.contract import Alert, DeviceInfo, WasteEvent
from state import CustodyError, State, StateError, open_state
from state.db import MIGRATIONS
from state.models import APPEND_ONLY, Base
from tests.conftest import free_port
from wardlink.config import load

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
BACKENDS = ["sqlite", "postgresql"]
T0 = 1_700_000_000_000
HOUR = 3_600_000


def _admin(statement: str, database: str = "") -> None:
    """Run one statement on the PostgreSQL server outside a transaction; ``{}`` in it names ``database``."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(pgsql.SQL(statement).format(pgsql.Identifier(database)))


class PgDatabases:
    """Fresh PostgreSQL databases for this test session, all dropped at its end."""

    def __init__(self) -> None:
        self.prefix = f"wardlink_state_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def create(self) -> str:
        name = f"{self.prefix}_{len(self.names)}"
        _admin("CREATE DATABASE {}", name)
        self.names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        for name in self.names:
            _admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgDatabases]:
    try:
        _admin("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 (user postgres, trust auth); the state tests "
                    f"need it and never skip: {exc}")
    databases = PgDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def pg_shared(pg: PgDatabases) -> Iterator[State]:
    """One migrated PostgreSQL database for the session; tests empty it before use."""
    state = open_state(pg.create())
    yield state
    state.close()


def _truncate(state: State) -> None:
    """Empty every table (TRUNCATE fires no row triggers, so append-only tables empty too)."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with state.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    if request.param == "sqlite":
        opened = open_state(f"sqlite:///{tmp_path / 'state.db'}")
        yield opened
        opened.close()
        return
    shared: State = request.getfixturevalue("pg_shared")
    _truncate(shared)
    yield shared


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, not yet migrated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh' / 'state.db'}"
    databases: PgDatabases = request.getfixturevalue("pg")
    return databases.create()


def _tamper(state: State, sql: str) -> None:
    """Change an append-only table the way an intruder with database rights would: past the triggers."""
    with state.engine.begin() as conn:
        if state.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit DISABLE TRIGGER audit_append_only"))
            conn.execute(text(sql))
            conn.execute(text("ALTER TABLE audit ENABLE TRIGGER audit_append_only"))
        else:
            conn.execute(text("DROP TRIGGER audit_no_update"))
            conn.execute(text(sql))


# --- schema and migrations -------------------------------------------------------------------------------------


def _head() -> str | None:
    """The newest revision among the migration scripts."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_migrated_schema_matches_the_models(fresh_url: str) -> None:
    state = open_state(fresh_url)
    try:
        with state.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert diff == []
        assert version == _head()
    finally:
        state.close()


def test_concurrent_opens_migrate_once(fresh_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        states = list(pool.map(lambda _: open_state(fresh_url), range(4)))
    try:
        assert all(s.registry.units() == [] for s in states)
    finally:
        for s in states:
            s.close()


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with state.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        state.close()


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        open_state("mysql://localhost/x")


# --- errors ----------------------------------------------------------------------------------------------------


def test_unreachable_postgres_is_retryable_and_prompt() -> None:
    started = time.monotonic()
    with pytest.raises(StateError) as info:
        open_state(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, sa_exc.OperationalError)
    assert time.monotonic() - started < 5


def test_constraint_violation_is_not_retryable(state: State) -> None:
    state.registry.seed_from_site(load(env={}).site, T0)
    state.patients.admit("p-1", "A. Patient", "ICU-01", T0)
    with pytest.raises(StateError) as info:
        state.patients.admit("p-2", "B. Patient", "ICU-01", T0)  # the bed is taken
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, sa_exc.IntegrityError)
    with pytest.raises(StateError) as info:
        state.registry.upsert_device("x", now=T0, driver="d", gateway="gw-icu", bed="NO-SUCH-BED")
    assert info.value.retryable is False


# --- registry --------------------------------------------------------------------------------------------------


def test_seeding_from_the_default_site_is_idempotent(state: State) -> None:
    site = load(env={}).site
    first = state.registry.seed_from_site(site, T0)
    assert first == len(site.units) + sum(len(u.beds) for u in site.units) + len(site.devices)
    assert state.registry.seed_from_site(site, T0 + 1) == 0
    assert state.registry.units() == sorted((u.id, u.name) for u in site.units)
    assert [b.id for b in state.registry.beds("ICU")] == next(u.beds for u in site.units if u.id == "ICU")
    assert {d.id for d in state.registry.devices()} == {d.id for d in site.devices}
    monitor = state.registry.device("mon-icu-03")
    assert monitor is not None
    assert (monitor.unit, monitor.bed, monitor.driver, monitor.updated) == ("ICU", "ICU-03", "bedside_serial", T0)
    assert monitor.connection == {"port": "/dev/ttyUSB2", "baudrate": 115200}
    assert state.registry.device("hl7-w3") is not None
    assert {d.id for d in state.registry.devices(unit="W3")} == {d.id for d in site.devices if d.gateway == "gw-w3"}


def test_registry_records_discovered_devices_firmware_and_retirement(state: State) -> None:
    state.registry.seed_from_site(load(env={}).site, T0)
    found = state.registry.record_info(DeviceInfo(device="w3-mon-7", stream="id", seq=0, ts=T0 + 5, driver="hl7_pcd",
                                                  gateway="gw-w3", bed="W3-03", manufacturer="Acme", model="M1",
                                                  firmware="1.0", identifiers={"udi": "(01)0123"}, discovered=True))
    assert (found.discovered, found.bed, found.udi, found.firmware) == (True, "W3-03", "(01)0123", "1.0")
    updated = state.registry.upsert_device("w3-mon-7", now=T0 + 9, firmware="1.1", life_support=True,
                                           risk_class="IIb", unit="W3")
    assert (updated.firmware, updated.life_support, updated.risk_class, updated.manufacturer) == \
        ("1.1", True, "IIb", "Acme")
    declared = state.registry.record_info(DeviceInfo(device="mon-icu-01", stream="id", seq=0, ts=T0 + 5,
                                                     driver="bedside_serial", gateway="gw-icu", firmware="2.3",
                                                     discovered=True))
    assert (declared.discovered, declared.firmware, declared.bed) == (False, "2.3", "ICU-01")
    state.registry.retire("w3-mon-7", T0 + 20)
    assert "w3-mon-7" not in {d.id for d in state.registry.devices()}
    retired = [d for d in state.registry.devices(include_retired=True) if d.id == "w3-mon-7"]
    assert retired[0].retired_at == T0 + 20
    with pytest.raises(ValueError, match="needs driver and gateway"):
        state.registry.upsert_device("new", now=T0)


# --- patients and assignments ----------------------------------------------------------------------------------


def test_assignment_routing_at_a_time(state: State) -> None:
    state.registry.seed_from_site(load(env={}).site, T0)
    for staff_id, name, role in [("n-ann", "Ann", "nurse"), ("n-bob", "Bob", "nurse"), ("n-cat", "Cat", "nurse"),
                                 ("c-dan", "Dan", "charge_nurse"), ("c-eve", "Eve", "charge_nurse")]:
        state.assignments.add_staff(staff_id, name, role)
    day, night, end = T0, T0 + 12 * HOUR, T0 + 24 * HOUR
    a = state.assignments
    a.assign("n-ann", "ICU", "primary", day, night, bed="ICU-03")
    a.assign("n-bob", "ICU", "buddy", day, night, bed="ICU-03")
    a.assign("c-dan", "ICU", "charge", day, night)
    a.assign("n-cat", "ICU", "primary", night, end, bed="ICU-03")
    a.assign("c-eve", "ICU", "charge", night, end)

    def route(bed: str, at: int) -> list[tuple[str, str]]:
        return [(r.role, r.staff) for r in a.route(bed, at)]

    assert route("ICU-03", day + HOUR) == [("primary", "n-ann"), ("buddy", "n-bob"), ("charge", "c-dan")]
    assert route("ICU-03", night) == [("primary", "n-cat"), ("charge", "c-eve")]  # periods are half-open
    assert route("ICU-03", night - 1) == [("primary", "n-ann"), ("buddy", "n-bob"), ("charge", "c-dan")]
    assert route("ICU-04", day + HOUR) == [("charge", "c-dan")]
    assert route("W3-01", day + HOUR) == []
    assert route("ICU-03", end) == []
    assert [r.name for r in a.route("ICU-03", day)] == ["Ann", "Bob", "Dan"]
    assert {(x.staff, x.role) for x in a.current("ICU", day)} == {("n-ann", "primary"), ("n-bob", "buddy"),
                                                                   ("c-dan", "charge")}
    assert a.units_of("n-ann", day) == {"ICU"}
    assert a.units_of("n-ann", night) == set()

    # A patient assignment follows the patient to another bed, and wins over the bed's.
    state.patients.admit("p-42", "Pat 42", "ICU-05", day)
    a.assign("n-bob", "ICU", "primary", day, night, patient="p-42")
    assert route("ICU-05", day + HOUR)[0] == ("primary", "n-bob")
    state.patients.admit("p-42", "Pat 42", "ICU-03", day + 2 * HOUR)  # transfer
    assert route("ICU-03", day + 3 * HOUR)[0] == ("primary", "n-bob")
    assert route("ICU-05", day + 3 * HOUR) == [("charge", "c-dan")]

    # Ending an assignment early, and inactive staff, take them off the route.
    charge = next(x for x in a.current("ICU", day) if x.role == "charge")
    a.end(charge.id, day + 4 * HOUR)
    assert ("charge", "c-dan") not in route("ICU-03", day + 5 * HOUR)
    a.add_staff("n-bob", "Bob", "nurse", active=False)
    assert route("ICU-03", day + 5 * HOUR) == [("primary", "n-ann")]

    with pytest.raises(KeyError):
        a.route("NO-SUCH-BED", day)
    with pytest.raises(ValueError, match="needs a bed or a patient"):
        a.assign("n-ann", "ICU", "primary", day, night)
    with pytest.raises(ValueError, match="not W3"):
        a.assign("n-ann", "W3", "primary", day, night, bed="ICU-01")


def test_patients_admit_transfer_discharge(state: State) -> None:
    state.registry.seed_from_site(load(env={}).site, T0)
    state.patients.admit("p-1", "A. Patient", "W3-01", T0)
    assert state.patients.in_bed("W3-01") is not None
    state.patients.admit("p-1", "A. Patient", "W3-02", T0 + 1)
    assert state.patients.in_bed("W3-01") is None
    discharged = state.patients.discharge("p-1", T0 + 2)
    assert (discharged.bed, discharged.discharged_at) == (None, T0 + 2)
    assert state.patients.in_bed("W3-02") is None


# --- alerts ----------------------------------------------------------------------------------------------------


def _alert(state_: str, updated: int, **changes: object) -> Alert:
    base = {"id": "al-0001", "type": "spo2_low", "source": "ICU-03", "alarm_kind": "physiological",
            "priority": "high", "state": state_, "onset": T0, "updated": updated, "message": "SpO2 low",
            "bed": "ICU-03", "unit": "ICU", "metric": "MDC_PULS_OXIM_SAT_O2", "value": 84.5}
    base.update(changes)
    return Alert(**base)  # type: ignore[arg-type]


def test_alert_save_open_log_round_trip(state: State) -> None:
    sequence = [
        _alert("active", T0),
        _alert("active", T0 + 1000, value=83.0, message="SpO2 low (repeat)"),
        Alert(id="al-0002", type="MDC_EVT_LEAD_OFF", source="mon-icu-05", alarm_kind="technical", priority="low",
              state="active", onset=T0 + 500, updated=T0 + 500, message="lead off", device_alert="uuid-9"),
        _alert("acknowledged", T0 + 2000, value=83.0),
        _alert("resolved", T0 + 3000, value=95.0),
    ]
    for alert in sequence:
        state.alerts.save(alert, actor="n-ann" if alert.state == "acknowledged" else None)
    assert [a.id for a in state.alerts.open()] == ["al-0002"]
    assert state.alerts.log("al-0001") == [a for a in sequence if a.id == "al-0001"]  # every transition, in order
    assert state.alerts.log() == sequence
    assert state.alerts.log(limit=2) == sequence[:2]
    assert state.alerts.get("al-0001") == sequence[-1]
    assert state.alerts.acknowledged_by("al-0001") == ("n-ann", T0 + 2000)
    assert [(t.state, t.actor) for t in state.alerts.transitions("al-0001")] == \
        [("active", None), ("active", None), ("acknowledged", "n-ann"), ("resolved", None)]


def test_acknowledgement_is_won_exactly_once(state: State) -> None:
    state.alerts.save(_alert("active", T0))
    barrier = threading.Barrier(6)

    def ack(who: str) -> bool:
        barrier.wait()
        return state.alerts.acknowledge("al-0001", who, T0 + 5)[1]

    with ThreadPoolExecutor(6) as pool:
        wins = list(pool.map(ack, [f"n-{i}" for i in range(6)]))
    assert wins.count(True) == 1
    alert, won = state.alerts.acknowledge("al-0001", "n-late", T0 + 9)
    assert (alert.state, won) == ("acknowledged", False)
    assert [t.state for t in state.alerts.transitions("al-0001")] == ["active", "acknowledged"]
    assert state.alerts.acknowledged_by("al-0001") == (f"n-{wins.index(True)}", T0 + 5)
    with pytest.raises(KeyError):
        state.alerts.acknowledge("al-none", "n-0", T0)


# --- audit -----------------------------------------------------------------------------------------------------


def _fill_audit(state: State, count: int) -> None:
    for i in range(count):
        state.audit.append(actor=f"n-{i % 3}", role="nurse", unit="ICU", object=f"alert/al-{i}", action="acknowledge",
                           result="ok", at=T0 + i, request_id=f"req-{i}", detail={"i": i, "note": "ü"})


def test_audit_chain_verifies_and_detects_tampering(state: State) -> None:
    assert state.audit.verify() is True  # empty
    _fill_audit(state, 20)
    records = state.audit.records()
    assert [r.n for r in records] == list(range(1, 21))
    assert records[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in pairwise(records))
    assert state.audit.head() == (20, records[-1].hash)
    assert state.audit.verify() is True
    assert [r.n for r in state.audit.records(actor="n-1", after=5, limit=2)] == [8, 11]

    _tamper(state, "UPDATE audit SET result = 'denied' WHERE n = 7")
    assert state.audit.verify() is False
    assert state.audit.first_broken() == 7


def test_audit_detects_a_recomputed_row_by_its_broken_link(state: State) -> None:
    _fill_audit(state, 5)
    row = state.audit.records()[2]
    from state.audit import record_hash

    forged = record_hash(row.prev_hash, row.at, "intruder", row.role, row.unit, row.object, row.action, row.result,
                         row.request_id, '{"i":2,"note":"ü"}')
    _tamper(state, f"UPDATE audit SET actor = 'intruder', hash = '{forged}' WHERE n = 3")
    assert state.audit.first_broken() == 4  # row 3 is self-consistent; row 4 no longer links to it


@pytest.mark.parametrize("table", APPEND_ONLY)
def test_append_only_tables_refuse_update_and_delete(state: State, table: str) -> None:
    state.alerts.save(_alert("active", T0))
    _fill_audit(state, 1)
    state.waste.seal("bag-1", category="sharps", weight_g=500, handler="n-ann", at=T0)
    state.waste.handover("bag-1", from_point="ward", to_point="collector", handler="c-1", weight_g=500, at=T0 + 1)
    key = "id" if table == "waste_bags" else "n"
    for sql in (f"UPDATE {table} SET {key} = {key}", f"DELETE FROM {table}"):
        with pytest.raises(sa_exc.DBAPIError, match="append-only"), state.engine.begin() as conn:
            conn.execute(text(sql))


# --- waste custody ---------------------------------------------------------------------------------------------


def test_waste_custody_chain_is_append_only_and_ordered(state: State) -> None:
    w = state.waste
    w.seal("bag-1", category="infectious", weight_g=2400.0, handler="n-ann", at=T0, unit="W3", device="wst-w3-ward")
    w.handover("bag-1", from_point="ward", to_point="collector", handler="col-1", weight_g=2400.0, at=T0 + HOUR)
    # A second handover from the wrong point (the bag is with the collector, not at the ward) is refused.
    with pytest.raises(CustodyError, match="its chain is at collector"):
        w.handover("bag-1", from_point="ward", to_point="collector", handler="col-2", weight_g=2400.0, at=T0 + HOUR)
    with pytest.raises(CustodyError, match="goes to storage, not disposer"):
        w.handover("bag-1", from_point="collector", to_point="disposer", handler="col-1", weight_g=2400.0,
                   at=T0 + 2 * HOUR)
    with pytest.raises(CustodyError, match="earlier than the step before"):
        w.handover("bag-1", from_point="collector", to_point="storage", handler="st-1", weight_g=2390.0, at=T0)
    w.handover("bag-1", from_point="collector", to_point="storage", handler="st-1", weight_g=2390.0, at=T0 + 2 * HOUR)
    assert w.held_at("storage") == ["bag-1"]
    w.handover("bag-1", from_point="storage", to_point="disposer", handler="disp-1", weight_g=2390.0,
               at=T0 + 30 * HOUR, manifest="MF-2024-001")
    with pytest.raises(CustodyError, match="goes to nowhere"):
        w.handover("bag-1", from_point="disposer", to_point="ward", handler="x", weight_g=1.0,
                   at=T0 + 31 * HOUR)
    chain = w.chain("bag-1")
    assert [(h.step, h.from_point, h.to_point, h.handler) for h in chain] == [
        (1, "ward", "collector", "col-1"), (2, "collector", "storage", "st-1"), (3, "storage", "disposer", "disp-1")]
    assert chain[-1].manifest == "MF-2024-001"
    assert w.held_at("storage") == []
    bag = w.bag("bag-1")
    assert bag is not None
    assert (bag.category, bag.weight_g, bag.sealed_by, bag.unit) == ("infectious", 2400.0, "n-ann", "W3")

    with pytest.raises(CustodyError, match="already sealed"):
        w.seal("bag-1", category="infectious", weight_g=1.0, handler="n-ann", at=T0)
    with pytest.raises(CustodyError, match="never sealed"):
        w.handover("bag-x", from_point="ward", to_point="collector", handler="col-1", weight_g=1.0, at=T0)
    assert w.chain("bag-x") == []


def test_waste_scans_become_seal_and_handovers(state: State) -> None:
    def scan(point: str, ts: int, category: str = "sharps") -> WasteEvent:
        return WasteEvent(device=f"wst-{point}", stream="waste", seq=ts, ts=ts, bag="bag-s", category=category,  # type: ignore[arg-type]
                          weight_g=800.0, point=point, handler=f"h-{point}", unit="W3")  # type: ignore[arg-type]

    state.waste.record_scan(scan("ward", T0))
    state.waste.record_scan(scan("collector", T0 + 1))
    with pytest.raises(CustodyError, match="its chain is at collector"):
        state.waste.record_scan(scan("disposer", T0 + 2))  # storage was skipped
    with pytest.raises(CustodyError, match="sealed as sharps"):
        state.waste.record_scan(scan("storage", T0 + 2, category="chemical"))
    state.waste.record_scan(scan("storage", T0 + 3))
    assert [h.to_point for h in state.waste.chain("bag-s")] == ["collector", "storage"]


def test_concurrent_handovers_of_one_bag_record_one_step(state: State) -> None:
    state.waste.seal("bag-r", category="sharps", weight_g=100, handler="n", at=T0)
    barrier = threading.Barrier(4)

    def hand(i: int) -> str:
        barrier.wait()
        try:
            state.waste.handover("bag-r", from_point="ward", to_point="collector", handler=f"c-{i}", weight_g=100,
                                 at=T0 + 1)
        except StateError as exc:
            return type(exc).__name__
        return "ok"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(hand, range(4)))
    assert outcomes.count("ok") == 1
    assert len(state.waste.chain("bag-r")) == 1


# --- assets ----------------------------------------------------------------------------------------------------


def test_assets_registry(state: State) -> None:
    state.registry.seed_from_site(load(env={}).site, T0)
    state.assets.upsert("pump-7", now=T0, tag="E200-0007", type="infusion_pump", unit="ICU", device="pump-icu-01")
    state.assets.upsert("wc-1", now=T0, tag="AC23-0001", type="wheelchair", unit="W3", status="dirty")
    state.assets.upsert("pump-7", now=T0 + 1, status="in_use")
    found = state.assets.by_tag("E200-0007")
    assert found is not None
    assert (found.id, found.status, found.device, found.updated) == ("pump-7", "in_use", "pump-icu-01", T0 + 1)
    assert [x.id for x in state.assets.list(unit="W3", status="dirty")] == ["wc-1"]
    assert state.assets.list(type="infusion_pump", status="clean") == []
    with pytest.raises(ValueError, match="status"):
        state.assets.upsert("wc-1", now=T0, status="lost")  # type: ignore[arg-type]
    with pytest.raises(StateError) as info:
        state.assets.upsert("wc-2", now=T0, tag="AC23-0001", type="wheelchair")  # tag already worn
    assert info.value.retryable is False


def test_fleet_plans_work_orders_recalls_and_connection_log(state: State) -> None:
    from state.fleet import LinkChange, OrderError, Recall

    state.registry.seed_from_site(load(env={}).site, T0)
    fleet = state.fleet
    fleet.set_plan("PV-300", "pm", interval_days=180, now=T0)
    fleet.set_plan("PV-300", "pm", interval_days=90, now=T0 + 1, manufacturer="Perfusa Medical")
    (plan,) = fleet.plans()
    assert (plan.interval_days, plan.manufacturer, plan.created, plan.updated) == (90, "Perfusa Medical", T0, T0 + 1)
    with pytest.raises(ValueError, match="kind"):
        fleet.set_plan("PV-300", "overhaul", interval_days=1, now=T0)
    with pytest.raises(KeyError):
        fleet.open_order("no-such-device", "repair", by="b", now=T0)
    order = fleet.open_order("pump-icu-01", "pm", by="b-bio", now=T0, due_at=T0 + HOUR, planned=True)
    assert fleet.assign(order.id, "b-2", now=T0 + 1).status == "assigned"
    closed = fleet.close(order.id, by="b-2", now=T0 + 2, notes="done", parts=["kit", "seal"])
    assert (closed.status, closed.closed_by, closed.parts) == ("closed", "b-2", ["kit", "seal"])
    with pytest.raises(OrderError):
        fleet.close(order.id, by="b-2", now=T0 + 3)
    assert fleet.last_completed() == {("pump-icu-01", "pm"): T0 + 2}
    assert [o.id for o in fleet.orders(planned=True, due_from=T0, due_to=T0 + HOUR + 1)] == [order.id]
    assert fleet.orders(status="not_closed") == []
    fleet.save_recalls([Recall("R-1", model="PV-300", firmware_max="2.4")], now=T0)
    fleet.save_recalls([Recall("R-1", model="PV-300", firmware_max="2.5")], now=T0 + 5)
    assert [(r.id, r.firmware_max, r.imported_at) for r in fleet.recalls()] == [("R-1", "2.5", T0 + 5)]
    changes = [LinkChange("mon-1", "device", "gw-icu", "connected", T0),
               LinkChange("mon-1", "device", "gw-icu", "lost", T0 + 10),
               LinkChange("gw-icu", "gateway", "gw-icu", "online", T0)]
    assert fleet.record_links(changes) == 3
    assert fleet.record_links(changes) == 0  # heard again by another API process: recorded once
    assert [c.state for c in fleet.links(start=T0, end=T0 + 11, subjects=["mon-1"])] == ["connected", "lost"]
    assert {k: v.state for k, v in fleet.links_before(T0 + 10).items()} == {"mon-1": "connected", "gw-icu": "online"}
