"""Stage `nurture`, the pure part: a lead's sequences, their timers and what is due.

The stage reads every snapshot of a lead (`leads.identified`) and decides from
it alone: a new lead from a channel, a stage entered (at once or after a
while in it), an engagement pattern enrol the lead in a sequence; a stage
reached or an engagement (a reply, an unsubscribe) ends one. Steps never run
on a snapshot: they run on a tick of the stage's clock (`NurtureTick`), which
carries its own time, so a test moves the clock by publishing a tick.

A lead's entry (`Entry`, one JSON value per lead) holds its running sequences
(`active`: the step and when it is due), the enrolments waiting for a stage to
last (`pending`), its open call tasks, the times of its last emails (the
frequency cap), and which sends belong to which sequence (so an open or a
click is credited to it). Every id is derived: the send id of a step is
`(lead, sequence, enrolment, step)`, so a replayed snapshot or tick, or a
second worker after a rebalance, produces the same email, and the mailer
sends an id once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from leadflow.ids import stable_id
from leadflow.nurture_rules import (
    DONE,
    EngagementTrigger,
    NewLeadTrigger,
    NurtureRules,
    Sequence,
    Step,
    Template,
)
from schemas import LeadState
from schemas.nurture import NurtureEmail, NurtureEvent, NurtureEventKind

_NAMESPACE = uuid.UUID("5b1f0c3e-8a2d-4e7f-9c61-0d3a4b5e6f70")
# Engagement kinds the tracking endpoints (and an ESP's reply hook) send, as nurture
# events. A reply or a click counts for a branch of the sequence the send belongs to.
_TRACKED: dict[str, NurtureEventKind] = {
    "email_open": "opened",
    "email_click": "clicked",
    "email_reply": "replied",
    "email_unsubscribe": "unsubscribed",
}
_CONDITION_KIND = {"opened": "email_open", "clicked": "email_click", "replied": "email_reply"}
_CONTEXT_FIELDS = (
    "email",
    "consent",
    "country",
    "first_name",
    "last_name",
    "full_name",
    "company",
    "title",
    "owner",
    "owner_name",
)
MERGED = "merged"  # `gone`: the lead was merged into another (undone by an unmerge)
ERASED = "erased"  # `gone`: the person was erased; the entry is a tombstone without data
MAX_SENDS_KEPT = 50  # sends remembered per lead for crediting opens and clicks
MAX_SEEN_KEPT = 100  # engagement ids already reported
NEW_LEAD_WINDOW = timedelta(days=1)  # a snapshot this long after first_seen is no new lead


@dataclass
class Outcome:
    """What one snapshot or tick made the stage do."""

    emails: list[NurtureEmail] = field(default_factory=list)
    events: list[NurtureEvent] = field(default_factory=list)
    suppress: list[str] = field(default_factory=list)  # addresses never to mail again


def _iso(at: datetime) -> str:
    return at.isoformat()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def new_entry(lead_id: str) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "stage": None,
        "stage_at": None,
        "ctx": {},
        "active": {},
        "pending": {},
        "finished": [],
        "runs": {},
        "sent": [],
        "sends": {},
        "tasks": {},
        "seen": [],
    }


def next_due(entry: dict[str, Any]) -> datetime | None:
    """The earliest time anything of the entry is due: what the timer index keeps."""
    times = [_at(run["due"]) for run in entry["active"].values()]
    times += [_at(due) for due in entry["pending"].values()]
    return min(times) if times else None


def _event(
    entry: dict[str, Any],
    kind: NurtureEventKind,
    sequence: str,
    at: datetime,
    *,
    step: str = "",
    ident: str = "",
    **extra: Any,
) -> NurtureEvent:
    lead_id = entry["lead_id"]
    event_id = stable_id(_NAMESPACE, f"{lead_id}|{sequence}|{kind}|{step}|{ident}")
    return NurtureEvent(
        event_id=event_id,
        lead_id=lead_id,
        sequence=sequence,
        step=step,
        kind=kind,
        at=at,
        **extra,
    )


# --- a snapshot of the lead -----------------------------------------------------------------


def observe(entry: dict[str, Any], lead: LeadState, rules: NurtureRules, now: datetime) -> Outcome:
    """Fold one snapshot of the lead into its entry: exits, engagement and task news,
    enrolments. Sends nothing (steps run on ticks)."""
    out = Outcome()
    if entry.get("gone") == ERASED:
        return out  # a snapshot that was on its way when the person was erased
    fresh = entry["stage"] is None and not entry["ctx"]
    if lead.merged_into:
        survivor = lead.merged_into
        for name in list(entry["active"]):
            _exit(entry, name, f"merged into {survivor}", now, out)
        _drop_tasks(entry, f"merged into {survivor}", now, out)
        entry["pending"].clear()
        entry["gone"] = MERGED
        return out
    entry.pop("gone", None)  # an unmerged lead is followed up again
    entry["ctx"] = {
        name: value for name in _CONTEXT_FIELDS if (value := getattr(lead, name)) is not None
    }
    if lead.stage != entry["stage"]:
        entry["stage"] = lead.stage
        entry["stage_at"] = _iso(lead.stage_at or now)
        _stage_entered(entry, lead, rules, now, out)
    _credit_engagements(entry, lead, now, out)
    _close_tasks(entry, lead, out)
    for name, sequence in rules.sequences.items():
        run = entry["active"].get(name)
        if run is not None:
            reason = _exit_reason(sequence, lead, _at(run["started"]))
            if reason:
                _exit(entry, name, reason, now, out)
    if fresh and _is_new(lead):
        for name, sequence in rules.sequences.items():
            new_lead = sequence.trigger.new_lead
            if new_lead is not None and _new_lead_matches(new_lead, lead):
                _enrol(entry, name, sequence, lead, now, out)
    for name, sequence in rules.sequences.items():
        pattern = sequence.trigger.engagement
        # The lead's own clock (when it last changed), not the stage's: a late or replayed
        # snapshot decides as the first reading did.
        if pattern is not None and _engagement_matches(pattern, lead, lead.updated_at):
            _enrol(entry, name, sequence, lead, now, out)
    return out


def _is_new(lead: LeadState) -> bool:
    return lead.updated_at - lead.first_seen <= NEW_LEAD_WINDOW


def _new_lead_matches(trigger: NewLeadTrigger, lead: LeadState) -> bool:
    first = lead.touches[0] if lead.touches else None
    if trigger.channels and (first is None or first.channel not in trigger.channels):
        return False
    if trigger.sources and (first is None or first.source not in trigger.sources):
        return False
    return not trigger.forms or lead.attributes.get("form_id") in trigger.forms


def _engagement_matches(trigger: EngagementTrigger, lead: LeadState, now: datetime) -> bool:
    since = now - trigger.within
    recent = [e for e in lead.engagements if e.at >= since]
    if any(e.kind in trigger.without for e in recent):
        return False
    return sum(1 for e in recent if e.kind == trigger.kind) >= trigger.at_least


def _stage_entered(
    entry: dict[str, Any], lead: LeadState, rules: NurtureRules, now: datetime, out: Outcome
) -> None:
    # A stage left: enrolments waiting for the lead to stay in it are off.
    for name in list(entry["pending"]):
        trigger = rules.sequences[name].trigger.stage if name in rules.sequences else None
        if trigger is None or lead.stage not in trigger.stages:
            del entry["pending"][name]
    for name, sequence in rules.sequences.items():
        trigger = sequence.trigger.stage
        if trigger is None or lead.stage not in trigger.stages:
            continue
        if trigger.after:
            entered = _at(entry["stage_at"])
            entry["pending"][name] = _iso(entered + trigger.after)
        else:
            _enrol(entry, name, sequence, lead, now, out)


def _exit_reason(sequence: Sequence, lead: LeadState, since: datetime) -> str:
    if lead.stage in sequence.exit.stages:
        return f"stage {lead.stage}"
    for engagement in lead.engagements:
        if engagement.kind in sequence.exit.engagements and engagement.at >= since:
            return f"engagement {engagement.kind}"
    return ""


def _enrol(
    entry: dict[str, Any],
    name: str,
    sequence: Sequence,
    lead: LeadState | None,
    now: datetime,
    out: Outcome,
) -> None:
    if name in entry["active"] or (sequence.once and name in entry["finished"]):
        return
    if lead is not None and lead.stage in sequence.exit.stages:
        return
    run = entry["runs"].get(name, 0) + 1
    entry["runs"][name] = run
    entry["active"][name] = {"step": 0, "due": _iso(now), "run": run, "started": _iso(now)}
    out.events.append(_event(entry, "enrolled", name, now, ident=str(run)))


def _exit(entry: dict[str, Any], name: str, reason: str, now: datetime, out: Outcome) -> None:
    run = entry["active"].pop(name)
    if name not in entry["finished"]:
        entry["finished"].append(name)
    out.events.append(_event(entry, "exited", name, now, ident=str(run["run"]), detail=reason))


def _credit_engagements(
    entry: dict[str, Any], lead: LeadState, now: datetime, out: Outcome
) -> None:
    """Opens, clicks, replies, unsubscribes: a nurture event each, once, and a mark on
    the run they answer (what a `branch` step asks). One that names a send (the tracking
    links do) counts for that send's run; one that names none (an ESP's reply hook) for
    every run that had begun when it happened."""
    seen = entry["seen"]
    for engagement in lead.engagements:
        kind = _TRACKED.get(engagement.kind)
        if kind is None or engagement.event_id in seen:
            continue
        seen.append(engagement.event_id)
        sent = _send_of(entry, engagement.event_id)
        for name, run in entry["active"].items():
            if sent is not None:
                answers = sent[0] == name and sent[2] == run["run"]
            else:
                answers = engagement.at >= _at(run["started"])
            if answers and engagement.kind not in run.setdefault("engaged", []):
                run["engaged"].append(engagement.kind)
        if kind == "unsubscribed":
            # For good: every address of the person, whichever lead they arrive on later.
            out.suppress.extend(lead.emails or ([lead.email] if lead.email else []))
        sequence, step = (sent[0], sent[1]) if sent is not None else ("", "")
        out.events.append(
            _event(entry, kind, sequence, engagement.at, step=step, ident=engagement.event_id)
        )
    del seen[:-MAX_SEEN_KEPT]


def _send_of(entry: dict[str, Any], event_id: str) -> tuple[str, str, int] | None:
    """(sequence, step, run) of the send a tracking event names (`nurture:<send id>:…`)."""
    parts = event_id.split(":")
    if len(parts) >= 3 and parts[0] == "nurture" and parts[1] in entry["sends"]:
        sequence, step, run = entry["sends"][parts[1]]
        return sequence, step, run
    return None


def _close_tasks(entry: dict[str, Any], lead: LeadState, out: Outcome) -> None:
    """A call to or from the lead after a task was created closes it, with its outcome."""
    for task_id, task in list(entry["tasks"].items()):
        created = _at(task["created"])
        calls = sorted(t.at for t in lead.touches if t.channel == "call" and t.at >= created)
        if not calls:
            continue
        done_at = calls[0]
        outcome = next(
            (
                e.outcome or "connected"
                for e in lead.engagements
                if e.kind == "call_connected" and e.at == done_at
            ),
            "attempted",
        )
        del entry["tasks"][task_id]
        out.events.append(
            _event(
                entry,
                "task_done",
                task["sequence"],
                done_at,
                step=task["step"],
                ident=task_id,
                send_id=task_id,
                owner=task["owner"],
                due_at=_at(task["due"]),
                detail=outcome,
            )
        )


# --- a tick of the clock --------------------------------------------------------------------


def fire(
    entry: dict[str, Any], rules: NurtureRules, now: datetime, *, max_steps: int = 20
) -> Outcome:
    """Run every step of the lead that is due at `now`."""
    out = Outcome()
    if entry.get("gone"):
        return out
    for name, due in list(entry["pending"].items()):
        if _at(due) <= now:
            del entry["pending"][name]
            sequence = rules.sequences.get(name)
            trigger = sequence.trigger.stage if sequence is not None else None
            if sequence is not None and trigger is not None and entry["stage"] in trigger.stages:
                _enrol(entry, name, sequence, None, now, out)
    for name in list(entry["active"]):
        sequence = rules.sequences.get(name)
        if sequence is None:  # taken out of nurture.yaml since
            _exit(entry, name, "sequence no longer configured", now, out)
            continue
        for _ in range(max_steps):
            run = entry["active"].get(name)
            if run is None or _at(run["due"]) > now:
                break
            _run_step(entry, name, sequence, run, rules, now, out)
    return out


def _advance(
    entry: dict[str, Any],
    name: str,
    sequence: Sequence,
    run: dict[str, Any],
    to: str | None,
    due: datetime,
    now: datetime,
    out: Outcome,
) -> None:
    index = run["step"] + 1 if to is None else _index_of(sequence, to)
    if index is None or index >= len(sequence.steps):
        entry["active"].pop(name)
        if name not in entry["finished"]:
            entry["finished"].append(name)
        out.events.append(
            _event(entry, "exited", name, now, ident=str(run["run"]), detail="completed")
        )
        return
    run["step"] = index
    run["due"] = _iso(due)


def _index_of(sequence: Sequence, name: str) -> int | None:
    if name == DONE:
        return None
    return next(i for i, step in enumerate(sequence.steps) if step.name == name)


def _run_step(
    entry: dict[str, Any],
    name: str,
    sequence: Sequence,
    run: dict[str, Any],
    rules: NurtureRules,
    now: datetime,
    out: Outcome,
) -> None:
    step = sequence.steps[run["step"]]
    due = _at(run["due"])
    if step.business_hours:
        # The step goes out now (a late tick) or when due: that moment must be in hours.
        moment = max(due, now)
        opening = business_time(moment, entry["ctx"].get("country"), rules)
        if opening > moment:
            run["due"] = _iso(opening)
            return
    if step.wait is not None:
        _advance(entry, name, sequence, run, None, due + step.wait, now, out)
    elif step.branch is not None:
        engaged = _CONDITION_KIND[step.branch.condition] in run.get("engaged", [])
        target = step.branch.goto if engaged else step.branch.otherwise
        _advance(entry, name, sequence, run, target, due, now, out)
    elif step.call_task is not None:
        _create_task(entry, name, step, run, due, step.call_task.due_within, out)
        _advance(entry, name, sequence, run, None, due, now, out)
    else:
        _email_step(entry, name, sequence, step, run, rules, due, now, out)


def _create_task(
    entry: dict[str, Any],
    name: str,
    step: Step,
    run: dict[str, Any],
    created: datetime,
    within: timedelta,
    out: Outcome,
) -> None:
    task_id = stable_id(_NAMESPACE, f"{entry['lead_id']}|{name}|{run['run']}|{step.name}|task")
    owner = entry["ctx"].get("owner") or ""
    entry["tasks"][task_id] = {
        "sequence": name,
        "step": step.name,
        "owner": owner,
        "created": _iso(created),
        "due": _iso(created + within),
    }
    out.events.append(
        _event(
            entry,
            "task_created",
            name,
            created,
            step=step.name,
            ident=task_id,
            send_id=task_id,
            owner=owner,
            due_at=created + within,
        )
    )


def _email_step(
    entry: dict[str, Any],
    name: str,
    sequence: Sequence,
    step: Step,
    run: dict[str, Any],
    rules: NurtureRules,
    due: datetime,
    now: datetime,
    out: Outcome,
) -> None:
    ctx = entry["ctx"]
    ident = f"{run['run']}|{step.name}"
    refusal = _may_not_mail(ctx, rules)
    if refusal:
        out.events.append(
            _event(entry, "skipped", name, now, step=step.name, ident=ident, detail=refusal)
        )
        _advance(entry, name, sequence, run, None, due, now, out)
        return
    cap = rules.frequency_cap
    recent = sorted(_at(t) for t in entry["sent"] if _at(t) > now - cap.per)
    if len(recent) >= cap.max_emails:
        # Capped: the step waits until the oldest email of the window leaves it.
        run["due"] = _iso(recent[-cap.max_emails] + cap.per)
        return
    assert step.email is not None
    template = rules.templates[step.email]
    send_id = stable_id(_NAMESPACE, f"{entry['lead_id']}|{name}|{ident}")
    out.emails.append(
        render(
            template,
            step.email,
            ctx,
            rules,
            send_id=send_id,
            lead_id=entry["lead_id"],
            sequence=name,
            step=step.name,
            due=due,
        )
    )
    entry["sent"] = [_iso(t) for t in recent] + [_iso(now)]
    entry["sends"][send_id] = [name, step.name, run["run"]]
    for old in list(entry["sends"])[:-MAX_SENDS_KEPT]:
        del entry["sends"][old]
    _advance(entry, name, sequence, run, None, due, now, out)


def _may_not_mail(ctx: dict[str, Any], rules: NurtureRules) -> str:
    if not ctx.get("email"):
        return "no email address"
    consent = ctx.get("consent")
    if consent is False:
        return "no consent: the lead refused"
    if consent is None and not rules.legal_basis_without_consent:
        return "no consent given (legal_basis_without_consent is off)"
    return ""


def locale_of(ctx: dict[str, Any], rules: NurtureRules) -> str:
    return "zh" if (ctx.get("country") or "").upper() in rules.zh_countries else "en"


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def render(
    template: Template,
    template_name: str,
    ctx: dict[str, Any],
    rules: NurtureRules,
    *,
    send_id: str,
    lead_id: str,
    sequence: str,
    step: str,
    due: datetime,
) -> NurtureEmail:
    """The email of a template for the lead, in its language (Chinese for the configured
    countries when the template has it). A missing value renders empty, except the names:
    `first_name` falls back to the full name, `owner_name` to "our team"."""
    locale = locale_of(ctx, rules)
    text = template.text(locale)
    values = _Values({k: str(v) for k, v in ctx.items() if isinstance(v, str)})
    values.setdefault("first_name", values.get("full_name", ""))
    values.setdefault("full_name", values.get("first_name", ""))
    if not values.get("owner_name"):
        values["owner_name"] = "我们的团队" if locale == "zh" and template.zh else "our team"
    return NurtureEmail(
        send_id=send_id,
        lead_id=lead_id,
        sequence=sequence,
        step=step,
        template=template_name,
        locale=locale if (locale == "en" or template.zh) else "en",
        to=ctx["email"],
        subject=text.subject.format_map(values).strip(),
        text=text.body.format_map(values),
        links=list(template.links),
        due_at=due,
    )


def business_time(at: datetime, country: str | None, rules: NurtureRules) -> datetime:
    """`at` if it falls in business hours in the lead's time zone, else the next opening."""
    hours = rules.business_hours
    zone = ZoneInfo(hours.time_zones.get((country or "").upper(), hours.default_time_zone))
    local = at.astimezone(zone)
    for days in range(8):
        day = (local + timedelta(days=days)).date()
        if not hours.weekday_open(day.weekday()):
            continue
        opens = datetime.combine(day, hours.start, zone)
        closes = datetime.combine(day, hours.end, zone)
        if days == 0 and opens <= local < closes:
            return at
        if local < opens:
            return opens.astimezone(at.tzinfo)
    return at  # no open day configured within a week: send rather than never


def forget(entry: dict[str, Any], now: datetime) -> Outcome:
    """Erasure: every sequence of the lead ends, its tasks and timers go, and the entry
    becomes a tombstone holding nothing of the person, so a snapshot of the lead that
    was already on its way does not bring them back."""
    out = Outcome()
    for name in list(entry["active"]):
        _exit(entry, name, "erased", now, out)
    _drop_tasks(entry, "erased", now, out)
    lead_id, filed = entry["lead_id"], entry.get("filed")
    entry.clear()
    # `filed` stays until the timer index lets the lead go (nurture_agent.file_due).
    entry.update(new_entry(lead_id), gone=ERASED, filed=filed)
    return out


def _drop_tasks(entry: dict[str, Any], why: str, now: datetime, out: Outcome) -> None:
    """Open call tasks end without a call (not a rep's miss): an `exited` event under the
    task's id, which the rep report leaves out."""
    for task_id, task in entry["tasks"].items():
        out.events.append(
            _event(
                entry,
                "exited",
                task["sequence"],
                now,
                step=task["step"],
                ident=task_id,
                send_id=task_id,
                owner=task["owner"],
                due_at=_at(task["due"]),
                detail=f"task dropped: {why}",
            )
        )
    entry["tasks"].clear()
