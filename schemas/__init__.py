"""Pydantic models for every message and row leadflow handles. No I/O here.

Layers: a permissive raw envelope per channel (`RawLead`), one strict
canonical `Lead`, row models that are exactly the ClickHouse columns, and the
`DeadLetter` every stage emits for input it cannot take.
"""

from schemas.dead_letter import DeadLetter, FieldProblem
from schemas.envelope import Channel, RawLead
from schemas.events import CallEvent, CrmEvent, EngagementEvent
from schemas.lead import Lead
from schemas.lead_state import (
    Assignment,
    Engagement,
    IdentityProbe,
    LeadState,
    MatchRecord,
    MergeRecord,
    ScoreResult,
    Touch,
)
from schemas.rows import DeadLetterRow, LeadRow, MergeRow, TransitionRow
from schemas.transition import StageTransition

__all__ = [
    "Assignment",
    "CallEvent",
    "Channel",
    "CrmEvent",
    "DeadLetter",
    "DeadLetterRow",
    "Engagement",
    "EngagementEvent",
    "FieldProblem",
    "IdentityProbe",
    "Lead",
    "LeadRow",
    "LeadState",
    "MatchRecord",
    "MergeRecord",
    "MergeRow",
    "RawLead",
    "ScoreResult",
    "StageTransition",
    "Touch",
    "TransitionRow",
    "json_schemas",
]


def json_schemas() -> dict[str, dict[str, object]]:
    """JSON Schema of every message model, for producers outside Python."""
    return {
        model.__name__: model.model_json_schema()
        for model in (RawLead, Lead, LeadState, Assignment, MergeRecord, DeadLetter)
    }
