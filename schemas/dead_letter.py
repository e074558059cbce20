"""`DeadLetter`: what a step emits for input it cannot take. Nothing is dropped silently.

A dead letter must itself fit in Kafka, so an original too large to keep
whole is kept truncated (`original_truncated`), with the size and SHA-256
digest of the whole: enough to match it with the sender's copy.
"""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class FieldProblem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str
    problem: str


class DeadLetter(BaseModel):
    """The untouched input, where it came from, which stage refused it and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dead_letter_id: str
    stage: str = Field(
        description="The step that refused the input (leadflow.steps); also the dlq topic suffix."
    )
    reason: str = Field(description="Short machine-readable cause, e.g. invalid_fields.")
    error_class: str
    message: str
    problems: list[FieldProblem] = Field(default_factory=list)
    original_b64: str = Field(
        description="The original bytes, base64, exactly as received; only their first "
        "bytes when original_truncated."
    )
    original_truncated: bool = Field(
        default=False,
        description="True when the original was too large to keep whole: original_b64 "
        "holds its first bytes, original_bytes and original_sha256 describe all of it.",
    )
    original_bytes: int | None = Field(
        default=None, ge=0, description="Size of the whole original in bytes."
    )
    original_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the whole original, lower-case hex.",
    )
    original_key: str | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_detail: str | None = Field(
        default=None, description="Where it entered when not from Kafka: HTTP path, file and row."
    )
    failed_at: datetime

    def record(self) -> tuple[bytes, bytes]:
        """Its Kafka key and value on `dlq.<stage>`.

        Keyed by its own id, never by the original's key: the dead-letter
        topics are compacted, so an erasure removes a letter by tombstoning
        exactly this key.
        """
        return self.dead_letter_id.encode(), self.model_dump_json().encode()

    @property
    def original(self) -> bytes:
        """The kept bytes: the whole original unless `original_truncated`."""
        return base64.b64decode(self.original_b64)

    @staticmethod
    def encode_original(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")
