"""The lead as the stream core knows it: one person, every touch, score, owner.

`LeadState` is the value of the partition-owned lead table (key: lead id) and
the message on `leads.identified`. `IdentityProbe` travels the identity chain,
`Assignment` is the routing decision on `leads.assigned`, `MergeRecord` says
why two leads became one (table `lead_merges`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.lead import Lead

MatchKey = Literal["email", "phone", "company", "domain"]
MAX_SUGGESTIONS = 20
MAX_NOTES = 50  # the newest kept; a person with more notes has a CRM record for them
MAX_WARNINGS = 20  # the newest kept
MAX_UNDOS = 50  # merges a survivor can still undo (`unmerge`); older ones stay merged
# What a lead keeps of its history (docs/architecture.md, "Bounds"): the first touch and
# the newest after it, the newest engagement (older points have decayed to nothing), and
# the newest event ids (the window in which a replayed event is recognised).
MAX_TOUCHES = 100
MAX_ENGAGEMENTS = 200
MAX_EVENT_IDS = 500


class Touch(BaseModel):
    """One contact of the person with us: where from, through which campaign, when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    channel: str
    source: str
    medium: str
    campaign: str = ""
    source_system: str = ""
    at: datetime


class Note(BaseModel):
    """Free text a sender gave about the person: a form's message, a badge's note, call notes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    source: str = Field(description="`<channel>/<source system>`, e.g. `tradeshow/badge_upload`.")
    at: datetime = Field(description="When the person acted (the touch's occurred_at).")
    text: str


class Engagement(BaseModel):
    """An engagement or call event that counts for the score (decays with time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    kind: str
    at: datetime
    duration_s: int | None = Field(default=None, description="For calls: seconds connected.")
    outcome: str | None = Field(default=None, description="For calls: interested, wrong_number …")


class MatchRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    key: MatchKey
    value: str
    matched_lead_id: str
    score: float


class IdentityProbe(BaseModel):
    """A new lead (or an event about an unknown person) on its way through the identity index.

    A lead with several match keys sends one probe per key at once (`part` of
    `parts`); each comes back to the lead step resolved against its key, and the
    lead step combines them (`streams.identity.combine`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["probe"] = Field(default="probe", description="Its kind on `identity.keys`.")
    lead: Lead
    lead_id: str = Field(description="The lead id resolved so far (the survivor).")
    first_seen: datetime = Field(
        description="When that lead id entered leadflow: the arrival of its first lead "
        "(`received_at`), or, for a lead an event (call, engagement) started, when the events "
        "stage took the event; never the event's own occurred_at. The earlier survives a merge."
    )
    keys: list[tuple[MatchKey, str, str]] = Field(
        default_factory=list, description="(key kind, key value, rule name) still to visit."
    )
    matches: list[MatchRecord] = Field(default_factory=list)
    engagements: list[Engagement] = Field(
        default_factory=list, description="Engagement this event brings (counts for the score)."
    )
    touch_id: str | None = Field(
        default=None, description="Id of the touch, when several events are one contact (a call)."
    )
    creates_touch: bool = Field(
        default=True, description="False for engagement that is not a new contact (a click)."
    )
    absorbed: list[tuple[str, str]] = Field(
        default_factory=list,
        description="(lead id, rule) of existing leads found to be this person, to merge.",
    )
    suggested: list[MatchRecord] = Field(
        default_factory=list,
        description="Leads a fuzzy rule found similar whose email or phone disagree: not "
        "merged, kept as suggested duplicates (at most MAX_SUGGESTIONS).",
    )
    event_only: bool = Field(
        default=False,
        description="True for a call or engagement: it attaches to the person and never "
        "takes an owned lead away from its rep.",
    )
    part: int = Field(
        default=0,
        ge=0,
        description="Which of the lead's match keys this probe visits (0-based), when the "
        "keys are visited at once.",
    )
    parts: int = Field(
        default=1,
        ge=1,
        description="How many keys the lead's probes visit at once: the lead step gathers "
        "that many answers under the lead's own id before it decides. 1: the probe goes "
        "straight to the lead it resolved to (one key, or a chain from an older worker).",
    )


class MergeUndo(BaseModel):
    """What absorbing one lead changed on its survivor, so `unmerge` can give it back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lead_id: str = Field(description="The absorbed lead.")
    previous: dict[str, str | int | bool | None] = Field(
        default_factory=dict,
        description="Profile fields the absorbed lead filled or replaced, with their values "
        "before (None: empty).",
    )
    previous_channels: dict[str, str] = Field(
        default_factory=dict, description="`field_channels` entries before, for those fields."
    )
    emails: list[str] = Field(default_factory=list, description="Addresses only it brought.")
    phones: list[str] = Field(default_factory=list, description="Numbers only it brought.")
    took_owner: bool = Field(
        default=False, description="The survivor had no owner and took the absorbed lead's."
    )


class MergeRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    merge_id: str
    survivor_id: str
    merged_id: str
    rule: str
    score: float
    event_id: str
    merged_at: datetime
    unmerged_at: datetime | None = Field(
        default=None, description="Set when the merge was undone (`unmerge`)."
    )


class ScoreResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    score: float
    grade: Literal["A", "B", "C", "D"]
    rules: list[tuple[str, float]] = Field(description="(rule name, points) of every rule fired.")


class Assignment(BaseModel):
    """Who owns the lead now, and why: the message on `leads.assigned`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    assignment_id: str
    lead_id: str
    team: str
    owner: str = Field(description="Rep id, or `queue:<team>` when no rep could take it.")
    owner_name: str
    owner_email: str | None = None
    rule: str
    reason: str
    assigned_at: datetime
    score: float
    grade: str
    full_name: str | None = None
    company: str | None = None
    email: str | None = None
    phone: str | None = None
    source: str = ""


class LeadState(BaseModel):
    """Everything known about one person. Merged fields: first non-empty value wins."""

    model_config = ConfigDict(extra="forbid")

    lead_id: str
    version: int = 0
    first_seen: datetime = Field(
        description="When the lead entered leadflow (see IdentityProbe.first_seen): its rank in "
        "a merge, so the lead that came first keeps its id, owner and assignment."
    )
    updated_at: datetime
    email: str | None = None
    phone: str | None = None
    phone_extension: str | None = Field(default=None, description="Extension of `phone`.")
    emails: list[str] = Field(default_factory=list)
    phones: list[str] = Field(default_factory=list)
    full_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    company_key: str | None = None
    company_size: int | None = None
    industry: str | None = None
    title: str | None = None
    country: str | None = None
    consent: bool | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    field_channels: dict[str, str] = Field(
        default_factory=dict, description="Channel that supplied each merged field."
    )
    event_ids: list[str] = Field(
        default_factory=list,
        description="Events folded in, in processing order; the newest MAX_EVENT_IDS kept.",
    )
    touches: list[Touch] = Field(
        default_factory=list,
        description="Oldest first by occurred_at: the first touch and the newest "
        "MAX_TOUCHES - 1 after it.",
    )
    touches_dropped: int = Field(
        default=0, description="Touches left out between the first and the kept newest."
    )
    engagements: list[Engagement] = Field(
        default_factory=list, description="The newest MAX_ENGAGEMENTS (by time)."
    )
    notes: list[Note] = Field(
        default_factory=list, description="Free text, oldest first; the newest MAX_NOTES kept."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What was left out or defaulted on the way in (a refused time, a dropped "
        "cell), with why; the newest MAX_WARNINGS kept.",
    )
    merged_from: list[str] = Field(default_factory=list)
    merged_into: str | None = None
    stage_before_merge: str | None = Field(
        default=None, description="The stage it had when it was merged: `unmerge` restores it."
    )
    merge_undos: list[MergeUndo] = Field(
        default_factory=list,
        description="For each lead absorbed, what to give back on `unmerge` (newest MAX_UNDOS).",
    )
    suggested_duplicates: list[tuple[str, str, float]] = Field(
        default_factory=list,
        description="(lead id, rule, score): similar leads a fuzzy rule did not merge because "
        "their email or phone disagree; best first, at most MAX_SUGGESTIONS.",
    )
    score: float = 0.0
    grade: str = "D"
    score_rules: list[tuple[str, float]] = Field(default_factory=list)
    rule_score: float = Field(default=0.0, description="The rules' part of `score`.")
    fit_probability: float | None = Field(
        default=None, description="The learned model's probability that the lead is won."
    )
    model_version: int | None = Field(
        default=None, description="The model version that scored it; None: rules alone."
    )
    fit_factors: list[tuple[str, float]] = Field(
        default_factory=list,
        description="The feature tokens that weigh most in fit_probability, with weights.",
    )
    mql_at: datetime | None = None
    team: str | None = None
    owner: str | None = None
    owner_name: str | None = None
    assignment_rule: str | None = None
    assignment_reason: str | None = None
    assigned_at: datetime | None = None
    accepted_at: datetime | None = None
    stage: str | None = None
    stage_at: datetime | None = None
    stage_reason: str = ""
    deal_id: str = ""
    amount: float = 0.0
    currency: str = ""

    def fork(self) -> LeadState:
        """A copy to change without touching this one. Every item inside the lists and
        dicts is immutable (frozen models, tuples, text), so copying the containers is a
        deep copy; `model_copy(deep=True)` did the same through `copy.deepcopy`, at about
        40% of the lead step's CPU."""
        return self.model_copy(
            update={name: getattr(self, name).copy() for name in _CONTAINER_FIELDS}
        )


_CONTAINER_FIELDS = tuple(
    name
    for name, info in LeadState.model_fields.items()
    if getattr(info.annotation, "__origin__", None) in (list, dict)
)
