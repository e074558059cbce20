"""Stage `events` (pure part): engagement, call and CRM events for the lead step.

An event names the person by email, phone or lead id. Email and phone go
through the identity index like a new lead (so an event about someone new
starts a lead, and one about a known person lands on that person); a lead id
goes straight to the lead step. Engagement is not a contact: it adds points
that decay, not a touch. A call is a contact (one touch per call, however
many status callbacks it has) and, once connected, engagement too.

A lead an event starts (`event_only`) ranks by when this stage took the event
(`first_seen` = `normalized_at`), never by the event's occurred_at: a call from
March replayed today is today's newcomer, so it never out-ranks the lead the
person already is, and never takes that lead, its owner or its assignment away.
"""

from __future__ import annotations

from datetime import UTC, datetime

from leadflow.errors import BadRecordError
from leadflow.normalize import lead_id_for, normalize_email, normalize_phone_parts
from leadflow.rules import IdentityRules
from schemas import CallEvent, CrmEvent, Engagement, EngagementEvent, IdentityProbe, Lead
from schemas.messages import AcceptUpdate, CrmUpdate, EngagementUpdate
from streams.identity import start_probe


def _lead(
    event_id: str,
    channel: str,
    source_system: str,
    at: datetime,
    email: str | None,
    phone: str | None,
    region: str,
    now: datetime | None = None,
    message: str | None = None,
) -> Lead:
    problems: dict[str, str] = {}
    clean_email = clean_phone = extension = None
    if email:
        try:
            clean_email = normalize_email(email)
        except ValueError as exc:
            problems["email"] = str(exc)
    if phone:
        try:
            clean_phone, extension = normalize_phone_parts(phone, region)
        except ValueError as exc:
            problems["phone"] = str(exc)
    if problems:
        raise BadRecordError(
            "invalid_fields", "; ".join(f"{k}: {v}" for k, v in problems.items()), problems
        )
    return Lead(
        lead_id=lead_id_for(event_id),
        event_id=event_id,
        channel=channel,
        source_system=source_system,
        email=clean_email,
        phone=clean_phone,
        phone_extension=extension,
        received_at=at.astimezone(UTC),
        occurred_at=at.astimezone(UTC),
        message=message,
        normalized_at=now or datetime.now(UTC),
    )


def _event_probe(lead: Lead, rules: IdentityRules) -> IdentityProbe:
    """An event's probe: it ranks by when leadflow took it, and only attaches."""
    probe = start_probe(lead, rules, entered_at=lead.normalized_at)
    return probe.model_copy(update={"event_only": True})


def engagement_update(
    event: EngagementEvent,
    rules: IdentityRules,
    region: str,
    now: datetime | None = None,
) -> IdentityProbe | EngagementUpdate:
    """A probe for the identity index, or (for a lead id) an update for the lead step."""
    engagement = Engagement(event_id=event.event_id, kind=event.kind, at=event.occurred_at)
    if event.lead_id:
        return EngagementUpdate(lead_id=event.lead_id, engagements=[engagement])
    lead = _lead(
        event.event_id,
        "web",
        "engagement",
        event.occurred_at,
        event.email,
        event.phone,
        region,
        now,
    )
    probe = _event_probe(lead, rules)
    return probe.model_copy(update={"engagements": [engagement], "creates_touch": False})


def crm_update(event: CrmEvent) -> AcceptUpdate | CrmUpdate:
    """A rep's action, for the lead step (keyed by the lead id it names)."""
    if event.action == "accept":
        return AcceptUpdate(
            lead_id=event.lead_id,
            rep_id=event.rep_id,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    return CrmUpdate(lead_id=event.lead_id, event=event)


def call_probe(
    event: CallEvent,
    rules: IdentityRules,
    region: str,
    connected_min_s: int = 1,
    now: datetime | None = None,
) -> IdentityProbe:
    """The caller as a lead of channel `call`: one touch per call, engagement once connected."""
    lead = _lead(
        event.event_id,
        "call",
        event.source_system,
        event.started_at,
        None,
        event.caller,
        region,
        now,
        message=event.notes,
    )
    engagements = []
    if event.status == "completed" and event.duration_s >= connected_min_s:
        engagements.append(
            Engagement(
                event_id=f"call:{event.call_id}:connected",
                kind="call_connected",
                at=event.started_at,
                duration_s=event.duration_s,
                outcome=event.outcome,
            )
        )
    probe = _event_probe(lead, rules)
    return probe.model_copy(
        update={"engagements": engagements, "touch_id": f"call:{event.call_id}"}
    )
