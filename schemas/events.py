"""Events about people we may already know: marketing engagement and calls.

`EngagementEvent` is the message on `events.engagement` (key: the identifier
the source knows: email, phone or lead id); `CallEvent` the one on
`events.calls` (key: the caller's E.164 number), written by the call-center
adapters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngagementEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    kind: str = Field(description="pricing_page_visit, webinar_attended, email_click …")
    occurred_at: datetime
    email: str | None = None
    phone: str | None = None
    lead_id: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _someone(self) -> EngagementEvent:
        if not (self.email or self.phone or self.lead_id):
            raise ValueError("an engagement event needs an email, a phone or a lead_id")
        return self


class CrmEvent(BaseModel):
    """A rep's action on a lead, from the CRM or the rep's app: the message on `events.crm`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    lead_id: str
    action: Literal["accept", "convert", "set_stage", "won", "lost", "disqualify"] = Field(
        description="accept: the owner takes the lead (SLA met); convert: it becomes a deal "
        "(amount, currency); set_stage: the deal moves to `stage`; won; lost and disqualify "
        "(with a reason)."
    )
    rep_id: str | None = Field(default=None, description="Who acted; must be the owner if set.")
    occurred_at: datetime
    amount: float | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    stage: str | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _fields_of_action(self) -> CrmEvent:
        if self.action == "set_stage" and not self.stage:
            raise ValueError("set_stage needs a stage")
        if self.action in ("lost", "disqualify") and not self.reason:
            raise ValueError(f"{self.action} needs a reason")
        return self


class CallEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    call_id: str
    direction: Literal["inbound", "outbound"]
    caller: str = Field(description="The lead's number in E.164: `from` inbound, `to` outbound.")
    status: Literal[
        "ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled"
    ]
    started_at: datetime
    ended_at: datetime | None = None
    duration_s: int = 0
    agent_id: str | None = None
    outcome: str | None = None
    notes: str | None = None
    source_system: str = "call_center"

    @property
    def connected(self) -> bool:
        return self.status == "completed" and self.duration_s > 0
