"""The three kinds of failure, each named by what happens next.

Stages never guess from message text: they raise or return one of these and
the shell around them (agent, sink, HTTP handler) acts on the class alone.
"""

from __future__ import annotations


class LeadflowError(Exception):
    """Base of every error leadflow raises on purpose."""


class FatalError(LeadflowError):
    """The process cannot go on correctly: stop it, nothing is committed past this point.

    Examples: a schema migration failed, the broker refused our credentials.
    Offsets stay where they are, so a restarted process picks up the same input.
    """


class ConfigurationError(FatalError):
    """Settings or rule files are invalid: the process refuses to start and says which value."""


class RetriableError(LeadflowError):
    """A dependency is unavailable for now: back off and retry the same work.

    Never dead-lettered and never committed past: the data was good, the world
    was not. Examples: ClickHouse timing out, Kafka not acknowledging a write.
    """


class BadRecordError(LeadflowError):
    """One input cannot be processed: dead-letter it with the reason, then move on.

    Carries per-field problems so the sender (or the dead-letter reader) learns
    exactly what to fix.
    """

    def __init__(self, reason: str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.fields: dict[str, str] = dict(fields or {})


class TooLargeError(BadRecordError):
    """A message Kafka can never accept: larger, once encoded, than a write may be.

    Raised by the publisher before sending (and for Kafka's own
    MessageSizeTooLargeError), never retriable: the same bytes are as large on
    every try, so answering "retry" would loop forever. Dead-letter the input
    (its dead letter keeps a truncated original, see leadflow.dead_letters)
    and answer 413. `size` is the encoded record's size, `limit` the most a
    record may be (both in bytes; `size` is None when only Kafka measured it).
    """

    def __init__(
        self, message: str, *, size: int | None, limit: int, reason: str = "too_large"
    ) -> None:
        problem = (
            f"{size} bytes once encoded; at most {limit}"
            if size is not None
            else f"larger once encoded than Kafka accepts ({limit} bytes here)"
        )
        super().__init__(reason, message, {"body": problem})
        self.size = size
        self.limit = limit
