"""Stage `lead` (pure part): one person's state, folded from events, keyed by lead id.

Every function takes the current `LeadState` (or None) and returns the new
one; replaying the same event twice changes nothing (event ids are kept).
Merge policy: the first non-empty value of a field wins, unless
config/identity.yaml lets a fresher channel override that field.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from leadflow.ids import stable_id
from leadflow.rules import Rules
from schemas import Assignment, Engagement, IdentityProbe, Lead, LeadState, MergeRecord, Touch
from schemas.lead_state import (
    MAX_ENGAGEMENTS,
    MAX_EVENT_IDS,
    MAX_NOTES,
    MAX_SUGGESTIONS,
    MAX_TOUCHES,
    MAX_UNDOS,
    MAX_WARNINGS,
    MergeUndo,
    Note,
)
from streams import learning
from streams.features import features
from streams.scoring import grade_for, score_lead
from streams.tagging import tag_source

_MERGE_NAMESPACE = uuid.UUID("7e0f3a55-1c2d-4e8b-b6a9-2f4d5c6e7a81")
PROFILE_FIELDS = (
    "email",
    "phone",
    "full_name",
    "first_name",
    "last_name",
    "company",
    "company_key",
    "company_size",
    "industry",
    "title",
    "country",
    "consent",
)


def merge_id(survivor: str, merged: str) -> str:
    return stable_id(_MERGE_NAMESPACE, f"{survivor}|{merged}")


def _merge_field(
    state: LeadState,
    name: str,
    value: object,
    channel: str,
    rules: Rules,
    extension: str | None = None,
) -> None:
    if value in (None, ""):
        return
    current = getattr(state, name)
    override = channel in rules.identity.fresher_overrides.get(name, [])
    if current in (None, "") or (override and current != value):
        setattr(state, name, value)
        state.field_channels[name] = channel
        if name == "phone":  # a number and its extension travel together
            state.phone_extension = extension


def _add_suggestions(state: LeadState, suggestions: list[tuple[str, str, float]]) -> None:
    """Keep the best MAX_SUGGESTIONS suggested duplicates, never the lead or its own merges."""
    own = {state.lead_id, *state.merged_from}
    merged = {s[0]: s for s in state.suggested_duplicates if s[0] not in own}
    for lead_id, rule, score in suggestions:
        if lead_id not in own and (lead_id not in merged or merged[lead_id][2] < score):
            merged[lead_id] = (lead_id, rule, score)
    best = sorted(merged.values(), key=lambda s: (-s[2], s[0]))[:MAX_SUGGESTIONS]
    state.suggested_duplicates = best


def _add_touch(state: LeadState, touch: Touch) -> None:
    if all(t.event_id != touch.event_id for t in state.touches):
        state.touches.append(touch)
        state.touches.sort(key=lambda t: (t.at, t.event_id))


def _add_notes(state: LeadState, notes: list[Note]) -> None:
    known = {(n.event_id, n.text) for n in state.notes}
    fresh = [n for n in notes if (n.event_id, n.text) not in known]
    if fresh:
        state.notes = sorted([*state.notes, *fresh], key=lambda n: (n.at, n.event_id))[-MAX_NOTES:]


def _add_warnings(state: LeadState, warnings: list[str]) -> None:
    fresh = [w for w in warnings if w not in state.warnings]
    if fresh:
        state.warnings = [*state.warnings, *fresh][-MAX_WARNINGS:]


def bound_history(state: LeadState) -> None:
    """Keep the lists that grow with a person's activity within their bounds."""
    if len(state.event_ids) > MAX_EVENT_IDS:
        state.event_ids = state.event_ids[-MAX_EVENT_IDS:]
    if len(state.touches) > MAX_TOUCHES:
        dropped = len(state.touches) - MAX_TOUCHES
        state.touches = [state.touches[0], *state.touches[dropped + 1 :]]
        state.touches_dropped += dropped
    if len(state.engagements) > MAX_ENGAGEMENTS:
        newest = sorted(state.engagements, key=lambda e: (e.at, e.event_id))
        state.engagements = newest[-MAX_ENGAGEMENTS:]


