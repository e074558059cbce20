"""Messages of learned scoring (streams/learning.py).

- `scoring.outcomes` (key: `model`, so one partition learns them all in order):
  `Outcome`, a won, converted, lost or disqualified lead with its features as
  they were when it was last scored.
- `scoring.models` (compacted; key: `current`): `ModelSnapshot`, each new
  version of the model, read by every worker, so every partition scores with
  the same version.
- `scoring.evaluations` (key: lead id): `Evaluation`, progressive validation:
  what the model said of each outcome before it learned from it, beside the
  rules' score, for ClickHouse's `scoring_evaluations`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Outcome(_Message):
    type: Literal["outcome"] = "outcome"
    event_id: str = Field(description="The CRM event's id: an outcome is learned once.")
    lead_id: str
    label: bool = Field(description="True: won or converted; False: lost or disqualified.")
    features: list[str] = Field(description="streams/features.py tokens, as last scored.")
    rule_score: float = Field(description="The rules' score of the lead at that moment.")
    at: datetime = Field(description="When the outcome happened (the CRM event's time).")


class ModelSnapshot(_Message):
    type: Literal["model"] = "model"
    version: int = Field(description="Grows by one with each published snapshot.")
    outcomes: int = Field(description="Outcomes learned so far.")
    positives: int = Field(description="Of which won or converted.")
    intercept: float
    weights: dict[str, float] = Field(description="Feature token -> weight (log-odds).")
    published_at: datetime


class Evaluation(_Message):
    type: Literal["evaluation"] = "evaluation"
    event_id: str
    lead_id: str
    version: int = Field(description="The model version that predicted (before learning).")
    outcomes_before: int
    probability: float = Field(description="The model's fit probability, before learning.")
    rule_score: float
    label: bool
    at: datetime
