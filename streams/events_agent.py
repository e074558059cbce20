"""The agent of step `events`: engagement and call events to the person they are about.

Inputs: `events.engagement` (key: email, phone or lead id), `events.calls`
(key: the caller's E.164 number) and `events.crm` (key: lead id; today the
rep's `accept`). Output: identity probes on
`identity.keys`, one per match key, or, for an event that names
a lead id, an update on `lead.updates`. Events that cannot be read or name
nobody go to `dlq.events`. An event that names an erased person (any of its
numbers, addresses or lead ids is on the suppression list) goes nowhere but
to `dlq.events` as a `suppressed` letter holding only hashes: it must not
bring the person back as a lead, a route or a notice. Replays are harmless:
the lead step keeps event ids, touch ids and engagement ids.
"""

from __future__ import annotations

from typing import Any

import faust
from pydantic import ValidationError

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.rules import Rules
from leadflow.settings import Settings
from leadflow.suppression import SuppressionList
from leadflow.topics import Topics
from schemas import CallEvent, CrmEvent, EngagementEvent, IdentityProbe
from schemas.messages import AcceptUpdate, CrmUpdate, EngagementUpdate
from streams.events import call_probe, crm_update, engagement_update
from streams.identity import scatter
from streams.normalize_agent import raw_identifiers, suppressed_letter
from streams.wiring import Outbox, Outputs, StagedTable, run_batches

STEP = steps.EVENTS


def event_key(event: Any) -> str | None:
    key = event.key
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


def events_step(
    record: Any,
    out: Outputs,
    *,
    topics: Topics,
    rules: Rules,
    region: str,
    suppressed: SuppressionList,
) -> None:
    """One event of `events.engagement`, `events.calls` or `events.crm`."""
    result: IdentityProbe | EngagementUpdate | AcceptUpdate | CrmUpdate
    try:
        if record.message.topic == topics.events_crm:
            result = crm_update(CrmEvent.model_validate_json(record.value))
        elif record.message.topic == topics.events_calls:
            result = call_probe(CallEvent.model_validate_json(record.value), rules.identity, region)
        else:
            result = engagement_update(
                EngagementEvent.model_validate_json(record.value), rules.identity, region
            )
    except (BadRecordError, ValidationError, ValueError) as exc:
        out.dead_letter(topics.dlq(STEP), STEP, record, exc)
        return
    if len(suppressed):  # reading every field costs: only once someone was erased
        named: list[str | None] = [*raw_identifiers(record.value, region), event_key(record)]
        if isinstance(result, IdentityProbe):
            named += [value for _, value, _ in result.keys]
        else:
            named.append(result.lead_id)
        hashes = suppressed.matching(named)
        if hashes:
            out.add(topics.dlq(STEP), *suppressed_letter(record, hashes, STEP).record())
            return
    if isinstance(result, IdentityProbe):
        for key, value in scatter(result):
            out.add(topics.identity_keys, key, value)
    else:
        out.add(topics.lead_updates, result.lead_id, result.model_dump_json().encode())


def register(
    app: faust.App,
    topics: Topics,
    settings: Settings,
    rules: Rules,
    suppressions: SuppressionList | None = None,
) -> Any:
    source = app.topic(
        topics.events_engagement,
        topics.events_calls,
        topics.events_crm,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    region = settings.normalize.default_phone_region
    # (an empty list is falsy: test for None)
    suppressed = SuppressionList.none_loaded() if suppressions is None else suppressions

    def take_one(record: Any, unused: StagedTable | None, out: Outbox) -> None:
        events_step(record, out, topics=topics, rules=rules, region=region, suppressed=suppressed)

    async def take_events(stream: Any) -> None:
        await suppressed.wait_loaded()
        await run_batches(app, stream, settings, take_one)

    return app.agent(source, name=STEP, concurrency=1)(take_events)
