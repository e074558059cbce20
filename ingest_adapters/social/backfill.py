"""`leadflow backfill FILE`: a Meta Ads Manager lead export onto `leads.raw`.

For leads that arrived while the webhook was not set up (or down). Each row
becomes the envelope the webhook path would have made, under the same event
id (from the provider's lead id), so a lead already delivered by webhook is
the same event and changes nothing downstream. A bad row is a dead letter
on `dlq.social_ads` with its row number; the backfill goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest_adapters.social.common import STEP
from ingest_adapters.social.meta import meta_export_leads
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.kafka_clients import ensure_topics, make_producer
from leadflow.settings import Settings
from leadflow.topics import Topics

IN_FLIGHT = 1000


@dataclass
class BackfillSummary:
    file: str
    published: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


async def backfill(settings: Settings, bootstrap: str, path: Path) -> BackfillSummary:
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, bootstrap)
    summary = BackfillSummary(file=path.name)
    rejected: Counter[str] = Counter()
    producer = make_producer(settings.kafka, bootstrap, linger_ms=20)
    await producer.start()
    in_flight: list[asyncio.Future[Any]] = []
    try:
        with path.open("rb") as raw:
            for item in meta_export_leads(raw, received_at=datetime.now(UTC), source=path.name):
                if isinstance(item, BadRecordError):
                    original = json.dumps(item.fields, ensure_ascii=False).encode()
                    letter = dead_letter_for(item, original, stage=STEP, detail=path.name)
                    key, value = letter.record()
                    in_flight.append(await producer.send(topics.dlq(STEP), value, key=key))
                    rejected[item.reason] += 1
                    continue
                in_flight.append(
                    await producer.send(
                        topics.leads_raw,
                        item.model_dump_json().encode(),
                        key=item.event_id.encode(),
                    )
                )
                summary.published += 1
                if len(in_flight) >= IN_FLIGHT:
                    await asyncio.gather(*in_flight)
                    in_flight.clear()
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    summary.rejected = dict(rejected)
    return summary
