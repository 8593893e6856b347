"""Escalation and delivery tracking on SQLite and PostgreSQL: schedule, acknowledgement race, restart, answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from alerts.escalation import NO_RECEIVER, Escalator
from alerts.routing import Router, RoutingSettings, StepSpec
from devices.contract import Alert
from devices.site import DeviceSpec, GatewaySpec, Site, Unit
from state import State, open_state
from state.escalations import Escalations, Fired
from state.models import AlarmLogRow
from tests import test_state
from tests.test_state import pg, pg_shared  # noqa: F401  (fixtures the state fixture needs)

SITE = Site(id="demo", name="test hospital",
            units=[Unit("ICU", "Intensive care", [f"ICU-{n:02d}" for n in range(1, 9)]),
                   Unit("W3", "Ward 3", [f"W3-{n:02d}" for n in range(1, 9)])],
            gateways=[GatewaySpec("gw-icu", "ICU")],
            devices=[DeviceSpec(f"mon-icu-{n:02d}", "bedside_serial", "gw-icu", bed=f"ICU-{n:02d}") for n in (1, 2)])
T0 = 1_700_000_000_000
HOUR = 3_600_000
SCHEDULE = RoutingSettings(
    schedules={"high": [StepSpec("primary", 2), StepSpec("buddy", 2), StepSpec("charge", 3), StepSpec("team", 5)],
               "medium": [StepSpec("primary", 4), StepSpec("charge", 4)]},
    confirm_s=1.0)


state = test_state.state  # the parametrised fixture: SQLite (a file) and PostgreSQL (emptied)


def staffed(state: State, *, buddy: bool = True, start: int = T0) -> None:
    """The test site with a primary nurse (and buddy) for ICU-01 and a charge nurse for ICU, for an hour from start."""
    state.registry.seed_from_site(SITE, start)
    a = state.assignments
    for staff, name, role in (("n-ana", "Ana", "nurse"), ("n-ben", "Ben", "nurse"), ("n-cho", "Cho", "charge_nurse"),
                              ("n-dev", "Dev", "nurse")):
        a.add_staff(staff, name, role)
    a.assign("n-ana", "ICU", "primary", start, start + HOUR, bed="ICU-01")
    if buddy:
        a.assign("n-ben", "ICU", "buddy", start, start + HOUR, bed="ICU-01")
    a.assign("n-cho", "ICU", "charge", start, start + HOUR)
    a.assign("n-dev", "ICU", "primary", start, start + HOUR, bed="ICU-02")


def alert(state: State, alert_id: str = "al-1", priority: str = "high", bed: str | None = "ICU-01") -> Alert:
    stored = Alert(id=alert_id, type="spo2_low", source=bed or "fridge-icu", alarm_kind="physiological",
                   priority=priority, state="active", onset=T0, updated=T0, message="SpO2 85 % below 90",  # type: ignore[arg-type]
                   bed=bed, unit="ICU")
    state.alerts.save(stored)
    return stored


def escalator(state: State, settings: RoutingSettings = SCHEDULE) -> Escalator:
    return Escalator(Escalations(state.sessions), Router(state.assignments), settings)


def log_events(state: State, alert_id: str) -> list[str]:
    """The alarm log's notified, escalated and acknowledged lines of one alert, in commit order."""
    with state.sessions.read("test") as session:
        rows = session.scalars(select(AlarmLogRow).where(AlarmLogRow.alert_id == alert_id).order_by(AlarmLogRow.n))
        events = [r.event or r.state for r in rows]
    return [e for e in events if e in ("notified", "escalated", "acknowledged")]


def test_escalates_primary_buddy_charge_team_on_schedule(state: State) -> None:
    staffed(state)
    esc = escalator(state)
    fired = esc.start(alert(state), T0)
    assert isinstance(fired, Fired)
    assert (fired.step.step, fired.step.target, fired.step.recipients) == (0, "primary", ["n-ana"])
    assert [d.status for d in fired.deliveries] == ["sent"]
    assert esc.escalations.due(T0 + 1999) == []  # not before its timeout
    path = [("primary", ["n-ana"])]
    at = T0
    for timeout_ms in (2000, 2000, 3000):
        at += timeout_ms
        (due,) = esc.escalations.due(at)
        step = esc.advance(due, at)
        assert isinstance(step, Fired)
        path.append((step.step.target, step.step.recipients))
    assert path == [("primary", ["n-ana"]), ("buddy", ["n-ben"]), ("charge", ["n-cho"]),
                    ("team", ["n-ana", "n-ben", "n-cho", "n-dev"])]
    final = esc.escalations.get("al-1")
    assert final is not None
    assert final.state == "exhausted"
    assert final.next_at is None
    assert log_events(state, "al-1") == ["notified", "escalated", "escalated", "escalated"]


