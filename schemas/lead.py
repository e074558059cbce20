"""`Lead`: the one strict canonical shape every channel is normalized into."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import Channel, RawLead


class Lead(BaseModel):
    """A validated, normalized lead. After this point the stream trusts its contents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lead_id: str
    event_id: str
    channel: Channel
    source_system: str
    email: str | None = Field(default=None, description="Validated, lower-case.")
    phone: str | None = Field(default=None, description="E.164, e.g. +8613800138000.")
    phone_extension: str | None = Field(
        default=None, description="Digits after `ext`/`x`/`#`/`,`: part of the phone match key."
    )
    full_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    company_key: str | None = Field(
        default=None, description="Company for matching: case, punctuation, legal suffixes gone."
    )
    company_size: int | None = Field(default=None, description="Employees (lower bound).")
    industry: str | None = None
    title: str | None = None
    country: str | None = Field(default=None, description="ISO 3166-1 alpha-2.")
    message: str | None = None
    consent: bool | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    form_id: str | None = None
    attributes: dict[str, str] = Field(
        default_factory=dict, description="Submitted fields leadflow has no column for."
    )
    received_at: datetime
    occurred_at: datetime | None = Field(
        default=None,
        description="When the person acted (see RawLead.occurred_at), checked; None: "
        "`received_at` is the time of the touch.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What was left out or defaulted on the way in, and why (a refused time, a "
        "cell the upload dropped).",
    )
    normalized_at: datetime

    @property
    def touched_at(self) -> datetime:
        """The moment attribution uses: when the person acted, else when it arrived."""
        return self.occurred_at or self.received_at


# `RawLead.normalized` names this model; the envelope module cannot import it first.
RawLead.model_rebuild(_types_namespace={"Lead": Lead})
