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
from schemas.messages import IDENTITY_MESSAGE, EraseKey, NewLead
from streams.identity import table_key, visit_key
from streams.rules import Rules
from streams.wiring import Outbox, StagedTable, json_table, raw_topic, run_batches

STAGE = stages.IDENTITY


def erase_from_entry(entry: Any, command: EraseKey) -> Any:
    """What is left of an index entry once a person is erased from it; None: nothing.

    An exact key (email, phone) belongs to one lead: it goes whole. A fuzzy key
    (company, domain) lists names of several people ([name, lead id, first seen,
    email, phone key]); only the rows of the erased person go: by lead id, email or
    phone. A command without lead ids (older servers) drops the whole entry.
    """
    if not isinstance(entry, dict) or "names" not in entry or command.lead_ids is None:
        return None
    lead_ids, emails, phones = set(command.lead_ids), set(command.emails), set(command.phones)

    def theirs(item: list[Any]) -> bool:
        email = item[3] if len(item) >= 5 else None
        phone = item[4] if len(item) >= 5 else None
        return item[1] in lead_ids or email in emails or phone in phones

    names = [item for item in entry["names"] if not theirs(item)]
    return {**entry, "names": names} if names else None


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.identity_keys)
    keys_out = raw_topic(app, topics.identity_keys)
    updates = raw_topic(app, topics.lead_updates)
    dlq = raw_topic(app, topics.dlq(STAGE))
    index = json_table(app, "identity_index", settings.kafka.partitions)

    async def resolve_identity(stream: Any) -> None:
        await run_batches(stream, settings, resolve_one, index)

    def resolve_one(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        try:
            message = IDENTITY_MESSAGE.validate_json(event.value or b"")
            if isinstance(message, IdentityProbe) and not message.keys:
                raise ValueError("probe has no key left to visit")
        except (ValidationError, ValueError) as exc:
            out.dead_letter(dlq, STAGE, event, exc)
            return
        if isinstance(message, EraseKey):
            # `leadflow erase`: forget the person under this key (Faust tombstones the
            # changelog when nothing of the key is left).
            key = (event.key or b"").decode()
            kept = erase_from_entry(staged.get(key), message)
            if kept is None:
                staged.pop(key)
            else:
                staged[key] = kept
            return
        probe = message
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
            out.add(updates, probe.lead_id, NewLead(probe=probe).model_dump_json().encode())

    return app.agent(source, name=STAGE, concurrency=1)(resolve_identity)
