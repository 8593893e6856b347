"""Who an alert goes to: the escalation schedule per priority and the current assignment (bed -> patient -> nurse).

A schedule is a list of steps (primary nurse, buddy, charge nurse, unit team), each with how long it
waits for an acknowledgement before the next one fires. Recipients are read from the assignments at
the moment a step fires, so a shift change or a transfer during an escalation is followed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from devices.contract import Priority
from state.assignments import Assignments, Recipient

Target = Literal["primary", "buddy", "charge", "team"]


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a schedule: whom, and how long to wait for an acknowledgement before the next step."""

    target: Target
    timeout_s: float


def _steps(*pairs: tuple[Target, float]) -> list[StepSpec]:
    return [StepSpec(target, timeout) for target, timeout in pairs]


DEFAULT_SCHEDULES: dict[str, list[StepSpec]] = {
    "high": _steps(("primary", 30), ("buddy", 30), ("charge", 60), ("team", 120)),
    "medium": _steps(("primary", 60), ("buddy", 60), ("charge", 120), ("team", 300)),
    "low": _steps(("primary", 180), ("charge", 600)),
    "info": _steps(("primary", 0)),
}


class RoutingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Escalation schedules by priority, and how long a receiver has to confirm a delivery."""

    schedules: dict[str, list[StepSpec]] = msgspec.field(default_factory=lambda: dict(DEFAULT_SCHEDULES))
    confirm_s: float = 10.0  # a delivery not confirmed this long: technical alarm, next step now
    channels: list[Literal["websocket", "webhook"]] = msgspec.field(default_factory=lambda: ["websocket"])
    poll_s: float = 0.25  # how often deadlines and receivers' answers are checked

    def __post_init__(self) -> None:
        """Check every schedule."""
        for priority, steps in self.schedules.items():
            if not steps:
                raise ValueError(f"alerts.routing.schedules.{priority}: needs at least one step")
            if any(step.timeout_s < 0 for step in steps):
                raise ValueError(f"alerts.routing.schedules.{priority}: a timeout cannot be negative")

    def schedule(self, priority: Priority | str) -> list[StepSpec]:
        """The schedule of a priority (a priority without one uses medium's)."""
        return self.schedules.get(priority) or self.schedules.get("medium") or DEFAULT_SCHEDULES["medium"]


class Router:
    """Recipients of one step for an alert's bed (or, without a bed, its unit)."""

    def __init__(self, assignments: Assignments) -> None:
        """Read routes from the assignments."""
        self.assignments = assignments

    def recipients(self, target: Target, unit: str | None, bed: str | None, at: int) -> list[Recipient]:
        """Who holds ``target`` for ``bed`` (or ``unit``) at ``at``; empty when nobody does."""
        if target == "team":
            return self.assignments.team(unit, at) if unit else []
        if bed is not None:
            try:
                route = self.assignments.route(bed, at)
            except KeyError:
                route = []
        else:
            route = self.assignments.unit_route(unit, at) if unit else []
        return [r for r in route if r.role == target]
