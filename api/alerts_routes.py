"""Alert actions and alarm settings: acknowledge, silence, comment, the alarm log, and per-unit / per-bed limits.

Roles (every route declares them; an object of another unit answers 404 exactly like a missing one):

- acknowledge, silence, comment: ``nurse`` and ``charge_nurse`` assigned to the alert's unit now;
- an alert's alarm log: those, and the ``auditor`` (site-wide, for incident review); every read is audited;
- a unit's or bed's alarm settings and a bed's changes (read): ``nurse``, ``charge_nurse`` of the unit,
  ``auditor``; audited;
- a bed's override (change): ``nurse`` or ``charge_nurse`` of the unit;
- a unit's rule set and unit-wide overrides (change): ``charge_nurse`` of the unit only, as they move
  every bed of the unit.

Every change is appended to the audit trail with who, old, new and when. The rule catalogue (rule
set -> rule -> settings, from ``alerts.ruleset.catalogue()``) is handed in by the composition root:
the API never imports the alert engine.
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# parameter annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from api import schemas
from api.access import Access, not_found
from api.security import Principal
from devices.clock import now_ms
from devices.contract import Alert
from devices.site import Site
from state.alarm_settings import DEFAULT_RULESET, OVERRIDABLE, LimitOverride
from state.alerts import NotAllowed
from state.audit import AuditRecord
from state.db import State
from state.errors import StateError

Catalogue = Mapping[str, Mapping[str, Mapping[str, Any]]]
"""Rule set -> rule name -> the rule's settings as plain data."""

MAX_SILENCE_S = 30 * 60
PRIORITIES = ("high", "medium", "low")
NON_NEGATIVE = frozenset({"delay_s", "hysteresis", "window_s", "per_min"})


class SilenceIn(BaseModel):
    """Pause an alert's delivery and escalation for ``timeout_s`` seconds, for a reason (logged)."""

    reason: str = Field(min_length=1, max_length=200)
    timeout_s: int = Field(ge=1, le=MAX_SILENCE_S)


class CommentIn(BaseModel):
    """A comment for an alert's alarm log."""

    text: str = Field(min_length=1, max_length=2000)


class RulesetIn(BaseModel):
    """The clinical default set a unit uses."""

    ruleset: str


class OverrideIn(BaseModel):
    """Rule settings to override (merged into the existing override): limit, priority, delay_s ..."""

    settings: dict[str, Any] = Field(min_length=1)


def alert_out(alert: Alert) -> schemas.AlertOut:
    """The API model of a contract alert."""
    return schemas.AlertOut(**msgspec.to_builtins(alert))


