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
import orjson
from pydantic import ValidationError

from leadflow import stages
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import IdentityProbe
from streams.identity import table_key, visit_key
from streams.rules import Rules
from streams.wiring import Outbox, StagedTable, json_table, raw_topic, run_batches

STAGE = stages.IDENTITY
ERASE_PREFIX = b'{"type":"erase"'


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.identity_keys)
    keys_out = raw_topic(app, topics.identity_keys)
    updates = raw_topic(app, topics.lead_updates)
    dlq = raw_topic(app, topics.dlq(STAGE))
    index = json_table(app, "identity_index", settings.kafka.partitions)

    async def resolve_identity(stream: Any) -> None:
        await run_batches(stream, settings.worker, resolve_one, index)

    def resolve_one(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        if event.value and event.value.startswith(ERASE_PREFIX):
            # `leadflow erase`: forget the person's match key (Faust tombstones the changelog).
            staged.pop((event.key or b"").decode())
            return
        try:
            probe = IdentityProbe.model_validate_json(event.value)
            if not probe.keys:
                raise ValueError("probe has no key left to visit")
        except (ValidationError, ValueError) as exc:
            out.dead_letter(dlq, STAGE, event, exc)
            return
        kind, value, _ = probe.keys[0]
        key = table_key(kind, value)
        entry = staged.get(key)
        probe, new_entry = visit_key(probe, entry, rules.identity)
        if new_entry != entry:
            staged[key] = new_entry
        if probe.keys:
            kind, value, _ = probe.keys[0]
            out.add(keys_out, table_key(kind, value), probe.model_dump_json().encode())
        else:
            update = {"type": "lead", "probe": probe.model_dump(mode="json")}
            out.add(updates, probe.lead_id, orjson.dumps(update))

    return app.agent(source, name=STAGE, concurrency=1)(resolve_identity)
