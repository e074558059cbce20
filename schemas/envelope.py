"""`RawLead`: what an adapter publishes to `leads.raw`, before any judgement.

Permissive on purpose: field names are kept as the sender wrote them, values
as strings. Normalization decides what they mean; the envelope only records
who sent what, when, and under which idempotency key.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.limits import EventTime

if TYPE_CHECKING:
    from schemas.lead import Lead

Channel = Literal["web", "social", "tradeshow", "call", "api"]


class RawLead(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(description="Stable id of this submission; the Kafka key of leads.raw.")
    channel: Channel
    source_system: str = Field(description="Adapter that received it, e.g. web_form.")
    received_at: EventTime = Field(
        description="When the adapter received it (UTC); the lead's first touch time, so it "
        "lies in [LIMITS_EARLIEST_TIME, now + LIMITS_FUTURE_SKEW_S]."
    )
    occurred_at: datetime | None = Field(
        default=None,
        description="When the person acted, if the sender knows it: a badge's scan time, Meta's "
        "`created_time`, LinkedIn's `submittedAt`. Attribution (touch order, first touch, the "
        "funnel's cohort day) uses it; when absent, or outside [LIMITS_EARLIEST_TIME, "
        "received_at + LIMITS_FUTURE_SKEW_S], `received_at` is used and the lead records why.",
    )
    idempotency_key: str | None = Field(
        default=None, description="Sender's key; a retry with the same key is the same event."
    )
    form_id: str | None = None
    fields: dict[str, str] = Field(
        default_factory=dict, description="Submitted fields, names as sent, values as text."
    )
    context: dict[str, str] = Field(
        default_factory=dict,
        description="Request facts: origin, referrer, user agent, content type.",
    )
    normalized: Lead | None = Field(
        default=None,
        description="The lead as the adapter normalized it before answering; the stream uses it "
        "instead of normalizing again when `normalized_with` names its own normalization.",
    )
    normalized_with: str | None = Field(
        default=None,
        description="`<normalization version>/<default phone region>` that made `normalized`.",
    )
