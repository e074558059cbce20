"""The agent of stage `normalize`: reads `leads.raw`, writes `leads.identified` or `dlq.normalize`.

Concurrency 1 keeps per-partition order. The agent never raises for a bad
record (Faust would acknowledge it and lose it): `normalize_message` returns
a dead letter instead, which is sent before the offset can be committed.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import Lead
from streams.normalize import STAGE, normalize_message

log = logging.getLogger(__name__)


def raw_topic(app: faust.App, name: str) -> Any:
    """A topic whose keys and values are bytes: leadflow does its own (de)serialization."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def register(app: faust.App, topics: Topics, settings: Settings) -> Any:
    source = raw_topic(app, topics.leads_raw)
    leads_out = raw_topic(app, topics.leads_identified)
    dead_letters = raw_topic(app, topics.dlq(STAGE))
    region = settings.normalize.default_phone_region

    async def normalize_leads(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            result = normalize_message(
                event.value,
                default_region=region,
                key=event.key,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
            if isinstance(result, Lead):
                await leads_out.send(
                    key=result.lead_id.encode(), value=result.model_dump_json().encode()
                )
            else:
                log.warning(
                    "dead-lettered %s@%s/%s: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    result.message,
                )
                await dead_letters.send(key=event.key, value=result.model_dump_json().encode())

    return app.agent(source, name=STAGE, concurrency=1)(normalize_leads)
