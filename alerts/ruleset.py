"""Clinical default rule sets (adult, paediatric, neonatal) and the book of rules in force per bed.

A rule set is a data file in ``alerts/rulesets/``. Each unit uses one (``adult`` unless chosen); a
unit may override any rule's settings for all its beds, and a bed for itself; the bed's override wins.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

import msgspec

from alerts.news2 import News2Rule
from alerts.rules import CombinedRule, LimitRule, RateRule, Rule
from state.alarm_settings import DEFAULT_RULESET, OVERRIDABLE, LimitOverride

RULESETS_DIR: Final[Traversable] = resources.files("alerts") / "rulesets"  # package data: shipped in the wheel
RULESET_NAMES: Final = ("adult", "paediatric", "neonatal")


class RuleSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One clinical default set as read from its file."""

    name: str
    description: str = ""
    limit: list[LimitRule] = []
    rate: list[RateRule] = []
    combined: list[CombinedRule] = []
    news2: News2Rule = msgspec.field(default_factory=lambda: News2Rule(enabled=False))

    def rules(self) -> list[Rule]:
        """Every rule of the set, the early-warning score last."""
        return [*self.limit, *self.rate, *self.combined, self.news2]


def load_ruleset(path: Traversable) -> RuleSet:
    """Read and validate one rule-set file; raise ``ValueError`` naming the file and what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        ruleset = msgspec.convert(data, RuleSet)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"rule set {path.name}: {exc}") from exc
    names = [r.name for r in ruleset.rules()]
    if len(names) != len(set(names)):
        raise ValueError(f"rule set {path.name}: rule names repeat")
    return ruleset


@cache
def default_rulesets() -> dict[str, RuleSet]:
    """The shipped clinical default sets, by name."""
    return {name: load_ruleset(RULESETS_DIR / f"{name}.toml") for name in RULESET_NAMES}


def apply(rule: Rule, settings: Mapping[str, Any]) -> Rule:
    """The rule with ``settings`` overriding its fields; raise ``ValueError`` for a field or value it refuses."""
    body = msgspec.to_builtins(rule)
    refused = set(settings) - (OVERRIDABLE & set(body))
    if refused:
        raise ValueError(f"rule {rule.name}: cannot override {', '.join(sorted(refused))}")
    try:
        return msgspec.convert({**body, **settings}, type(rule))
    except msgspec.ValidationError as exc:
        raise ValueError(f"rule {rule.name}: {exc}") from exc


def catalogue(sets: Mapping[str, RuleSet] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Rule set -> rule -> its settings as plain data (what the API shows and validates overrides against)."""
    sets = sets if sets is not None else default_rulesets()
    return {name: {r.name: msgspec.to_builtins(r) for r in s.rules()} for name, s in sets.items()}


class RuleBook:
    """The rules in force for each bed: its unit's rule set, site rules, then unit and bed overrides."""

    def __init__(self, unit_of_bed: Mapping[str, str], *, default: str = DEFAULT_RULESET,
                 site_rules: Iterable[LimitRule] = (), rulesets: Mapping[str, str] | None = None,
                 overrides: Iterable[LimitOverride] = (), sets: Mapping[str, RuleSet] | None = None) -> None:
        """Build from the site's beds and the stored settings; bad overrides are skipped (and listed in ``errors``)."""
        self.sets = dict(sets if sets is not None else default_rulesets())
        if default not in self.sets:
            raise ValueError(f"alerts: unknown rule set {default!r} (choose one of {', '.join(self.sets)})")
        self.default = default
        self.unit_of_bed = dict(unit_of_bed)
        self.site_rules = list(site_rules)
        self.rulesets = dict(rulesets or {})
        self.overrides = list(overrides)
        self.errors: list[str] = []
        self._cache: dict[str | None, list[Rule]] = {}

    def same_rules(self, other: RuleBook) -> bool:
        """True when ``other`` puts the same rules in force at every bed (a settings reload that changed nothing)."""
        return (self.default == other.default and self.unit_of_bed == other.unit_of_bed
                and self.site_rules == other.site_rules and self.rulesets == other.rulesets
                and self.overrides == other.overrides and self.sets == other.sets)

    def _error(self, text: str) -> None:
        if text not in self.errors:
            self.errors.append(text)

    def ruleset_of(self, unit: str | None) -> str:
        """The rule set a unit uses."""
        chosen = self.rulesets.get(unit or "", self.default)
        return chosen if chosen in self.sets else self.default

    def rules_for(self, bed: str | None) -> list[Rule]:
        """The enabled rules in force at a bed (a device with no bed gets the default set)."""
        cached = self._cache.get(bed)
        if cached is not None:
            return cached
        unit = self.unit_of_bed.get(bed) if bed else None
        by_name: dict[str, Rule] = {r.name: r for r in self.sets[self.ruleset_of(unit)].rules()}
        for site_rule in self.site_rules:
            by_name[site_rule.name] = site_rule
        layers = [o for o in self.overrides if o.unit == unit and o.bed is None] + \
                 [o for o in self.overrides if o.unit == unit and bed is not None and o.bed == bed]
        for override in layers:
            rule = by_name.get(override.rule)
            if rule is None:
                self._error(f"{override.unit}/{override.bed or '*'}: no rule {override.rule!r}")
                continue
            try:
                by_name[override.rule] = apply(rule, override.settings)
            except ValueError as exc:
                self._error(f"{override.unit}/{override.bed or '*'}: {exc}")
        rules = [r for r in by_name.values() if r.enabled]
        self._cache[bed] = rules
        return rules
