"""Stage `score` (pure): fit + decaying engagement + negative signals → score, grade, reasons.

Engagement points halve every `half_life_days` from the event to `as_of`
(the lead's latest event time, so a replay scores the same). The score is
clamped to 0..100; grades come from config/scoring.yaml.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from leadflow.rules import FieldRule, ScoringRules
from schemas import LeadState, ScoreResult


@lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def email_domain(email: str | None) -> str:
    return email.rsplit("@", 1)[1] if email and "@" in email else ""


def _field_value(lead: LeadState, field: str) -> Any:
    if field == "email_domain":
        return email_domain(lead.email)
    if field == "source":
        return lead.touches[0].source if lead.touches else ""
    if field == "channel":
        return lead.touches[0].channel if lead.touches else ""
    return getattr(lead, field)


def rule_holds(rule: FieldRule, lead: LeadState, free_mail: frozenset[str]) -> bool:
    value = _field_value(lead, rule.field)
    if rule.op == "present":
        return bool(value)
    if rule.op in ("free_mail", "not_free_mail"):
        if not value:
            return False
        return (value in free_mail) == (rule.op == "free_mail")
    if value is None or value == "":
        return False
    if rule.op == "gte":
        return bool(value >= rule.value)
    if rule.op == "lte":
        return bool(value <= rule.value)
    if rule.op == "between":
        low, high = rule.value
        return bool(low <= value <= high)
    if rule.op == "in":
        wanted = {str(v).lower() for v in rule.value}
        return str(value).lower() in wanted
    return bool(_pattern(str(rule.value)).search(str(value)))


def grade_for(score: float, rules: ScoringRules) -> Literal["A", "B", "C", "D"]:
    grade: Literal["A", "B", "C"]
    for grade in ("A", "B", "C"):
        if score >= rules.grades[grade]:
            return grade
    return "D"


def score_lead(
    lead: LeadState, rules: ScoringRules, free_mail: frozenset[str], as_of: datetime | None = None
) -> ScoreResult:
    """The score of a lead as of `as_of` (default: its latest touch or engagement)."""
    fired: list[tuple[str, float]] = []
    for field_rule in (*rules.fit, *rules.negative):
        if rule_holds(field_rule, lead, free_mail):
            fired.append((field_rule.name, field_rule.points))
    moments = [t.at for t in lead.touches] + [e.at for e in lead.engagements]
    now = as_of or (max(moments) if moments else lead.updated_at)
    events = [(e.kind, e.at) for e in lead.engagements]
    events += [("touch", t.at) for t in lead.touches[1:]]  # every touch after the first
    for rule in rules.engagement:
        points = 0.0
        for kind, at in events:
            if kind == rule.event:
                age_days = max(0.0, (now - at).total_seconds() / 86400)
                points += rule.points * math.pow(0.5, age_days / rule.half_life_days)
        if points:
            fired.append((rule.name, round(points, 2)))
    total = max(0.0, min(100.0, sum(points for _, points in fired)))
    total = round(total, 2)
    return ScoreResult(score=total, grade=grade_for(total, rules), rules=fired)
