"""The agent of stage `normalize`: reads `leads.raw`, starts the identity chain or dead-letters.

Concurrency 1 keeps per-partition order. The agent never raises for a bad
record (Faust would acknowledge it and lose it): `normalize_message` returns
a dead letter instead, which is acknowledged by Kafka before the offset can be
committed (batches: see `streams.wiring`).
A good lead leaves as an identity probe keyed by its first match key.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import faust
import orjson

from leadflow.privacy import SuppressionList
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import Lead
from streams.identity import start_probe, table_key
from streams.normalize import STAGE, normalize_message, normalize_phone
from streams.rules import Rules
from streams.wiring import Outbox, StagedTable, raw_topic, run_batches

log = logging.getLogger(__name__)


def raw_identifiers(value: bytes | None, region: str) -> list[str]:
    """Every field value of a raw envelope, and its E.164 reading where it is a phone."""
    try:
        fields = orjson.loads(value or b"").get("fields") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return []
    found: list[str] = []
    for text in fields.values() if isinstance(fields, dict) else []:
        if not isinstance(text, str) or not text.strip():
            continue
        found.append(text)
        with contextlib.suppress(ValueError):
            found.append(normalize_phone(text, region))
    return found


def register(
    app: faust.App,
    topics: Topics,
    settings: Settings,
    rules: Rules,
    suppressions: SuppressionList | None = None,
) -> Any:
    source = raw_topic(app, topics.leads_raw)
    if suppressions is None:  # (an empty list is falsy: test for None)
        suppressions = SuppressionList()
        suppressions.mark_loaded()
    suppressed = suppressions
    keys_out = raw_topic(app, topics.identity_keys)
    dead_letters = raw_topic(app, topics.dlq(STAGE))
    region = settings.normalize.default_phone_region

    async def normalize_leads(stream: Any) -> None:
        await suppressed.wait_loaded()
        await run_batches(stream, settings.worker, normalize_one)

    def normalize_one(event: Any, unused: StagedTable | None, out: Outbox) -> None:
        message = event.message
        # Reading every field as a phone costs; only do it once someone was erased.
        if len(suppressed) and suppressed.hits(raw_identifiers(event.value, region)):
            # An erased person: not a lead, not a dead letter (that would keep their data).
            log.info("suppressed %s@%s/%s", message.topic, message.partition, message.offset)
            return
        result = normalize_message(
            event.value,
            default_region=region,
            key=event.key,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        if isinstance(result, Lead):
            probe = start_probe(result, rules.identity)
            kind, value, _ = probe.keys[0]
            out.add(keys_out, table_key(kind, value), probe.model_dump_json().encode())
        else:
            log.warning(
                "dead-lettered %s@%s/%s: %s",
                message.topic,
                message.partition,
                message.offset,
                result.message,
            )
            out.add(dead_letters, *result.record())

    return app.agent(source, name=STAGE, concurrency=1)(normalize_leads)
