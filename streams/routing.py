"""Stage `route` (pure part): which team, then which rep, and why.

`choose_team` applies config/routing.yaml's rules in order (the last one
matches everything). `assign_owner` decides inside one team from that team's
state, which one partition owns (the stream re-keys routing requests by
team), so two workers never hand out the same turn:

1. a lead already assigned in this team keeps its owner (replays are harmless);
2. account stickiness: a known company key or corporate email domain goes to
   the rep who already owns that account, if that rep is in office and under
   capacity;
3. weighted round-robin over reps in office, inside their working hours (in
   their own time zone, at the lead's arrival time) and under capacity;
4. otherwise the team's queue, `queue:<team>`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from leadflow.ids import stable_id
from leadflow.rules import AssignmentRule, Criteria, Rep, RoutingRules, Team, working_hours
from schemas import Assignment, LeadState
from schemas.messages import RoutingSubject
from streams.scoring import email_domain

_ASSIGNMENT_NAMESPACE = uuid.UUID("c4a1f9e2-5b3d-4c7a-8e6f-0a9b8c7d6e5f")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def subject(lead: LeadState | RoutingSubject) -> RoutingSubject:
    """What routing reads of a lead."""
    return lead if isinstance(lead, RoutingSubject) else RoutingSubject.of(lead)


def criteria_hold(criteria: Criteria, lead: RoutingSubject) -> bool:
    source, channel = lead.source, lead.channel
    checks: list[bool] = []
    if criteria.country is not None:
        checks.append((lead.country or "") in criteria.country)
    if criteria.industry is not None:
        wanted = {i.lower() for i in criteria.industry}
        checks.append((lead.industry or "").lower() in wanted)
    if criteria.source is not None:
        checks.append(source in criteria.source)
    if criteria.channel is not None:
        checks.append(channel in criteria.channel)
    if criteria.min_score is not None:
        checks.append(lead.score >= criteria.min_score)
    if criteria.min_company_size is not None:
        checks.append((lead.company_size or 0) >= criteria.min_company_size)
    if criteria.max_company_size is not None:
        checks.append(
            lead.company_size is not None and lead.company_size <= criteria.max_company_size
        )
    return all(checks)


def choose_team(lead: LeadState | RoutingSubject, rules: RoutingRules) -> AssignmentRule:
    about = subject(lead)
    return next(rule for rule in rules.rules if criteria_hold(rule.when, about))


def account_key(lead: LeadState | RoutingSubject, free_mail: frozenset[str]) -> str | None:
    if lead.company_key:
        return f"company:{lead.company_key}"
    domain = email_domain(lead.email)
    if domain and domain not in free_mail:
        return f"domain:{domain}"
    return None


def in_working_hours(rep: Rep, at: datetime) -> bool:
    local = at.astimezone(ZoneInfo(rep.timezone))
    if _DAYS[local.weekday()] not in rep.days:
        return False
    if rep.hours is None:
        return True
    start, end = working_hours(rep.hours)
    return start <= local.time() <= end


@dataclass
class TeamView:
    """The slice of a team's partition-owned state one decision reads and writes."""

    turn: int = 0
    loads: dict[str, int] = field(default_factory=dict)
    account_owner: str | None = None
    lead_owner: str | None = None


def _cycle(team: Team) -> list[Rep]:
    """Reps interleaved by weight: weights 2 and 1 give A, B, A."""
    cycle: list[Rep] = []
    remaining = {rep.id: rep.weight for rep in team.reps}
    while any(remaining.values()):
        for rep in team.reps:
            if remaining[rep.id]:
                cycle.append(rep)
                remaining[rep.id] -= 1
    return cycle


def assignment_id(lead_id: str, team: str, owner: str) -> str:
    return stable_id(_ASSIGNMENT_NAMESPACE, f"{lead_id}|{team}|{owner}")


def assign_owner(
    lead: LeadState | RoutingSubject,
    rule: AssignmentRule,
    team: Team,
    view: TeamView,
    at: datetime,
    exclude: frozenset[str] = frozenset(),
    reason_prefix: str = "",
) -> tuple[Assignment, TeamView]:
    """The owner of `lead` inside `rule.team`, and the team view after the decision.

    `exclude` names reps who may not take it (a re-route after a missed SLA).
    """
    lead = subject(lead)
    reps = {rep.id: rep for rep in team.reps}
    loads = dict(view.loads)
    turn = view.turn
    owner: Rep | None = None
    reason = ""
    previous_gone = ""
    if view.lead_owner is not None:
        previous = reps.get(view.lead_owner)
        if previous is not None and not previous.out_of_office:
            owner, reason = previous, "already assigned in this team"
        else:
            # Back to its rep only while the rep is on the team and in: otherwise a new one.
            gone = "left the team" if previous is None else "is out of office"
            previous_gone = f"previous owner {view.lead_owner} {gone}; "
    elif view.account_owner in reps:
        candidate = reps[view.account_owner]
        if not candidate.out_of_office and loads.get(candidate.id, 0) < candidate.capacity:
            owner, reason = candidate, "account owner (sticky)"
    if owner is None:
        cycle = _cycle(team)
        skipped: list[str] = []
        for step in range(len(cycle)):
            candidate = cycle[(turn + step) % len(cycle)]
            if candidate.id in exclude:
                skipped.append(f"{candidate.id} did not accept in time")
            elif candidate.out_of_office:
                skipped.append(f"{candidate.id} out of office")
            elif loads.get(candidate.id, 0) >= candidate.capacity:
                skipped.append(f"{candidate.id} at capacity")
            elif not in_working_hours(candidate, at):
                skipped.append(f"{candidate.id} outside working hours")
            else:
                owner = candidate
                turn = (turn + step + 1) % len(cycle)
                reason = "round-robin" + (f" (skipped: {', '.join(skipped)})" if skipped else "")
                break
        if owner is None:
            reason = "no rep available: " + ", ".join(sorted(set(skipped)))
        reason = previous_gone + reason
    if owner is not None and owner.id != view.lead_owner:
        loads[owner.id] = loads.get(owner.id, 0) + 1
    owner_id = owner.id if owner else f"queue:{rule.team}"
    assignment = Assignment(
        assignment_id=assignment_id(lead.lead_id, rule.team, owner_id),
        lead_id=lead.lead_id,
        team=rule.team,
        owner=owner_id,
        owner_name=owner.name if owner else f"{rule.team} queue",
        owner_email=owner.email if owner else None,
        rule=rule.name,
        reason=reason_prefix + reason,
        assigned_at=at,
        score=lead.score,
        grade=lead.grade,
        full_name=lead.full_name,
        company=lead.company,
        email=lead.email,
        phone=lead.phone,
        source=lead.source,
    )
    new_view = TeamView(
        turn=turn,
        loads=loads,
        account_owner=view.account_owner or (owner.id if owner else None),
        lead_owner=owner_id if owner else None,
    )
    return assignment, new_view
