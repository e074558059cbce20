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
from schemas.lead import Lead


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
    message: str
    consent: int | None
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_term: str
    utm_content: str
    referrer: str
    landing_page: str
    form_id: str
    attributes: dict[str, str]
    received_at: datetime
    normalized_at: datetime
    kafka_partition: int
    kafka_offset: int

    @classmethod
    def from_lead(cls, lead: Lead, partition: int, offset: int) -> LeadRow:
        text = {
            name: getattr(lead, name) or ""
            for name in cls.model_fields
            if name in Lead.model_fields
            and name not in ("consent", "attributes")
            and name not in ("received_at", "normalized_at")
        }
        return cls(
            **text,
            # The newest normalization of a lead wins in the ReplacingMergeTree.
            version=int(lead.normalized_at.timestamp() * 1000),
            consent=None if lead.consent is None else int(lead.consent),
            attributes=dict(lead.attributes),
            received_at=lead.received_at,
            normalized_at=lead.normalized_at,
            kafka_partition=partition,
            kafka_offset=offset,
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
            problems={p.field: p.problem for p in letter.problems},
            original_b64=letter.original_b64,
            original_key=letter.original_key or "",
            source_topic=letter.source_topic or "",
            source_partition=-1 if letter.source_partition is None else letter.source_partition,
            source_offset=-1 if letter.source_offset is None else letter.source_offset,
            source_detail=letter.source_detail or "",
            failed_at=letter.failed_at,
        )