def lead_notes(lead: Lead) -> list[Note]:
    """The free text a lead event brings (its message / note / comment field)."""
    if not lead.message:
        return []
    source = f"{lead.channel}/{lead.source_system}"
    return [Note(event_id=lead.event_id, source=source, at=lead.touched_at, text=lead.message)]


def rescored(state: LeadState, rules: Rules) -> LeadState:
    """The lead scored again (with the model of the moment); the same object when
    nothing of its score changed."""
    new = state.fork()
    _rescore(new, rules)
    fields = ("score", "grade", "rule_score", "fit_probability", "model_version", "mql_at")
    if all(getattr(new, f) == getattr(state, f) for f in fields):
        return state
    new.version += 1
    return new


def _rescore(state: LeadState, rules: Rules) -> None:
    result = score_lead(state, rules.scoring, rules.identity.free_mail_domains)
    state.rule_score, state.score_rules = result.score, result.rules
    state.score, state.grade = result.score, result.grade
    learned = rules.scoring.model
    model = learning.current_model.get()
    if learning.in_use(model, learned):
        assert model is not None
        tokens = features(state, learned.tool_fields, rules.identity.free_mail_domains)
        fit = learning.probability(model, tokens)
        state.fit_probability, state.model_version = round(fit, 4), model.version
        state.fit_factors = learning.factors(model, tokens, learned.factors_shown)
        state.score = learning.combined(result.score, fit, learned)
        state.grade = grade_for(state.score, rules.scoring)
    else:
        state.fit_probability = state.model_version = None
        state.fit_factors = []
    if state.mql_at is None and state.score >= rules.scoring.mql_threshold:
        moments = [t.at for t in state.touches] + [e.at for e in state.engagements]
        state.mql_at = max(moments) if moments else state.updated_at


def apply_lead(
    state: LeadState | None, probe: IdentityProbe, rules: Rules, now: datetime
) -> LeadState:
    """Fold one identified lead event into the survivor's state."""
    lead: Lead = probe.lead
    if state is None:
        state = LeadState(lead_id=probe.lead_id, first_seen=probe.first_seen, updated_at=now)
    else:
        state = state.fork()
    if lead.event_id in state.event_ids:
        return state
    state.event_ids.append(lead.event_id)
    for name in PROFILE_FIELDS:
        _merge_field(state, name, getattr(lead, name), lead.channel, rules, lead.phone_extension)
    if lead.email and lead.email not in state.emails:
        state.emails.append(lead.email)
    if lead.phone and lead.phone not in state.phones:
        state.phones.append(lead.phone)
    for key, value in lead.attributes.items():
        state.attributes.setdefault(key, value)
    if probe.creates_touch:
        touch = tag_source(lead, rules.sources)
        if probe.touch_id:
            touch = touch.model_copy(update={"event_id": probe.touch_id})
        _add_touch(state, touch)
    known = {e.event_id for e in state.engagements}
    state.engagements.extend(e for e in probe.engagements if e.event_id not in known)
    _add_notes(state, lead_notes(lead))
    _add_warnings(state, lead.warnings)
    if lead.lead_id != probe.lead_id and lead.lead_id not in state.merged_from:
        state.merged_from.append(lead.lead_id)
    _add_suggestions(state, [(m.matched_lead_id, m.rule, m.score) for m in probe.suggested])
    state.first_seen = min(state.first_seen, probe.first_seen)
    state.updated_at = now
    state.version += 1
    bound_history(state)
    _rescore(state, rules)
    return state