def test_each_priority_has_its_own_schedule_and_vacant_steps_are_skipped(state: State) -> None:
    staffed(state, buddy=False)
    esc = escalator(state)
    esc.start(alert(state, "al-m", priority="medium"), T0)
    assert esc.escalations.due(T0 + 3999) == []
    (due,) = esc.escalations.due(T0 + 4000)
    step = esc.advance(due, T0 + 4000)
    assert isinstance(step, Fired)
    assert step.step.target == "charge"
    esc.start(alert(state, "al-h"), T0)
    (due,) = esc.escalations.due(T0 + 2000)
    step = esc.advance(due, T0 + 2000)
    assert isinstance(step, Fired)
    assert (step.step.target, step.step.reason) == ("charge", "vacant")  # nobody is the buddy: straight to charge


def test_an_alert_nobody_is_assigned_to_has_no_receiver(state: State) -> None:
    state.registry.seed_from_site(SITE, T0)
    assert escalator(state).start(alert(state, bed="ICU-05"), T0) == NO_RECEIVER


def test_no_step_fires_after_a_committed_acknowledgement(state: State) -> None:
    staffed(state)
    esc = escalator(state)
    esc.start(alert(state), T0)
    (due,) = esc.escalations.due(T0 + 2000)
    _, won = state.alerts.acknowledge("al-1", "n-ana", T0 + 1999)
    assert won
    assert esc.advance(due, T0 + 2000) is None  # the deadline was read before the ack: the step still checks
    after = esc.escalations.get("al-1")
    assert after is not None
    assert (after.state, after.next_at) == ("acknowledged", None)
    assert esc.escalations.due(T0 + HOUR) == []
    assert log_events(state, "al-1") == ["notified", "acknowledged"]


class PausingEscalations(Escalations):
    """Holds the alert's lock inside the step's transaction until told to go on (to stage the race)."""

    def __init__(self, state: State) -> None:
        super().__init__(state.sessions)
        self.locked = threading.Event()
        self.go_on = threading.Event()

    def _lock_alert(self, session, alert_id):  # type: ignore[no-untyped-def]
        row = super()._lock_alert(session, alert_id)
        self.locked.set()
        assert self.go_on.wait(20)
        return row


def test_an_acknowledgement_racing_a_step_waits_for_it(state: State) -> None:
    """The ack arrives while the step's transaction holds the alert: it commits after the step, never before."""
    staffed(state)
    escalations = PausingEscalations(state)
    esc = Escalator(escalations, Router(state.assignments), SCHEDULE)
    escalations.go_on.set()
    esc.start(alert(state), T0)
    escalations.go_on.clear()
    escalations.locked.clear()
    (due,) = escalations.due(T0 + 2000)
    results: dict[str, object] = {}
    stepper = threading.Thread(target=lambda: results.update(step=esc.advance(due, T0 + 2000)))
    stepper.start()
    assert escalations.locked.wait(20)
    acker = threading.Thread(target=lambda: results.update(ack=state.alerts.acknowledge("al-1", "n-ana", T0 + 2000)))
    acker.start()
    acker.join(1.0)
    assert acker.is_alive(), "the acknowledgement committed while the step held the alert's lock"
    escalations.go_on.set()
    stepper.join(20)
    acker.join(20)
    assert isinstance(results["step"], Fired)
    assert results["ack"][1] is True  # type: ignore[index]
    assert log_events(state, "al-1") == ["notified", "escalated", "acknowledged"]


def test_acknowledgement_race_at_the_timeout_never_gives_both(state: State) -> None:
    """Many races at the deadline: either the step commits first and the ack after it, or the ack stops it."""
    staffed(state)
    esc = escalator(state)
    outcomes = set()
    for trial in range(12):
        alert_id = f"al-race-{trial}"
        esc.start(alert(state, alert_id), T0)
        (due,) = [d for d in esc.escalations.due(T0 + 2000) if d.alert_id == alert_id]
        barrier = threading.Barrier(2)
        done: dict[str, object] = {}

        def step(alert_id: str = alert_id, barrier: threading.Barrier = barrier, due=due, done=done) -> None:  # type: ignore[no-untyped-def]
            barrier.wait()
            done["step"] = esc.advance(due, T0 + 2000)

        def ack(alert_id: str = alert_id, barrier: threading.Barrier = barrier, done=done,  # type: ignore[no-untyped-def]
                pause: float = 0.001 * (trial % 5)) -> None:
            barrier.wait()
            time.sleep(pause)
            done["ack"] = state.alerts.acknowledge(alert_id, "n-ana", T0 + 2000)

        threads = [threading.Thread(target=step), threading.Thread(target=ack)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        events = log_events(state, alert_id)
        assert events in (["notified", "escalated", "acknowledged"], ["notified", "acknowledged"])
        assert events.index("acknowledged") == len(events) - 1  # nothing after the acknowledgement
        outcomes.add(len(events))
        for later in esc.escalations.due(T0 + HOUR):  # a deadline read later finds the ack and stops there
            assert esc.advance(later, T0 + HOUR) is None
        assert log_events(state, alert_id) == events
    assert outcomes  # both orders are allowed; which ones happened depends on the scheduler


def test_a_restart_keeps_the_deadline(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The deadline is in the database: a new process (a fresh engine) finds it due at the same time."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = open_state(url)
    staffed(first)
    escalator(first).start(alert(first), T0)
    first.close()
    second = open_state(url)
    try:
        esc = escalator(second)
        assert esc.escalations.due(T0 + 1999) == []
        (due,) = esc.escalations.due(T0 + 2000)
        assert due.next_at == T0 + 2000
        assert due.step == 0
        step = esc.advance(due, T0 + 2000)
        assert isinstance(step, Fired)
        assert step.step.target == "buddy"
        assert escalator(second).start(second.alerts.get("al-1"), T0 + 2001) is None  # type: ignore[arg-type]
    finally:
        second.close()


def test_delivery_statuses_only_move_forward(state: State) -> None:
    staffed(state)
    esc = escalator(state)
    fired = esc.start(alert(state), T0)
    assert isinstance(fired, Fired)
    (delivery,) = fired.deliveries
    with pytest.raises(KeyError):
        esc.escalations.mark(delivery.id, "read", T0 + 10, staff="n-ben")  # not hers to confirm
    read = esc.escalations.mark(delivery.id, "read", T0 + 100, staff="n-ana")
    assert (read.status, read.delivered_at, read.read_at, read.confirm_by) == ("read", T0 + 100, T0 + 100, None)
    back = esc.escalations.mark(delivery.id, "delivered", T0 + 200)
    assert back.status == "read"
    accepted = esc.escalations.mark(delivery.id, "accepted", T0 + 300)
    assert (accepted.status, accepted.accepted_at) == ("accepted", T0 + 300)
    with pytest.raises(ValueError, match="already accepted"):
        esc.escalations.mark(delivery.id, "declined", T0 + 400)
    stopped = esc.escalations.get("al-1")
    assert stopped is not None
    assert stopped.state == "accepted"
    assert esc.escalations.due(T0 + HOUR) == []


def test_a_decline_moves_to_the_next_step_at_once(state: State) -> None:
    staffed(state)
    esc = escalator(state)
    fired = esc.start(alert(state), T0)
    assert isinstance(fired, Fired)
    esc.escalations.mark(fired.deliveries[0].id, "declined", T0 + 500, staff="n-ana")
    (due,) = esc.escalations.due(T0 + 500)
    step = esc.advance(due, T0 + 500)
    assert isinstance(step, Fired)
    assert (step.step.target, step.step.reason) == ("buddy", "declined")


def test_an_unconfirmed_delivery_is_given_up_once(state: State) -> None:
    staffed(state)
    esc = escalator(state)
    fired = esc.start(alert(state), T0)
    assert isinstance(fired, Fired)
    assert esc.escalations.unconfirmed(T0 + 999) == []
    (late,) = esc.escalations.unconfirmed(T0 + 1000)
    assert esc.escalations.give_up(late.id, T0 + 1000, "not confirmed")
    assert not esc.escalations.give_up(late.id, T0 + 1000, "not confirmed")  # a second instance: no double alarm
    assert esc.escalations.hasten("al-1", T0 + 1000)
    (due,) = esc.escalations.due(T0 + 1000)
    step = esc.advance(due, T0 + 1000)
    assert isinstance(step, Fired)
    assert (step.step.target, step.step.reason) == ("buddy", "unconfirmed")
    assert esc.escalations.next_deadline() == T0 + 2000  # the buddy's confirmation deadline


@pytest.fixture
def two_states(tmp_path: Path) -> Iterator[tuple[State, State]]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    one, two = open_state(url), open_state(url)
    yield one, two
    one.close()
    two.close()


def test_two_instances_fire_a_step_once(two_states: tuple[State, State]) -> None:
    one, two = two_states
    staffed(one)
    escalator(one).start(alert(one), T0)
    (due_one,) = escalator(one).escalations.due(T0 + 2000)
    (due_two,) = escalator(two).escalations.due(T0 + 2000)
    fired = [escalator(one).advance(due_one, T0 + 2000), escalator(two).advance(due_two, T0 + 2000)]
    assert sum(isinstance(f, Fired) for f in fired) == 1


def test_schedules_are_configuration_checked_at_start() -> None:
    from wardlink.config import ConfigError, load

    steps = [{"target": "primary", "timeout_s": 5}, {"target": "charge", "timeout_s": 7}]
    config = load(env={}, overrides={"alerts": {"delivery": {"routing": {"schedules": {"high": steps},
                                                                         "confirm_s": 3}}}})
    routing = config.alerts.delivery.routing
    assert [(s.target, s.timeout_s) for s in routing.schedule("high")] == [("primary", 5), ("charge", 7)]
    assert routing.schedule("low") == routing.schedule("medium")  # a priority without a schedule uses medium's
    for bad in ({"high": []}, {"high": [{"target": "primary", "timeout_s": -1}]},
                {"high": [{"target": "nobody", "timeout_s": 1}]}):
        with pytest.raises(ConfigError):
            load(env={}, overrides={"alerts": {"delivery": {"routing": {"schedules": bad}}}})
