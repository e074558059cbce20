"""The internal messages of the stream core: one typed union per topic.

Each message names its kind in `type`, and each topic's union is
discriminated by it, so an agent parses a record once into exactly one
model (or dead-letters it naming what is wrong), and a producer outside
Python finds every shape in `leadflow schemas`.

- `identity.keys` (key: the match key): `IdentityProbe` (a lead or event
  visiting its keys) or `EraseKey` (`leadflow erase`).
- `lead.updates` (key: the lead id the message is for): `NewLead`,
  `MergeCommand`, `AbsorbCommand`, `UnmergeCommand`, `DetachCommand`,
  `EngagementUpdate`, `AcceptUpdate`, `CrmUpdate`, `EraseLead`, `RescoreLead`.
- `routing.requests` (key: the team): `RouteRequest`, `AcceptedNotice`,
  `SlaTick`.

On these three topics a Kafka message may also be a frame of several such
records for one partition (`streams/frames.py`); each record inside is one of
the messages above, byte for byte.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)

from schemas.events import CrmEvent
from schemas.lead_state import Engagement, IdentityProbe, LeadState, MergeRecord


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- identity.keys -------------------------------------------------------------------------


class EraseKey(_Message):
    """Forget a person under one index key (the Kafka key). An exact key goes whole; a
    company or domain key loses only the rows of these lead ids, emails or phones."""

    type: Literal["erase"] = "erase"
    key: str
    lead_ids: list[str] | None = Field(
        default=None, description="None (older servers): the whole entry goes."
    )
    emails: list[str] = Field(default_factory=list)
    phones: list[str] = Field(default_factory=list, description="E.164, or with `;ext=`.")


def _identity_kind(value: Any) -> str:
    """A probe written before probes named their type has none: it is a probe."""
    if isinstance(value, dict):
        return str(value.get("type", "probe"))
    return str(getattr(value, "type", "probe"))


IdentityMessage = Annotated[
    Annotated[IdentityProbe, Tag("probe")] | Annotated[EraseKey, Tag("erase")],
    Discriminator(_identity_kind),
]


# --- lead.updates --------------------------------------------------------------------------


class NewLead(_Message):
    """A lead or event resolved against its keys: fold it into `probe.lead_id`, or, for
    one answer of several (`probe.parts` > 1), gather it under the lead's own id."""

    type: Literal["lead"] = "lead"
    probe: IdentityProbe


class MergeCommand(_Message):
    """To the partition of `loser`: it is the same person as `survivor` (unless it entered
    leadflow first, then the roles swap)."""

    type: Literal["merge"] = "merge"
    loser: str
    survivor: str
    survivor_seen: datetime = Field(description="When the survivor entered leadflow.")
    rule: str
    score: float
    event_id: str = Field(description="The event that found the match (or a manual merge).")
    at: datetime | None = Field(default=None, description="The merge row's `merged_at`.")
    recorded: bool = Field(default=False, description="True: its merge row is written already.")


class AbsorbCommand(_Message):
    """To the survivor's partition: take the merged lead's state."""

    type: Literal["absorb"] = "absorb"
    survivor: str
    survivor_seen: datetime
    loser_state: LeadState


class UnmergeCommand(_Message):
    """To a merged lead's partition: become a lead of its own again."""

    type: Literal["unmerge"] = "unmerge"
    lead_id: str
    event_id: str
    at: datetime
    merge: MergeRecord | None = Field(
        default=None, description="The merge row to mark undone (`unmerged_at`)."
    )


class DetachCommand(_Message):
    """To the survivor's partition: give back what the unmerged lead brought."""

    type: Literal["detach"] = "detach"
    lead_id: str
    event_id: str
    loser_state: LeadState


class EngagementUpdate(_Message):
    """Engagement for a lead named by its id (no identity lookup needed)."""

    type: Literal["engagement"] = "engagement"
    lead_id: str
    engagements: list[Engagement]


class AcceptUpdate(_Message):
    """The owner took the lead (the SLA is met)."""

    type: Literal["accept"] = "accept"
    lead_id: str
    rep_id: str | None = None
    at: datetime
    event_id: str


class CrmUpdate(_Message):
    """Any other CRM action on the lead (convert, set_stage, won, lost, disqualify)."""

    type: Literal["crm"] = "crm"
    lead_id: str
    event: CrmEvent


