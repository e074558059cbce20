"""Stage `stage_engine` (pure): where a lead stands in the funnel, and every move as a transition.

Runs inside the lead step, on the lead's own partition, so a lead's moves
are decided in order. Moves come from workflow rules (config/stages.yaml)
and from reps' CRM actions. Guards: a lead only moves forward, except to
`lost` or `disqualified`; from there only `re_engaged` leads out (when the
person comes back through any channel), and from `re_engaged` any stage is
forward again. A move is one `StageTransition` whose id is derived from the
lead, the target stage and the cause, so a replay emits the same id and
ClickHouse keeps one row. Each move carries the time of the event that
caused it, so late events land at their own time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from leadflow.ids import stable_id
from leadflow.rules import MERGED, StageRules
from schemas import LeadState
from schemas.transition import StageTransition

_TRANSITION_NAMESPACE = uuid.UUID("3b8e6d2f-9a41-4c57-8f0e-6d1c2b3a4e59")
RE_ENGAGED = "re_engaged"


@dataclass(frozen=True)
class Move:
    """A request to move the lead: the target, why, when, and what caused it."""

    to: str
    at: datetime
    cause: str
    reason: str = ""
    amount: float | None = None
    currency: str | None = None
    deal_id: str | None = None
    restore: bool = False  # `unmerge`: back to the stage it had, whatever the guards say


def allowed(current: str | None, target: str, rules: StageRules) -> bool:
    if current in (target, MERGED):
        return False
    if current is None or target == MERGED:
        return True
    if target in rules.closed:
        return current not in rules.closed
    if current in rules.closed:
        return target == RE_ENGAGED
    if target == RE_ENGAGED:
        return False
    if current == RE_ENGAGED:
        return target != "new"
    here, there = rules.order(current), rules.order(target)
    return here is not None and there is not None and there > here


def workflow_moves(
    trigger: str,
    at: datetime,
    cause: str,
    rules: StageRules,
    *,
    kind: str | None = None,
    duration_s: int | None = None,
    outcome: str | None = None,
) -> list[Move]:
    """The moves the workflow rules ask for on one trigger, in rule order."""
    moves = []
    for rule in rules.workflow:
        if rule.trigger != trigger:
            continue
        if rule.kind is not None and rule.kind != kind:
            continue
        if rule.outcome is not None and rule.outcome != outcome:
            continue
        if rule.min_duration_s is not None and (duration_s or 0) < rule.min_duration_s:
            continue
        moves.append(Move(to=rule.to, at=at, cause=cause, reason=rule.reason))
    return moves


def apply_moves(
    state: LeadState,
    moves: list[Move],
    rules: StageRules,
    now: datetime,
) -> tuple[LeadState, list[StageTransition]]:
    """Apply the allowed moves in order; return the new state and one transition per move."""
    transitions: list[StageTransition] = []
    if not moves:
        return state, transitions
    state = state.fork()
    for move in moves:
        if not (move.restore or allowed(state.stage, move.to, rules)):
            continue
        if move.deal_id:
            state.deal_id = move.deal_id
        if move.amount is not None:
            state.amount = move.amount
        if move.currency:
            state.currency = move.currency
        touch = state.touches[0] if state.touches else None
        transitions.append(
            StageTransition(
                transition_id=stable_id(
                    _TRANSITION_NAMESPACE, f"{state.lead_id}|{move.to}|{move.cause}"
                ),
                lead_id=state.lead_id,
                deal_id=state.deal_id,
                from_stage=state.stage or "",
                to_stage=move.to,
                event_time=move.at,
                ingest_time=now,
                owner=state.owner or "",
                team=state.team or "",
                channel=touch.channel if touch else "",
                source=touch.source if touch else "",
                campaign=touch.campaign if touch else "",
                score=state.score,
                amount=state.amount,
                currency=state.currency,
                reason=move.reason,
            )
        )
        state.stage, state.stage_at, state.stage_reason = move.to, move.at, move.reason
    if transitions:
        state.version += 1
        state.updated_at = now
    return state, transitions