def check_settings(rule: str, defaults: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Refuse (422) fields that cannot be overridden for this rule and values of the wrong kind."""
    refused = sorted(set(settings) - (OVERRIDABLE & set(defaults)))
    if refused:
        raise HTTPException(422, f"rule {rule}: cannot override {', '.join(refused)} "
                                 f"(overridable here: {', '.join(sorted(OVERRIDABLE & set(defaults)))})")
    for field, value in settings.items():
        default = defaults[field]
        if field == "priority":
            ok = value in PRIORITIES
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
                and not (field in NON_NEGATIVE and value < 0)
        if not ok:
            raise HTTPException(422, f"rule {rule}: {field} = {value!r} is not a valid value")


def alerts_router(site: Site, state: State, access: Access, catalogue: Catalogue, *,
                  default_ruleset: str = DEFAULT_RULESET) -> APIRouter:
    """Alert actions and alarm settings; ``default_ruleset`` is the site's set for units that chose none."""
    if default_ruleset not in catalogue:
        raise ValueError(f"default rule set {default_ruleset!r} is not in the catalogue ({', '.join(catalogue)})")
    router = APIRouter(prefix="/api/v1", tags=["alerts"])
    units = {unit.id for unit in site.units}
    clinical = Depends(access.allow("nurse", "charge_nurse"))
    readers = Depends(access.allow("nurse", "charge_nurse", "auditor"))
    charge = Depends(access.allow("charge_nurse"))

    async def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StateError as exc:
            raise HTTPException(503, f"state unavailable: {exc}") from exc

    async def visible_alert(principal: Principal, alert_id: str) -> tuple[Alert, str | None]:
        """The alert and its unit (a gateway's alert: the gateway's unit), or 404 (missing or out of scope)."""
        alert: Alert | None = await call(state.alerts.get, alert_id)
        unit = None if alert is None else access.unit_of_alert(alert)
        if alert is None:
            raise not_found(f"alert {alert_id!r}")
        access.check_unit(principal, unit, f"alert {alert_id!r}")
        return alert, unit

    async def staff_action(principal: Principal, alert_id: str, action: str, fn: Callable[..., Any],
                           *args: Any) -> tuple[Any, str | None]:
        """Run a staff action on an alert of the caller's units (now); audit it."""
        _, unit = await visible_alert(principal, alert_id)
        try:
            done = await call(fn, alert_id, principal.subject, *args, units=set(principal.units))
        except NotAllowed:  # the assignment ended between the scope check and the action
            raise not_found(f"alert {alert_id!r}") from None
        except KeyError:
            raise HTTPException(409, f"alert {alert_id!r} is resolved") from None
        await access.audited(principal, object=f"alert {alert_id}", action=action, unit=unit)
        return done, unit

    @router.post("/alerts/{alert_id}/acknowledge")
    async def acknowledge(alert_id: str, principal: Annotated[Principal, clinical]) -> dict[str, Any]:
        """Acknowledge an alert (idempotent): ``acknowledged`` says whether this call did it; escalation stops."""
        (alert, won), _ = await staff_action(principal, alert_id, "alert.acknowledge", state.alerts.acknowledge,
                                             now_ms())
        return {"acknowledged": won, "alert": alert_out(alert)}

    @router.post("/alerts/{alert_id}/silence")
    async def silence(alert_id: str, body: SilenceIn, principal: Annotated[Principal, clinical]) -> schemas.AlertOut:
        """Pause an open alert's delivery and escalation for ``timeout_s`` (at most 30 min); it lapses by itself."""
        now = now_ms()
        alert, _ = await staff_action(principal, alert_id, "alert.silence", state.alerts.silence,
                                      now + body.timeout_s * 1000, body.reason, now)
        return alert_out(alert)

    @router.post("/alerts/{alert_id}/comments", status_code=201)
    async def comment(alert_id: str, body: CommentIn, principal: Annotated[Principal, clinical]) -> dict[str, Any]:
        """Add a comment to an alert's alarm log."""
        done, _ = await staff_action(principal, alert_id, "alert.comment", state.alerts.comment, body.text, now_ms())
        return msgspec.to_builtins(done)  # type: ignore[no-any-return]

    @router.get("/alerts/{alert_id}/log")
    async def alarm_log(alert_id: str, principal: Annotated[Principal, readers]) -> dict[str, Any]:
        """An alert in its current state and every line of its alarm log (transitions, actions, comments)."""
        alert, unit = await visible_alert(principal, alert_id)
        lines = await call(state.alerts.transitions, alert_id, 10_000)
        await access.audited(principal, object=f"alert {alert_id}", action="read", unit=unit)
        return {"alert": alert_out(alert),
                "log": [{"n": t.n, "at": t.at, "event": t.event, "state": t.state, "priority": t.alert.priority,
                         "actor": t.actor, "detail": t.detail} for t in lines]}

    # --- alarm settings ------------------------------------------------------------------------------------------

    def scoped_unit(principal: Principal, unit: str) -> None:
        if unit not in units:
            raise not_found(f"unit {unit!r}")
        access.check_unit(principal, unit, f"unit {unit!r}")

    async def ruleset_of(unit: str) -> tuple[str, bool]:
        """The set a unit uses and whether it chose it."""
        chosen: dict[str, str] = await call(state.alarm_settings.rulesets)
        name = chosen.get(unit)
        return (name, True) if name is not None and name in catalogue else (default_ruleset, False)

    def override_out(override: LimitOverride, ruleset: str) -> dict[str, Any]:
        body: dict[str, Any] = msgspec.to_builtins(override)
        body["applies"] = override.rule in catalogue[ruleset]  # an override of a rule the set lacks is ignored
        return body

    async def change_override(principal: Principal, unit: str, bed: str | None, rule: str,
                              settings: dict[str, Any]) -> dict[str, Any]:
        ruleset, _ = await ruleset_of(unit)
        if settings:
            defaults = catalogue[ruleset].get(rule)
            if defaults is None:
                raise HTTPException(422, f"rule set {ruleset} has no rule {rule!r} "
                                         f"(rules: {', '.join(catalogue[ruleset])})")
            check_settings(rule, defaults, settings)
        old, new = await call(state.alarm_settings.set_override, unit, bed, rule, settings, principal.subject,
                              now_ms())
        where = f"bed {bed}" if bed else f"unit {unit}"
        await access.audited(principal, object=f"alarm limits {rule} at {where}", action="alarm.override.change",
                             unit=unit, detail={"rule": rule, "bed": bed, "old": old, "new": new})
        return {"unit": unit, "bed": bed, "rule": rule, "old": old, "new": new}

    @router.get("/units/{unit}/alarm-settings")
    async def unit_settings(unit: str, principal: Annotated[Principal, readers]) -> dict[str, Any]:
        """The unit's rule set (its rules' settings) and every unit-wide and per-bed override."""
        scoped_unit(principal, unit)
        ruleset, chosen = await ruleset_of(unit)
        overrides: list[LimitOverride] = await call(state.alarm_settings.overrides, unit)
        await access.audited(principal, object=f"alarm settings of unit {unit}", action="read", unit=unit)
        return {"unit": unit, "ruleset": ruleset, "chosen": chosen, "rulesets": sorted(catalogue),
                "rules": catalogue[ruleset], "overrides": [override_out(o, ruleset) for o in overrides]}

    @router.put("/units/{unit}/alarm-settings/ruleset")
    async def set_ruleset(unit: str, body: RulesetIn, principal: Annotated[Principal, charge]) -> dict[str, Any]:
        """Choose the unit's clinical default set (charge nurse of the unit); audited with old and new."""
        scoped_unit(principal, unit)
        if body.ruleset not in catalogue:
            raise HTTPException(422, f"rule set {body.ruleset!r}: choose one of {', '.join(sorted(catalogue))}")
        old, new = await call(state.alarm_settings.set_ruleset, unit, body.ruleset, principal.subject, now_ms())
        await access.audited(principal, object=f"alarm rule set of unit {unit}", action="alarm.ruleset.change",
                             unit=unit, detail={"old": old, "new": new})
        return {"unit": unit, "old": old, "new": new}

    @router.put("/units/{unit}/alarm-settings/rules/{rule}")
    async def set_unit_override(unit: str, rule: str, body: OverrideIn,
                                principal: Annotated[Principal, charge]) -> dict[str, Any]:
        """Override a rule for every bed of the unit (charge nurse); merged into the existing override."""
        scoped_unit(principal, unit)
        return await change_override(principal, unit, None, rule, body.settings)

    @router.delete("/units/{unit}/alarm-settings/rules/{rule}")
    async def remove_unit_override(unit: str, rule: str, principal: Annotated[Principal, charge]) -> dict[str, Any]:
        """Remove the unit-wide override of a rule (charge nurse): the rule set's settings apply again."""
        scoped_unit(principal, unit)
        return await change_override(principal, unit, None, rule, {})

    @router.get("/beds/{bed}/alarm-settings")
    async def bed_settings(bed: str, principal: Annotated[Principal, readers]) -> dict[str, Any]:
        """The rules in force at a bed: the unit's set with the unit's and then the bed's overrides merged in."""
        unit = access.unit_of_bed(principal, bed)
        ruleset, _ = await ruleset_of(unit)
        overrides: list[LimitOverride] = await call(state.alarm_settings.overrides, unit)
        rules = {name: dict(settings) for name, settings in catalogue[ruleset].items()}
        layers = [o for o in overrides if o.bed is None] + [o for o in overrides if o.bed == bed]
        for override in layers:
            if override.rule in rules:
                rules[override.rule].update(override.settings)
        await access.audited(principal, object=f"alarm settings of bed {bed}", action="read", unit=unit)
        return {"bed": bed, "unit": unit, "ruleset": ruleset, "rules": rules,
                "overrides": [override_out(o, ruleset) for o in layers]}

    @router.get("/beds/{bed}/alarm-settings/changes")
    async def bed_setting_changes(bed: str, principal: Annotated[Principal, readers],
                                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        """The changes that touched a bed's alarm settings, newest first, from the audit trail: the unit's rule
        set, unit-wide overrides and the bed's own (who, when, old and new settings)."""
        unit = access.unit_of_bed(principal, bed)
        records: list[AuditRecord] = await call(state.audit.records, unit=unit, limit=100_000,
                                                actions=("alarm.override.change", "alarm.ruleset.change"))
        changes = [{"at": r.at, "by": r.actor, "role": r.role, "action": r.action, "rule": r.detail.get("rule"),
                    "bed": r.detail.get("bed"), "old": r.detail.get("old"), "new": r.detail.get("new")}
                   for r in reversed(records) if r.detail.get("bed") in (None, bed)][:limit]
        await access.audited(principal, object=f"alarm settings changes of bed {bed}", action="read", unit=unit)
        return changes

    @router.put("/beds/{bed}/alarm-settings/rules/{rule}")
    async def set_bed_override(bed: str, rule: str, body: OverrideIn,
                               principal: Annotated[Principal, clinical]) -> dict[str, Any]:
        """Override a rule at one bed (nurse or charge nurse of the unit); it wins over the unit's override."""
        unit = access.unit_of_bed(principal, bed)
        return await change_override(principal, unit, bed, rule, body.settings)

    @router.delete("/beds/{bed}/alarm-settings/rules/{rule}")
    async def remove_bed_override(bed: str, rule: str, principal: Annotated[Principal, clinical]) -> dict[str, Any]:
        """Remove a bed's override of a rule (nurse or charge nurse of the unit)."""
        unit = access.unit_of_bed(principal, bed)
        return await change_override(principal, unit, bed, rule, {})

    return router
