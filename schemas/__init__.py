"""Pydantic models for every message and row leadflow handles. No I/O here.

Layers: a permissive raw envelope per channel (`RawLead`), one strict
canonical `Lead`, row models that are exactly the ClickHouse columns, and the
`DeadLetter` every step emits for input it cannot take.
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
from schemas.rows import AssignmentRow, DeadLetterRow, LeadRow, MergeRow, TransitionRow
from schemas.transition import StageTransition

__all__ = [
    "Assignment",
    "AssignmentRow",
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
    """JSON Schema of every message: what adapters and outside systems publish (`RawLead`,
    the events), what the steps pass each other (one union per internal topic), and what
    they emit (`LeadState`, `Assignment`, `MergeRecord`, `StageTransition`, `DeadLetter`)."""
    from schemas.messages import TOPIC_UNIONS
    from schemas.nurture import NURTURE_COMMAND, NurtureEmail, NurtureEvent
    from schemas.scoring import Evaluation, ModelSnapshot, Outcome

    models = (
        RawLead,
        EngagementEvent,
        CallEvent,
        CrmEvent,
        Lead,
        LeadState,
        Assignment,
        MergeRecord,
        StageTransition,
        DeadLetter,
        NurtureEmail,
        NurtureEvent,
        Outcome,
        ModelSnapshot,
        Evaluation,
    )
    found: dict[str, dict[str, object]] = {m.__name__: m.model_json_schema() for m in models}
    for name, adapter in {**TOPIC_UNIONS, "NurtureCommandsMessage": NURTURE_COMMAND}.items():
        found[name] = adapter.json_schema()
    return found
