"""Medical-waste custody: a bag sealed at the ward, then handovers collector -> storage -> disposer, never edited."""

from __future__ import annotations

import logging
from itertools import pairwise
from typing import Final

import msgspec
from sqlalchemy import ColumnElement, func, or_, select

from devices.contract import WasteCategory, WasteEvent, WastePoint

from .errors import CustodyError
from .models import WASTE_CATEGORIES, WASTE_POINTS, WasteBagRow, WasteHandoverRow
from .sessions import Sessions

log = logging.getLogger(__name__)

NEXT: Final[dict[str, str]] = dict(pairwise(WASTE_POINTS))
"""The one legal destination from each point: ward -> collector -> storage -> disposer."""
PREVIOUS: Final[dict[str, str]] = {to: frm for frm, to in NEXT.items()}


class Bag(msgspec.Struct, frozen=True):
    """A bag as sealed at the ward."""

    id: str
    category: str
    weight_g: float
    sealed_by: str
    sealed_at: int
    unit: str | None = None
    device: str | None = None


class Handover(msgspec.Struct, frozen=True):
    """One step of a bag's custody chain (step 1 leaves the ward)."""

    bag: str
    step: int
    from_point: str
    to_point: str
    handler: str
    weight_g: float
    at: int
    device: str | None = None
    manifest: str | None = None


def _check_weight(bag: str, weight_g: float) -> None:
    """Refuse a negative or non-finite weight."""
    if not 0 <= weight_g < float("inf"):
        raise CustodyError(f"bag {bag}: weight {weight_g!r} g is not a finite non-negative number")