class EraseLead(_Message):
    """`leadflow erase`: forget this lead's state."""

    type: Literal["erase"] = "erase"
    lead_id: str


class RescoreLead(_Message):
    """A new version of the learned model: score this open lead again (sent at a bounded
    rate by each worker's re-scorer, streams/learning_agent.py)."""

    type: Literal["rescore"] = "rescore"
    lead_id: str
    version: int = Field(description="The model version that asked.")


LeadUpdate = Annotated[
    NewLead
    | MergeCommand
    | AbsorbCommand
    | UnmergeCommand
    | DetachCommand
    | EngagementUpdate
    | AcceptUpdate
    | CrmUpdate
    | EraseLead
    | RescoreLead,
    Field(discriminator="type"),
]
# Updates that name the lead they are about and follow it when it was merged.
LeadEvent = EngagementUpdate | AcceptUpdate | CrmUpdate


# --- routing.requests ----------------------------------------------------------------------


class RoutingSubject(_Message):
    """What routing decides on and what an assignment tells the rep: a few hundred bytes,
    not the whole person. The route step keeps it while the rep has not accepted."""

    lead_id: str
    channel: str = Field(default="", description="Of the first touch.")
    source: str = Field(default="", description="Of the first touch.")
    last_touch_at: datetime | None = Field(
        default=None, description="Working hours are checked at this moment."
    )
    country: str | None = None
    industry: str | None = None
    company_size: int | None = None
    company_key: str | None = None
    score: float = 0.0
    grade: str = "D"
    full_name: str | None = None
    company: str | None = None
    email: str | None = None
    phone: str | None = None

    @classmethod
    def of(cls, state: LeadState) -> RoutingSubject:
        first = state.touches[0] if state.touches else None
        return cls(
            lead_id=state.lead_id,
            channel=first.channel if first else "",
            source=first.source if first else "",
            last_touch_at=state.touches[-1].at if state.touches else None,
            country=state.country,
            industry=state.industry,
            company_size=state.company_size,
            company_key=state.company_key,
            score=state.score,
            grade=state.grade,
            full_name=state.full_name,
            company=state.company,
            email=state.email,
            phone=state.phone,
        )


class RouteRequest(_Message):
    """A lead without an owner, for its team's partition."""

    type: Literal["route"] = "route"
    rule: str
    team: str
    lead: RoutingSubject

    @model_validator(mode="before")
    @classmethod
    def _from_whole_state(cls, data: Any) -> Any:
        """A request an older worker wrote carries the whole lead state: routing takes
        what it decides on from it, so requests in flight over an upgrade still route."""
        if isinstance(data, dict) and "state" in data and "lead" not in data:
            state = LeadState.model_validate(data["state"])
            data = {k: v for k, v in data.items() if k != "state"}
            data["lead"] = RoutingSubject.of(state)
        return data


class AcceptedNotice(_Message):
    """The owner accepted: the team's SLA clock for the lead stops."""

    type: Literal["accepted"] = "accepted"
    team: str | None
    lead_id: str


class SlaTick(_Message):
    """Check the team's leads waiting for acceptance against its SLA."""

    type: Literal["tick"] = "tick"
    team: str


RoutingMessage = Annotated[RouteRequest | AcceptedNotice | SlaTick, Field(discriminator="type")]

IDENTITY_MESSAGE: TypeAdapter[IdentityProbe | EraseKey] = TypeAdapter(IdentityMessage)
LEAD_UPDATE: TypeAdapter[
    NewLead
    | MergeCommand
    | AbsorbCommand
    | UnmergeCommand
    | DetachCommand
    | EngagementUpdate
    | AcceptUpdate
    | CrmUpdate
    | EraseLead
    | RescoreLead
] = TypeAdapter(LeadUpdate)
ROUTING_MESSAGE: TypeAdapter[RouteRequest | AcceptedNotice | SlaTick] = TypeAdapter(RoutingMessage)

TOPIC_UNIONS: dict[str, TypeAdapter[Any]] = {
    "IdentityKeysMessage": IDENTITY_MESSAGE,
    "LeadUpdatesMessage": LEAD_UPDATE,
    "RoutingRequestsMessage": ROUTING_MESSAGE,
}