def absorb(
    survivor: LeadState | None,
    loser: LeadState,
    survivor_id: str,
    survivor_seen: datetime,
    rules: Rules,
    now: datetime,
) -> LeadState:
    """The survivor takes the loser's events, fields and touches."""
    if survivor is None:
        survivor = LeadState(lead_id=survivor_id, first_seen=survivor_seen, updated_at=now)
    else:
        survivor = survivor.fork()
    if loser.lead_id in survivor.merged_from and all(
        e in survivor.event_ids for e in loser.event_ids
    ):
        return survivor
    before = {name: getattr(survivor, name) for name in (*PROFILE_FIELDS, "phone_extension")}
    channels_before = dict(survivor.field_channels)
    for name in PROFILE_FIELDS:
        _merge_field(
            survivor,
            name,
            getattr(loser, name),
            loser.field_channels.get(name, ""),
            rules,
            loser.phone_extension,
        )
    emails = [e for e in loser.emails if e not in survivor.emails]
    phones = [p for p in loser.phones if p not in survivor.phones]
    survivor.emails.extend(emails)
    survivor.phones.extend(phones)
    changed = [name for name, value in before.items() if getattr(survivor, name) != value]
    took_owner = survivor.owner is None and loser.owner is not None
    undo = MergeUndo(
        lead_id=loser.lead_id,
        previous={name: before[name] for name in changed},
        previous_channels={n: channels_before[n] for n in changed if n in channels_before},
        emails=emails,
        phones=phones,
        took_owner=took_owner,
    )
    others = [u for u in survivor.merge_undos if u.lead_id != loser.lead_id]
    survivor.merge_undos = [*others, undo][-MAX_UNDOS:]
    for event_id in loser.event_ids:
        if event_id not in survivor.event_ids:
            survivor.event_ids.append(event_id)
    for touch in loser.touches:
        _add_touch(survivor, touch)
    known = {e.event_id for e in survivor.engagements}
    survivor.engagements.extend(e for e in loser.engagements if e.event_id not in known)
    _add_notes(survivor, loser.notes)
    _add_warnings(survivor, loser.warnings)
    for key, value in loser.attributes.items():
        survivor.attributes.setdefault(key, value)
    for merged in (loser.lead_id, *loser.merged_from):
        if merged not in survivor.merged_from:
            survivor.merged_from.append(merged)
    _add_suggestions(survivor, loser.suggested_duplicates)
    if took_owner:
        survivor.team, survivor.owner, survivor.owner_name = (
            loser.team,
            loser.owner,
            loser.owner_name,
        )
        survivor.assignment_rule, survivor.assignment_reason = (
            loser.assignment_rule,
            loser.assignment_reason,
        )
        survivor.assigned_at = loser.assigned_at
    survivor.first_seen = min(survivor.first_seen, loser.first_seen)
    survivor.updated_at = now
    survivor.version += 1
    bound_history(survivor)
    _rescore(survivor, rules)
    return survivor


def detach(survivor: LeadState, loser: LeadState, rules: Rules, now: datetime) -> LeadState:
    """`unmerge` on the survivor's side: give back what absorbing `loser` brought.

    `loser` is the absorbed lead's own state (its events, touches, notes). Fields the
    loser filled or replaced get their values from before; addresses and numbers only it
    brought leave; its events, touches, engagements and notes leave; an owner taken from
    it is released (the survivor is routed again). The funnel stage stays: stages only
    move forward, and the transitions already written are history.
    """
    undo = next((u for u in survivor.merge_undos if u.lead_id == loser.lead_id), None)
    if undo is None and loser.lead_id not in survivor.merged_from:
        return survivor  # nothing of it here: already detached, or never absorbed
    survivor = survivor.fork()
    if undo is not None:
        for name, value in undo.previous.items():
            setattr(survivor, name, value)
            if name in undo.previous_channels:
                survivor.field_channels[name] = undo.previous_channels[name]
            else:
                survivor.field_channels.pop(name, None)
        survivor.emails = [e for e in survivor.emails if e not in undo.emails]
        survivor.phones = [p for p in survivor.phones if p not in undo.phones]
        if undo.took_owner:
            survivor = release_owner(survivor)
        survivor.merge_undos = [u for u in survivor.merge_undos if u.lead_id != loser.lead_id]
    gone_events = set(loser.event_ids)
    gone_touches = {t.event_id for t in loser.touches}
    gone_engagements = {e.event_id for e in loser.engagements}
    gone_leads = {loser.lead_id, *loser.merged_from}
    survivor.event_ids = [e for e in survivor.event_ids if e not in gone_events]
    survivor.touches = [t for t in survivor.touches if t.event_id not in gone_touches]
    survivor.engagements = [e for e in survivor.engagements if e.event_id not in gone_engagements]
    survivor.notes = [n for n in survivor.notes if n.event_id not in gone_events]
    survivor.merged_from = [m for m in survivor.merged_from if m not in gone_leads]
    survivor.suggested_duplicates = [
        s for s in survivor.suggested_duplicates if s[0] != loser.lead_id
    ]
    survivor.updated_at = now
    survivor.version += 1
    _rescore(survivor, rules)
    return survivor


