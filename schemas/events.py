"""Events about people we may already know: marketing engagement and calls.

`EngagementEvent` is the message on `events.engagement` (key: the identifier
the source knows: email, phone or lead id); `CallEvent` the one on
`events.calls` (key: the caller's E.164 number), written by the call-center
adapters.

Every field has an input domain (`schemas.limits`): times inside
[LIMITS_EARLIEST_TIME, now + LIMITS_FUTURE_SKEW_S], finite amounts up to
LIMITS_MAX_AMOUNT, durations from 0 to LIMITS_MAX_CALL_DURATION_S, and text
of bounded length. The same checks run in the HTTP adapters and in the
stream stage that reads these topics, so a producer writing to them directly
gets no further.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.limits import (
    Duration,
    EmailText,
    EventId,
    EventTime,
    Identifier,
    Name,
    NonNegativeAmount,
    Notes,
    PhoneText,
    Properties,
    Reason,
)


class EngagementEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: EventId
    kind: Name = Field(description="pricing_page_visit, webinar_attended, email_click … (<= 200)")
    occurred_at: EventTime
    email: EmailText | None = None
    phone: PhoneText | None = None
    lead_id: Identifier | None = None
    properties: Properties = Field(
        default_factory=dict, description="<= 100 entries; names <= 200, values <= 4,000 chars."
    )

    @model_validator(mode="after")
    def _someone(self) -> EngagementEvent:
        if not (self.email or self.phone or self.lead_id):
            raise ValueError("an engagement event needs an email, a phone or a lead_id")
        return self


class CrmEvent(BaseModel):
    """A rep's action on a lead, from the CRM or the rep's app: the message on `events.crm`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: EventId
    lead_id: Identifier
    action: Literal["accept", "convert", "set_stage", "won", "lost", "disqualify"] = Field(
        description="accept: the owner takes the lead (SLA met); convert: it becomes a deal "
        "(amount, currency); set_stage: the deal moves to `stage`; won; lost and disqualify "
        "(with a reason)."
    )
    rep_id: Identifier | None = Field(
        default=None, description="Who acted; must be the owner if set."
    )
    occurred_at: EventTime
    amount: NonNegativeAmount | None = Field(
        default=None, description="Finite, 0 <= amount <= LIMITS_MAX_AMOUNT."
    )
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    stage: Name | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _fields_of_action(self) -> CrmEvent:
        if self.action == "set_stage" and not self.stage:
            raise ValueError("set_stage needs a stage")
        if self.action in ("lost", "disqualify") and not self.reason:
            raise ValueError(f"{self.action} needs a reason")
        return self


class CallEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: EventId
    call_id: Identifier
    direction: Literal["inbound", "outbound"]
    caller: PhoneText = Field(
        description="The lead's number in E.164: `from` inbound, `to` outbound."
    )
    status: Literal[
        "ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled"
    ]
    started_at: EventTime
    ended_at: EventTime | None = None
    duration_s: Duration = Field(
        default=0, description="Seconds connected, 0 <= duration_s <= LIMITS_MAX_CALL_DURATION_S."
    )
    agent_id: Identifier | None = None
    outcome: Name | None = None
    notes: Notes | None = None
    source_system: Name = "call_center"

    @property
    def connected(self) -> bool:
        return self.status == "completed" and self.duration_s > 0
