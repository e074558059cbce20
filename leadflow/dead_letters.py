"""Building dead letters: one function every step and adapter uses.

A dead letter keeps the original bytes untouched, where they came from, the
stage that refused them and every field problem, so the sender or an
operator can fix and replay them. Its id is stable: the same record refused
twice is the same dead letter.

A dead letter always fits in Kafka (under `DEAD_LETTER_MAX_BYTES` once
encoded, below the publisher's 1 MiB limit): an original larger than
`KEEP_WHOLE_MAX_BYTES`, or one whose letter would not fit, is kept as its
first `TRUNCATED_KEEP_BYTES` with `original_truncated`, and every letter
carries the whole original's size and SHA-256. Problems, the message, the key
and the detail are bounded too (`MAX_PROBLEMS` …).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from schemas import DeadLetter, FieldProblem

_DEAD_LETTER_NAMESPACE = uuid.UUID("5d1f0c8e-2b7a-4f3e-8a61-9c4d2e7b1a30")

# Base64 of 512 KiB is 683 KiB: with the bounded rest, a letter stays under 1 MiB.
KEEP_WHOLE_MAX_BYTES = 512 * 1024
TRUNCATED_KEEP_BYTES = 64 * 1024
DEAD_LETTER_MAX_BYTES = 1_000_000
MAX_MESSAGE_CHARS = 2_000
MAX_PROBLEMS = 50
MAX_PROBLEM_FIELD_CHARS = 100
MAX_PROBLEM_CHARS = 500
MAX_KEY_CHARS = 500
MAX_DETAIL_CHARS = 1_000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _problems(fields: dict[str, str]) -> list[FieldProblem]:
    items = sorted(fields.items())
    problems = [
        FieldProblem(
            field=_clip(field, MAX_PROBLEM_FIELD_CHARS), problem=_clip(problem, MAX_PROBLEM_CHARS)
        )
        for field, problem in items[:MAX_PROBLEMS]
    ]
    if len(items) > MAX_PROBLEMS:
        problems.append(
            FieldProblem(field="…", problem=f"{len(items) - MAX_PROBLEMS} more problems not kept")
        )
    return problems


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
    """A dead letter for `original`, refused by `stage` because of `error`.

    It fits in Kafka whatever `original` is: see the module's docstring.
    """
    if isinstance(error, BadRecordError):
        reason, message, fields = error.reason, error.message, error.fields
    else:
        reason, message, fields = "unreadable", str(error), {}
    where = f"{stage}|{topic}|{partition}|{offset}|{detail}|{DeadLetter.encode_original(original)}"

    def letter(kept: bytes) -> DeadLetter:
        return DeadLetter(
            dead_letter_id=stable_id(_DEAD_LETTER_NAMESPACE, where),
            stage=stage,
            reason=reason,
            error_class=type(error).__name__,
            message=_clip(message, MAX_MESSAGE_CHARS),
            problems=_problems(fields),
            original_b64=DeadLetter.encode_original(kept),
            original_truncated=len(kept) < len(original),
            original_bytes=len(original),
            original_sha256=hashlib.sha256(original).hexdigest(),
            original_key=_clip(key.decode("utf-8", "replace"), MAX_KEY_CHARS)
            if key is not None
            else None,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            source_detail=_clip(detail, MAX_DETAIL_CHARS) if detail is not None else None,
            failed_at=now(),
        )

    if len(original) <= KEEP_WHOLE_MAX_BYTES:
        whole = letter(original)
        if len(whole.model_dump_json().encode()) <= DEAD_LETTER_MAX_BYTES:
            return whole
    return letter(original[:TRUNCATED_KEEP_BYTES])


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
