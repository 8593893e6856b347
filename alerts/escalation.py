"""Escalation: an unacknowledged alert moves along its priority's schedule (primary, buddy, charge, team).

Synchronous and database-backed (call it through ``asyncio.to_thread``): the deadlines live in the
state, so a restarted alert service picks them up, and each step is recorded by
:meth:`state.escalations.Escalations.fire`, which re-reads the acknowledgement under the alert's lock.
A step nobody holds is skipped to the next one that somebody does.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from alerts.routing import Router, RoutingSettings
from devices.contract import Alert
from state.escalations import Escalation, Escalations, Fired, StepPlan

log = logging.getLogger(__name__)

NO_RECEIVER: Final = "no_receiver"
NoReceiver = Literal["no_receiver"]


class Escalator:
    """Plans and records escalation steps."""

    def __init__(self, escalations: Escalations, router: Router, settings: RoutingSettings) -> None:
        """Use the state's escalations and the assignment router."""
        self.escalations = escalations
        self.router = router
        self.settings = settings

    def plan(self, unit: str | None, bed: str | None, priority: str, first: int, now: int,
             reason: str) -> StepPlan | None:
        """The first step from index ``first`` that somebody holds, or None when none is left."""
        schedule = self.settings.schedule(priority)
        for index in range(first, len(schedule)):
            spec = schedule[index]
            people = self.router.recipients(spec.target, unit, bed, now)
            if not people:
                continue
            last = index == len(schedule) - 1
            confirm = self.settings.confirm_s
            return StepPlan(step=index, target=spec.target, reason=reason if index == first else "vacant",
                            recipients=[p.staff for p in people], channels=list(self.settings.channels),
                            next_at=None if last else now + round(spec.timeout_s * 1000),
                            confirm_by=now + round(confirm * 1000) if confirm > 0 else None)
        return None

    def start(self, alert: Alert, now: int, first: int = 0) -> Fired | NoReceiver | None:
        """Send a new alert to its first step; None when it is already escalating or no longer active."""
        plan = self.plan(alert.unit, alert.bed, alert.priority, first, now, "onset")
        if plan is None:
            return NO_RECEIVER
        return self.escalations.fire(alert.id, -1, plan, now, unit=alert.unit, bed=alert.bed)

    def advance(self, escalation: Escalation, now: int) -> Fired | NoReceiver | None:
        """Fire the step after ``escalation``'s current one (its deadline passed, or its receivers declined)."""
        reason = self._why(escalation)
        plan = self.plan(escalation.unit, escalation.bed, escalation.priority, escalation.step + 1, now, reason)
        if plan is None:
            # Nobody further along: the last receivers keep it; say so once (the caller raises a technical alarm).
            stopped = self.escalations.stop(escalation.alert_id, "exhausted", now)
            return NO_RECEIVER if stopped and escalation.step < 0 else None
        fired = self.escalations.fire(escalation.alert_id, escalation.step, plan, now)
        if fired is not None:
            log.warning("alert %s escalated to step %d (%s: %s), %s", escalation.alert_id, plan.step, plan.target,
                        ", ".join(plan.recipients), reason)
        return fired

    def _why(self, escalation: Escalation) -> str:
        """Why the current step is being left: every receiver declined, a delivery failed, or the timeout."""
        answers = [d.status for d in self.escalations.deliveries(alert_id=escalation.alert_id)
                   if d.step == escalation.step]
        if answers and all(status == "declined" for status in answers):
            return "declined"
        if "failed" in answers:
            return "unconfirmed"
        return "timeout"
