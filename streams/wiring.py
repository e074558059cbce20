"""Shared plumbing of the thin agents: raw-bytes topics and dead-lettering.

An agent never raises for a bad record (Faust would acknowledge and lose it):
it sends a dead letter carrying the record's coordinates, then moves on.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from leadflow.dead_letters import dead_letter_for_record

log = logging.getLogger(__name__)


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
    await dlq.send(key=event.key, value=letter.model_dump_json().encode())
