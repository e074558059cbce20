"""`StageTransition`: one move of a lead through the funnel, the message on `lead.transitions`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class StageTransition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    transition_id: str
    lead_id: str
    deal_id: str = ""
    from_stage: str
    to_stage: str
    event_time: datetime
    ingest_time: datetime
    owner: str = ""
    team: str = ""
    channel: str = ""
    source: str = ""
    campaign: str = ""
    score: float = 0.0
    amount: float = 0.0
    currency: str = ""
    reason: str = ""