def restore(state: LeadState, now: datetime) -> LeadState:
    """`unmerge` on the absorbed lead's side: a lead of its own again, with its own state."""
    state = state.fork()
    # A person said these two are different: no longer suggested as one.
    state.suggested_duplicates = [
        s for s in state.suggested_duplicates if s[0] != state.merged_into
    ]
    state.merged_into = None
    state.stage_before_merge = None
    state.updated_at = now
    state.version += 1
    return state


def add_engagements(
    state: LeadState, engagements: list[Engagement], rules: Rules, now: datetime
) -> LeadState:
    """Engagement for a known lead: points that decay, then a new score."""
    known = {e.event_id for e in state.engagements}
    fresh = [e for e in engagements if e.event_id not in known]
    if not fresh:
        return state
    state = state.fork()
    state.engagements.extend(fresh)
    state.updated_at = now
    state.version += 1
    bound_history(state)
    _rescore(state, rules)
    return state


def mark_merged(
    state: LeadState | None, lead_id: str, survivor_id: str, first_seen: datetime, now: datetime
) -> LeadState:
    """The loser's state after a merge: a redirect to its survivor."""
    if state is None:
        state = LeadState(lead_id=lead_id, first_seen=first_seen, updated_at=now)
    else:
        state = state.fork()
    state.merged_into = survivor_id
    state.updated_at = now
    state.version += 1
    return state


def merge_record(
    survivor_id: str, merged_id: str, rule: str, score: float, event_id: str, at: datetime
) -> MergeRecord:
    """The row of one merge. Its id and `merged_at` (the time the merging event entered
    leadflow) come from the event, never the wall clock, so a replay writes the same row."""
    return MergeRecord(
        merge_id=merge_id(survivor_id, merged_id),
        survivor_id=survivor_id,
        merged_id=merged_id,
        rule=rule,
        score=score,
        event_id=event_id,
        merged_at=at,
    )


def apply_assignment(state: LeadState, assignment: Assignment, now: datetime) -> LeadState:
    if state.owner == assignment.owner and state.team == assignment.team:
        return state
    state = state.fork()
    state.team, state.owner, state.owner_name = (
        assignment.team,
        assignment.owner,
        assignment.owner_name,
    )
    state.assignment_rule, state.assignment_reason = assignment.rule, assignment.reason
    state.assigned_at = assignment.assigned_at
    state.accepted_at = None  # a new owner has not accepted yet
    state.updated_at = now
    state.version += 1
    return state


def release_owner(state: LeadState) -> LeadState:
    """Forget the owner, so the lead is routed again (a re-engaged lead)."""
    state = state.fork()
    state.team = state.owner = state.owner_name = None
    state.assignment_rule = state.assignment_reason = None
    state.assigned_at = state.accepted_at = None
    return state


def needs_routing(state: LeadState) -> bool:
    return state.merged_into is None and state.owner is None
