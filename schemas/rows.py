"""Row models: exactly the ClickHouse columns of the tables the writer fills.

`column_names()` and `as_row()` keep the insert in step with the model; the
migrations under sinks/clickhouse/migrations declare the same columns, and a
test compares both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from schemas.dead_letter import DeadLetter
from schemas.lead_state import Assignment, LeadState, MergeRecord
from schemas.nurture import NurtureEvent
from schemas.scoring import Evaluation
from schemas.transition import StageTransition


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    table: ClassVar[str]

    @classmethod
    def column_names(cls) -> list[str]:
        return list(cls.model_fields)

    def as_row(self) -> list[Any]:
        return [getattr(self, name) for name in type(self).model_fields]


class LeadRow(_Row):
    table: ClassVar[str] = "leads"

    lead_id: str
    version: int
    event_id: str
    channel: str
    source_system: str
    email: str
    phone: str
    full_name: str
    first_name: str
    last_name: str
    company: str
    title: str
    country: str
    consent: int | None
    attributes: dict[str, str]
    kafka_partition: int
    kafka_offset: int
    first_seen: datetime
    updated_at: datetime
    merged_into: str
    merged_from: list[str]
    emails: list[str]
    phones: list[str]
    company_key: str
    company_size: int | None
    industry: str
    first_touch_channel: str
    first_touch_source: str
    first_touch_medium: str
    first_touch_campaign: str
    last_touch_channel: str
    last_touch_source: str
    last_touch_medium: str
    last_touch_campaign: str
    touch_count: int
    touch_event_ids: list[str]
    touch_channels: list[str]
    touch_sources: list[str]
    touch_at: list[datetime]
    score: float
    grade: str
    score_rules: dict[str, float]
    mql_at: datetime | None
    team: str
    owner: str
    owner_name: str
    assignment_rule: str
    assignment_reason: str
    assigned_at: datetime | None
    accepted_at: datetime | None
    stage: str
    stage_at: datetime | None
    stage_reason: str
    deal_id: str
    amount: float
    currency: str
    note_texts: list[str]
    note_sources: list[str]
    note_at: list[datetime]
    warnings: list[str]
    phone_extension: str
    suggested_lead_ids: list[str]
    suggested_rules: list[str]
    suggested_scores: list[float]
    rule_score: float
    fit_probability: float | None
    model_version: int | None
    fit_factors: dict[str, float]

    @classmethod
    def from_state(cls, state: LeadState, partition: int, offset: int) -> LeadRow:
        first = state.touches[0] if state.touches else None
        last = state.touches[-1] if state.touches else None
        return cls(
            lead_id=state.lead_id,
            # The lead step bumps the version on every change: the newest row wins.
            version=state.version,
            event_id=state.event_ids[-1] if state.event_ids else "",
            channel=first.channel if first else "",
            source_system=first.source_system if first else "",
            email=state.email or "",
            phone=state.phone or "",
            full_name=state.full_name or "",
            first_name=state.first_name or "",
            last_name=state.last_name or "",
            company=state.company or "",
            title=state.title or "",
            country=state.country or "",
            consent=None if state.consent is None else int(state.consent),
            attributes=dict(state.attributes),
            kafka_partition=partition,
            kafka_offset=offset,
            first_seen=state.first_seen,
            updated_at=state.updated_at,
            merged_into=state.merged_into or "",
            merged_from=list(state.merged_from),
            emails=list(state.emails),
            phones=list(state.phones),
            company_key=state.company_key or "",
            company_size=state.company_size,
            industry=state.industry or "",
            first_touch_channel=first.channel if first else "",
            first_touch_source=first.source if first else "",
            first_touch_medium=first.medium if first else "",
            first_touch_campaign=first.campaign if first else "",
            last_touch_channel=last.channel if last else "",
            last_touch_source=last.source if last else "",
            last_touch_medium=last.medium if last else "",
            last_touch_campaign=last.campaign if last else "",
            touch_count=len(state.touches) + state.touches_dropped,
            touch_event_ids=[t.event_id for t in state.touches],
            touch_channels=[t.channel for t in state.touches],
            touch_sources=[t.source for t in state.touches],
            touch_at=[t.at for t in state.touches],
            score=state.score,
            grade=state.grade,
            score_rules={name: points for name, points in state.score_rules},
            mql_at=state.mql_at,
            team=state.team or "",
            owner=state.owner or "",
            owner_name=state.owner_name or "",
            assignment_rule=state.assignment_rule or "",
            assignment_reason=state.assignment_reason or "",
            assigned_at=state.assigned_at,
            accepted_at=state.accepted_at,
            stage=state.stage or "",
            stage_at=state.stage_at,
            stage_reason=state.stage_reason,
            rule_score=state.rule_score,
            fit_probability=state.fit_probability,
            model_version=state.model_version,
            fit_factors=dict(state.fit_factors),
            deal_id=state.deal_id,
            amount=state.amount,
            currency=state.currency,
            note_texts=[n.text for n in state.notes],
            note_sources=[n.source for n in state.notes],
            note_at=[n.at for n in state.notes],
            warnings=list(state.warnings),
            phone_extension=state.phone_extension or "",
            suggested_lead_ids=[s[0] for s in state.suggested_duplicates],
            suggested_rules=[s[1] for s in state.suggested_duplicates],
            suggested_scores=[s[2] for s in state.suggested_duplicates],
        )


class TransitionRow(_Row):
    table: ClassVar[str] = "lead_transitions"

    transition_id: str
    lead_id: str
    deal_id: str
    from_stage: str
    to_stage: str
    event_time: datetime
    ingest_time: datetime
    owner: str
    team: str
    channel: str
    source: str
    campaign: str
    score: float
    amount: float
    currency: str
    reason: str

    @classmethod
    def from_transition(cls, transition: StageTransition) -> TransitionRow:
        return cls(**transition.model_dump())


class MergeRow(_Row):
    table: ClassVar[str] = "lead_merges"

    merge_id: str
    survivor_id: str
    merged_id: str
    rule: str
    score: float
    event_id: str
    merged_at: datetime
    unmerged_at: datetime | None

    @classmethod
    def from_record(cls, record: MergeRecord) -> MergeRow:
        return cls(**record.model_dump())


class AssignmentRow(_Row):
    table: ClassVar[str] = "assignments"

    assignment_id: str
    lead_id: str
    team: str
    owner: str
    owner_name: str
    rule: str
    reason: str
    assigned_at: datetime
    score: float
    grade: str
    source: str

    @classmethod
    def from_assignment(cls, assignment: Assignment) -> AssignmentRow:
        return cls(**assignment.model_dump(include=set(cls.model_fields)))


class NurtureEventRow(_Row):
    table: ClassVar[str] = "nurture_events"

    event_id: str
    lead_id: str
    sequence: str
    step: str
    kind: str
    at: datetime
    owner: str
    due_at: datetime | None
    send_id: str
    detail: str

    @classmethod
    def from_event(cls, event: NurtureEvent) -> NurtureEventRow:
        return cls(**event.model_dump(include=set(cls.model_fields)))


class EvaluationRow(_Row):
    table: ClassVar[str] = "scoring_evaluations"

    event_id: str
    lead_id: str
    version: int
    outcomes_before: int
    probability: float
    rule_score: float
    label: int
    at: datetime

    @classmethod
    def from_evaluation(cls, evaluation: Evaluation) -> EvaluationRow:
        return cls(
            **evaluation.model_dump(include=set(cls.model_fields) - {"label"}),
            label=int(evaluation.label),
        )


class DeadLetterRow(_Row):
    table: ClassVar[str] = "dead_letters"

    dead_letter_id: str
    stage: str
    reason: str
    error_class: str
    message: str
    problems: dict[str, str]
    original_b64: str
    original_key: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_detail: str
    failed_at: datetime

    @classmethod
    def from_dead_letter(cls, letter: DeadLetter) -> DeadLetterRow:
        return cls(
            dead_letter_id=letter.dead_letter_id,
            stage=letter.stage,
            reason=letter.reason,
            error_class=letter.error_class,
            message=letter.message,
            problems={p.field: p.problem for p in letter.problems} | _truncation(letter),
            original_b64=letter.original_b64,
            original_key=letter.original_key or "",
            source_topic=letter.source_topic or "",
            source_partition=-1 if letter.source_partition is None else letter.source_partition,
            source_offset=-1 if letter.source_offset is None else letter.source_offset,
            source_detail=letter.source_detail or "",
            failed_at=letter.failed_at,
        )


TRUNCATED_PROBLEM = "(original)"


def _truncation(letter: DeadLetter) -> dict[str, str]:
    """The truncation of the original, as a problem, until the table has columns for it."""
    if not letter.original_truncated:
        return {}
    kept = len(letter.original)
    return {
        TRUNCATED_PROBLEM: f"truncated: first {kept} of {letter.original_bytes} bytes kept; "
        f"sha256 {letter.original_sha256}"
    }