class Waste:
    """Append-only custody records: :meth:`seal` and :meth:`handover` add rows, nothing changes or removes one."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def seal(self, bag: str, *, category: WasteCategory, weight_g: float, handler: str, at: int,
             unit: str | None = None, device: str | None = None) -> Bag:
        """Register a bag sealed at the ward; a bag is sealed once (a second seal raises :class:`CustodyError`)."""
        if category not in WASTE_CATEGORIES:
            raise CustodyError(f"bag {bag}: unknown category {category!r}")
        _check_weight(bag, weight_g)
        with self._sessions.write(f"sealing bag {bag}") as session:
            if session.get(WasteBagRow, bag) is not None:
                raise CustodyError(f"bag {bag}: already sealed")
            session.add(WasteBagRow(id=bag, category=category, weight_g=weight_g, sealed_by=handler, sealed_at=at,
                                    unit=unit, device=device))
        return Bag(bag, category, weight_g, handler, at, unit, device)

    def handover(self, bag: str, *, from_point: WastePoint, to_point: WastePoint, handler: str, weight_g: float,
                 at: int, device: str | None = None, manifest: str | None = None) -> Handover:
        """Record the next step of a sealed bag's chain; raise :class:`CustodyError` when it is not the next step.

        A step must leave the point the chain has reached (the ward for the first), go to the next point
        (ward -> collector -> storage -> disposer) and not be earlier than the step before.
        """
        if NEXT.get(from_point) != to_point:
            raise CustodyError(f"bag {bag}: a handover from {from_point} goes to {NEXT.get(from_point, 'nowhere')}, "
                               f"not {to_point}")
        _check_weight(bag, weight_g)
        with self._sessions.write(f"recording a handover of bag {bag}") as session:
            bag_row = session.get(WasteBagRow, bag, with_for_update=True)  # serialises handovers of one bag
            if bag_row is None:
                raise CustodyError(f"bag {bag}: handed over from {from_point} but never sealed")
            last = session.scalars(select(WasteHandoverRow).where(WasteHandoverRow.bag_id == bag)
                                   .order_by(WasteHandoverRow.step.desc()).limit(1)).first()
            reached, since = ("ward", bag_row.sealed_at) if last is None else (last.to_point, last.at)
            if from_point != reached:
                raise CustodyError(f"bag {bag}: handed over from {from_point}, but its chain is at {reached}")
            if at < since:
                raise CustodyError(f"bag {bag}: handover at {at} is earlier than the step before ({since})")
            step = 1 if last is None else last.step + 1
            session.add(WasteHandoverRow(bag_id=bag, step=step, from_point=from_point, to_point=to_point,
                                         handler=handler, weight_g=weight_g, at=at, device=device, manifest=manifest))
        log.debug("bag %s: step %d %s -> %s by %s", bag, step, from_point, to_point, handler)
        return Handover(bag, step, from_point, to_point, handler, weight_g, at, device, manifest)

    def record_scan(self, event: WasteEvent) -> Bag | Handover:
        """Record a scan: at the ward it seals the bag, elsewhere it is the handover arriving at that point."""
        if event.point == "ward":
            return self.seal(event.bag, category=event.category, weight_g=event.weight_g, handler=event.handler,
                             at=event.ts, unit=event.unit, device=event.device)
        bag = self.bag(event.bag)
        if bag is not None and bag.category != event.category:
            raise CustodyError(f"bag {event.bag}: scanned as {event.category}, sealed as {bag.category}")
        from_point: WastePoint = PREVIOUS[event.point]  # type: ignore[assignment]  # values of NEXT are points
        return self.handover(event.bag, from_point=from_point, to_point=event.point, handler=event.handler,
                             weight_g=event.weight_g, at=event.ts, device=event.device, manifest=event.manifest)

    def bag(self, bag: str) -> Bag | None:
        """A bag as sealed, or None."""
        with self._sessions.read(f"reading bag {bag}") as session:
            row = session.get(WasteBagRow, bag)
            return None if row is None else Bag(row.id, row.category, row.weight_g, row.sealed_by, row.sealed_at,
                                                row.unit, row.device)

    def chain(self, bag: str) -> list[Handover]:
        """A bag's handovers, first step first (empty for an unknown or only-sealed bag)."""
        query = select(WasteHandoverRow).where(WasteHandoverRow.bag_id == bag).order_by(WasteHandoverRow.step)
        with self._sessions.read(f"reading the chain of bag {bag}") as session:
            return [Handover(bag, r.step, r.from_point, r.to_point, r.handler, r.weight_g, r.at, r.device, r.manifest)
                    for r in session.scalars(query)]

    def held_at(self, point: WastePoint) -> list[str]:
        """Bags whose chain has reached ``point`` and gone no further (e.g. held in storage), by bag id."""
        last = (select(WasteHandoverRow.bag_id, func.max(WasteHandoverRow.step).label("step"))
                .group_by(WasteHandoverRow.bag_id).subquery())
        query = (select(WasteHandoverRow.bag_id)
                 .join(last, (last.c.bag_id == WasteHandoverRow.bag_id) & (last.c.step == WasteHandoverRow.step))
                 .where(WasteHandoverRow.to_point == point).order_by(WasteHandoverRow.bag_id))
        with self._sessions.read(f"reading bags held at {point}") as session:
            return list(session.scalars(query))

    def holding(self, point: WastePoint) -> list[Handover]:
        """The last step of every bag held at ``point`` now (its ``at`` is when the bag arrived there), by bag."""
        last = (select(WasteHandoverRow.bag_id, func.max(WasteHandoverRow.step).label("step"))
                .group_by(WasteHandoverRow.bag_id).subquery())
        query = (select(WasteHandoverRow)
                 .join(last, (last.c.bag_id == WasteHandoverRow.bag_id) & (last.c.step == WasteHandoverRow.step))
                 .where(WasteHandoverRow.to_point == point).order_by(WasteHandoverRow.bag_id))
        with self._sessions.read(f"reading bags held at {point}") as session:
            return [Handover(r.bag_id, r.step, r.from_point, r.to_point, r.handler, r.weight_g, r.at, r.device,
                             r.manifest) for r in session.scalars(query)]

    def journeys(self, *, since: int | None = None, until: int | None = None, held_at: WastePoint | None = None
                 ) -> list[tuple[Bag, list[Handover]]]:
        """Bags with their whole chains, by seal time: those sealed or handed over in ``[since, until)``, or
        (``held_at``) those whose chain has reached that point and gone no further."""
        which: ColumnElement[bool]
        if held_at is not None:
            last = (select(WasteHandoverRow.bag_id, func.max(WasteHandoverRow.step).label("step"))
                    .group_by(WasteHandoverRow.bag_id).subquery())
            chosen = (select(WasteHandoverRow.bag_id)
                      .join(last, (last.c.bag_id == WasteHandoverRow.bag_id) & (last.c.step == WasteHandoverRow.step))
                      .where(WasteHandoverRow.to_point == held_at))
            which = WasteBagRow.id.in_(chosen)
        elif since is not None and until is not None:
            moved = select(WasteHandoverRow.bag_id).where(WasteHandoverRow.at >= since, WasteHandoverRow.at < until)
            which = or_(WasteBagRow.sealed_at.between(since, until - 1), WasteBagRow.id.in_(moved))
        else:
            raise ValueError("journeys: give since and until, or held_at")
        bags = select(WasteBagRow).where(which).order_by(WasteBagRow.sealed_at, WasteBagRow.id)
        steps = (select(WasteHandoverRow).where(WasteHandoverRow.bag_id.in_(select(WasteBagRow.id).where(which)))
                 .order_by(WasteHandoverRow.bag_id, WasteHandoverRow.step))
        with self._sessions.read("reading bags and their chains") as session:
            chains: dict[str, list[Handover]] = {}
            for r in session.scalars(steps):
                chains.setdefault(r.bag_id, []).append(Handover(r.bag_id, r.step, r.from_point, r.to_point, r.handler,
                                                                r.weight_g, r.at, r.device, r.manifest))
            return [(Bag(r.id, r.category, r.weight_g, r.sealed_by, r.sealed_at, r.unit, r.device),
                     chains.get(r.id, [])) for r in session.scalars(bags)]

    def sealed(self, since: int, until: int, *, units: set[str] | None = None) -> list[Bag]:
        """Bags sealed in ``[since, until)``, oldest first; ``units`` limits them to those units."""
        query = (select(WasteBagRow).where(WasteBagRow.sealed_at >= since, WasteBagRow.sealed_at < until)
                 .order_by(WasteBagRow.sealed_at, WasteBagRow.id))
        if units is not None:
            query = query.where(WasteBagRow.unit.in_(sorted(units)))
        with self._sessions.read("reading sealed bags") as session:
            return [Bag(r.id, r.category, r.weight_g, r.sealed_by, r.sealed_at, r.unit, r.device)
                    for r in session.scalars(query)]

    def unsealed_pending(self, before: int) -> list[Bag]:
        """Bags sealed before ``before`` that no collector has taken yet (still on the ward)."""
        taken = select(WasteHandoverRow.bag_id)
        query = (select(WasteBagRow).where(WasteBagRow.sealed_at < before, WasteBagRow.id.not_in(taken))
                 .order_by(WasteBagRow.sealed_at))
        with self._sessions.read("reading bags waiting on the ward") as session:
            return [Bag(r.id, r.category, r.weight_g, r.sealed_by, r.sealed_at, r.unit, r.device)
                    for r in session.scalars(query)]

    def collected_units(self, since: int, until: int) -> set[str]:
        """Units with at least one bag handed from the ward to a collector in ``[since, until)``."""
        query = (select(WasteBagRow.unit).join(WasteHandoverRow, WasteHandoverRow.bag_id == WasteBagRow.id)
                 .where(WasteHandoverRow.step == 1, WasteHandoverRow.at >= since, WasteHandoverRow.at < until)
                 .distinct())
        with self._sessions.read("reading units with a handover") as session:
            return {u for u in session.scalars(query) if u is not None}

    def register(self, since: int, until: int) -> list[RegisterLine]:
        """Every handover in ``[since, until)`` as a register line (both signatures), in time order."""
        query = (select(WasteHandoverRow, WasteBagRow).join(WasteBagRow, WasteBagRow.id == WasteHandoverRow.bag_id)
                 .where(WasteHandoverRow.at >= since, WasteHandoverRow.at < until)
                 .order_by(WasteHandoverRow.at, WasteHandoverRow.bag_id, WasteHandoverRow.step))
        with self._sessions.read("reading the handover register") as session:
            rows = [(handover, bag) for handover, bag in session.execute(query).all()]
            bags = {bag.id for _, bag in rows}
            handlers: dict[tuple[str, int], tuple[str, float]] = {}
            if bags:
                for step in session.scalars(select(WasteHandoverRow).where(WasteHandoverRow.bag_id.in_(sorted(bags)))):
                    handlers[(step.bag_id, step.step)] = (step.handler, step.weight_g)
            lines = []
            for handover, bag in rows:
                given_by, given_weight = handlers.get((bag.id, handover.step - 1), (bag.sealed_by, bag.weight_g))
                lines.append(RegisterLine(
                    at=handover.at, bag=bag.id, unit=bag.unit, category=bag.category, step=handover.step,
                    from_point=handover.from_point, to_point=handover.to_point, given_by=given_by,
                    received_by=handover.handler, weight_g=handover.weight_g, previous_weight_g=given_weight,
                    sealed_at=bag.sealed_at, sealed_weight_g=bag.weight_g, manifest=handover.manifest,
                    device=handover.device))
            return lines


class RegisterLine(msgspec.Struct, frozen=True):
    """One handover as the regulator's register shows it: what, from whom to whom, how heavy, when."""

    at: int
    bag: str
    unit: str | None
    category: str
    step: int
    from_point: str
    to_point: str
    given_by: str  # who handed the bag over (the sealing nurse for the first step)
    received_by: str
    weight_g: float  # weighed on receipt
    previous_weight_g: float  # what the giver's scale read
    sealed_at: int
    sealed_weight_g: float
    manifest: str | None = None
    device: str | None = None
