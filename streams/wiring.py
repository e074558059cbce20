"""Shared plumbing of the thin agents: raw-bytes topics and dead-lettering.

An agent never raises for a bad record (Faust would acknowledge and lose it):
it sends a dead letter carrying the record's coordinates, then moves on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import faust
import orjson

from leadflow.dead_letters import dead_letter_for_record
from leadflow.errors import BadRecordError

log = logging.getLogger(__name__)


class Message(dict[str, Any]):
    """An internal JSON message. A field it lacks is a bad record (dead-lettered), not a
    crash; a KeyError from leadflow's own state stays what it is, a bug."""

    @classmethod
    def parse(cls, value: bytes | None) -> Message:
        data = orjson.loads(value or b"")
        if not isinstance(data, dict):
            raise BadRecordError("malformed_message", "expected a JSON object")
        return cls(data)

    def __missing__(self, key: str) -> Any:
        raise BadRecordError("malformed_message", f"message has no {key!r}", {key: "required"})

    def time(self, key: str) -> datetime:
        try:
            return datetime.fromisoformat(self[key])
        except (TypeError, ValueError) as exc:
            raise BadRecordError(
                "malformed_message", f"{key} is not an ISO time", {key: "ISO 8601 time"}
            ) from exc


def raw_topic(app: faust.App, name: str) -> Any:
    """A topic whose keys and values are bytes: leadflow does its own (de)serialization."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def json_table(app: faust.App, name: str, partitions: int) -> Any:
    """A partition-owned table of JSON values with text keys, backed by a changelog topic.

    Faust's default JSON serializers keep keys as text through a changelog
    recovery, so a restarted worker finds the same keys.
    """
    return app.Table(name, default=None, partitions=partitions)


async def dead_letter(dlq: Any, stage: str, event: Any, error: Exception) -> None:
    """Send the event's dead letter; Faust's message carries the raw key and value."""
    message = event.message
    letter = dead_letter_for_record(error, message, stage=stage)
    log.warning(
        "dead-lettered %s@%s/%s in %s: %s",
        message.topic,
        message.partition,
        message.offset,
        stage,
        letter.message,
    )
    key, value = letter.record()
    await dlq.send(key=key, value=value)
