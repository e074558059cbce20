"""The agent of step `normalize`: reads `leads.raw`; a lead's identity probes, or a dead letter.

Concurrency 1 keeps per-partition order. The agent never raises for a bad
record (Faust would acknowledge it and lose it): `normalize_message` returns
a dead letter instead, which is acknowledged by Kafka before the offset can be
committed (batches: see `streams.wiring`).
A good lead leaves as identity probes, one per match key, all at once.

A record naming an erased person (any field value, the lead's email, or its
phone read with the lead's own country) becomes a dead letter of reason
`suppressed` holding only the matching hashes and the event id: the sender
got its usual answer, and an operator can still see that something came in.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from leadflow import steps
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.normalize import lead_of
from leadflow.rules import Rules
from leadflow.settings import Settings
from leadflow.suppression import (
    SuppressionList,
    event_id_of,
    identifiers_in_body,
    suppressed_dead_letter,
)
from leadflow.topics import Topics
from schemas import DeadLetter, Lead, RawLead
from streams.identity import scatter, start_probe
from streams.wiring import Outbox, Outputs, StagedTable, raw_topic, run_batches

log = logging.getLogger(__name__)
STEP = steps.NORMALIZE


def normalize_message(
    value: bytes,
    *,
    default_region: str,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Lead | DeadLetter:
    """Bytes from `leads.raw` in, a Lead or a DeadLetter out: errors are values here."""
    try:
        raw = RawLead.model_validate_json(value)
        return lead_of(raw, default_region=default_region)
    except (BadRecordError, ValueError) as exc:
        # pydantic's ValidationError is a ValueError: an envelope that is not a RawLead.
        return dead_letter_for(
            exc, value, stage=STEP, key=key, topic=topic, partition=partition, offset=offset
        )


def raw_identifiers(value: bytes | None, region: str) -> list[str]:
    """Every field value of a raw envelope, and its email and E.164 readings; a phone is
    read with the post's own country, `region` only when it gives none."""
    return identifiers_in_body(value, region)


def suppressed_hashes(
    value: bytes | None, result: Lead | DeadLetter, region: str, suppressed: SuppressionList
) -> list[str]:
    """The suppressed identifier hashes a raw record carries; empty for everyone else."""
    if not len(suppressed):  # reading every field as a phone costs: only once someone was erased
        return []
    found: list[str | None] = [*raw_identifiers(value, region)]
    if isinstance(result, Lead):
        found += [result.email, result.phone, result.lead_id]
    return suppressed.matching(found)


def suppressed_letter(event: Any, hashes: list[str], stage: str) -> DeadLetter:
    """The dead letter of a consumed record about an erased person: hashes, no data."""
    message = event.message
    log.info("suppressed %s@%s/%s", message.topic, message.partition, message.offset)
    return suppressed_dead_letter(
        hashes,
        stage=stage,
        event_id=event_id_of(event.value),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )


def normalize_step(
    record: Any,
    out: Outputs,
    *,
    topics: Topics,
    rules: Rules,
    region: str,
    suppressed: SuppressionList,
) -> None:
    """One envelope of `leads.raw`: its lead's identity probes, or a dead letter."""
    message = record.message
    result = normalize_message(
        record.value,
        default_region=region,
        key=record.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )
    hashes = suppressed_hashes(record.value, result, region, suppressed)
    if hashes:
        # An erased person: not a lead, and a dead letter that keeps none of their data.
        out.add(topics.dlq(STEP), *suppressed_letter(record, hashes, STEP).record())
        return
    if isinstance(result, Lead):
        for key, value in scatter(start_probe(result, rules.identity)):
            out.add(topics.identity_keys, key, value)
    else:
        log.warning(
            "dead-lettered %s@%s/%s: %s",
            message.topic,
            message.partition,
            message.offset,
            result.message,
        )
        out.add(topics.dlq(STEP), *result.record())


def register(
    app: faust.App,
    topics: Topics,
    settings: Settings,
    rules: Rules,
    suppressions: SuppressionList | None = None,
) -> Any:
    source = raw_topic(app, topics.leads_raw)
    # (an empty list is falsy: test for None)
    suppressed = SuppressionList.none_loaded() if suppressions is None else suppressions
    region = settings.normalize.default_phone_region

    def normalize_one(record: Any, unused: StagedTable | None, out: Outbox) -> None:
        normalize_step(
            record, out, topics=topics, rules=rules, region=region, suppressed=suppressed
        )

    async def normalize_leads(stream: Any) -> None:
        await suppressed.wait_loaded()
        await run_batches(app, stream, settings, normalize_one)

    return app.agent(source, name=STEP, concurrency=1)(normalize_leads)
