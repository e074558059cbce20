"""The agent of stage `identity`: one hop of the identity chain per message.

Input: `identity.keys`, keyed by match key (`email:…`, `phone:…`, …); the
partition that owns a key owns its entry in the `identity_index` table
(changelog-backed, RocksDB on disk). Output: the probe goes on to its next
key on `identity.keys`, or, after the last key, to `lead.updates` keyed by
the resolved lead id. Unreadable probes go to `dlq.identity`. Replaying a
probe is harmless: a key already pointing at the probe's lead is a no-op.
"""

from __future__ import annotations

from typing import Any

import faust
from pydantic import ValidationError

from leadflow import stages
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import IdentityProbe
from streams.identity import table_key, visit_key
from streams.rules import Rules
from streams.wiring import dead_letter, json_table, raw_topic

STAGE = stages.IDENTITY
ERASE_PREFIX = b'{"type":"erase"'


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.identity_keys)
    keys_out = raw_topic(app, topics.identity_keys)
    updates = raw_topic(app, topics.lead_updates)
    dlq = raw_topic(app, topics.dlq(STAGE))
    index = json_table(app, "identity_index", settings.kafka.partitions)

    async def resolve_identity(stream: Any) -> None:
        async for event in stream.events():
            if event.value and event.value.startswith(ERASE_PREFIX):
                # `leadflow erase`: forget the person's match key (Faust tombstones the changelog).
                key = (event.key or b"").decode()
                if key in index:
                    del index[key]
                continue
            try:
                probe = IdentityProbe.model_validate_json(event.value)
                if not probe.keys:
                    raise ValueError("probe has no key left to visit")
            except (ValidationError, ValueError) as exc:
                await dead_letter(dlq, STAGE, event, exc)
                continue
            kind, value, _ = probe.keys[0]
            key = table_key(kind, value)
            entry = index.get(key)
            probe, new_entry = visit_key(probe, entry, rules.identity)
            if new_entry != entry:
                index[key] = new_entry
            if probe.keys:
                kind, value, _ = probe.keys[0]
                await keys_out.send(
                    key=table_key(kind, value).encode(), value=probe.model_dump_json().encode()
                )
            else:
                update = {"type": "lead", "probe": probe.model_dump(mode="json")}
                await updates.send(key=probe.lead_id.encode(), value=_json(update))

    return app.agent(source, name=STAGE, concurrency=1)(resolve_identity)


def _json(value: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(value)
