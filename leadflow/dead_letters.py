"""Building dead letters: one function every stage and adapter uses.

A dead letter keeps the original bytes untouched, where they came from, the
stage that refused them and every field problem, so the sender or an
operator can fix and replay them. Its id is stable: the same record refused
twice is the same dead letter.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from schemas import DeadLetter, FieldProblem

_DEAD_LETTER_NAMESPACE = uuid.UUID("5d1f0c8e-2b7a-4f3e-8a61-9c4d2e7b1a30")


def dead_letter_for(
    error: Exception,
    original: bytes,
    *,
    stage: str,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    detail: str | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DeadLetter:
    """A dead letter for `original`, refused by `stage` because of `error`."""
    if isinstance(error, BadRecordError):
        reason, message, fields = error.reason, error.message, error.fields
    else:
        reason, message, fields = "unreadable", str(error), {}
    where = f"{stage}|{topic}|{partition}|{offset}|{detail}|{DeadLetter.encode_original(original)}"
    return DeadLetter(
        dead_letter_id=stable_id(_DEAD_LETTER_NAMESPACE, where),
        stage=stage,
        reason=reason,
        error_class=type(error).__name__,
        message=message[:2000],
        problems=[FieldProblem(field=f, problem=p) for f, p in sorted(fields.items())],
        original_b64=DeadLetter.encode_original(original),
        original_key=key.decode("utf-8", "replace") if key is not None else None,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        source_detail=detail,
        failed_at=now(),
    )


class KafkaRecord(Protocol):
    """What a dead letter needs of a consumed record (aiokafka's and Faust's both fit)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


def dead_letter_for_record(error: Exception, record: KafkaRecord, *, stage: str) -> DeadLetter:
    """A dead letter for a record consumed from Kafka, with its coordinates."""
    return dead_letter_for(
        error,
        record.value or b"",
        stage=stage,
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )
