"""The agent of step `identity`: one match key visited per message.

Input: `identity.keys`, keyed by match key (`email:…`, `phone:…`, …); the
partition that owns a key owns its entries in the `identity_index` table
(changelog-backed, RocksDB on disk): one for an exact key, and for a fuzzy key
its list of blocks plus one entry per block (`company:fabrikam|sc`).
Output: the probe, resolved against its key, on `lead.updates`: keyed by the
lead's own id when it is one of several probes of the lead (the lead step
gathers them), by the lead it resolved to when it is the only one. Unreadable
probes go to `dlq.identity`. Replaying a probe is harmless: a key already
pointing at the probe's lead is a no-op, a name already filed is not filed again.
"""

from __future__ import annotations

from typing import Any

import faust
from pydantic import ValidationError

from leadflow import steps
from leadflow.ids import table_key
from leadflow.rules import Rules
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import IdentityProbe
from schemas.messages import IDENTITY_MESSAGE, EraseKey, NewLead
from streams.identity import block_key, visit
from streams.wiring import (
    Outbox,
    Outputs,
    StagedTable,
    Table,
    json_table,
    raw_topic,
    run_batches,
)

STEP = steps.IDENTITY


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


def resolve_step(record: Any, index: Table, out: Outputs, *, topics: Topics, rules: Rules) -> None:
    """One record of `identity.keys` against the index (its key's partition)."""
    try:
        message = IDENTITY_MESSAGE.validate_json(record.value or b"")
        if isinstance(message, IdentityProbe) and not message.keys:
            raise ValueError("probe has no key left to visit")
    except (ValidationError, ValueError) as exc:
        out.dead_letter(topics.dlq(STEP), STEP, record, exc)
        return
    if isinstance(message, EraseKey):
        # `leadflow erase`: forget the person under this key and, for a fuzzy key,
        # under each of its blocks (Faust tombstones the changelog when nothing of an
        # entry is left).
        key = (record.key or b"").decode()
        entry = index.get(key)
        blocks = entry.get("blocks", []) if isinstance(entry, dict) else []
        left = []
        for block in blocks:
            bkey = block_key(key, block)
            kept = erase_from_entry(index.get(bkey), message)
            if kept is None:
                index.pop(bkey, None)
            else:
                index[bkey] = kept
                left.append(block)
        if blocks and left:
            index[key] = {"blocks": left}
        elif blocks:  # even the first letters of the names go with the last of them
            index.pop(key, None)
        if not blocks:  # an exact key, or a fuzzy key's single list of an older worker
            kept = erase_from_entry(entry, message)
            if kept is None:
                index.pop(key, None)
            else:
                index[key] = kept
        return
    probe = message
    probe, writes = visit(probe, index, rules.identity)
    for key, value in writes.items():
        index[key] = value
    if probe.keys:
        # A chain an older worker started: on to its next key.
        kind, value, _ = probe.keys[0]
        out.add(topics.identity_keys, table_key(kind, value), probe.model_dump_json().encode())
    else:
        # One key of several: back to the lead's own id, where its answers are gathered;
        # the only key: straight to the lead it resolved to.
        to = probe.lead.lead_id if probe.parts > 1 else probe.lead_id
        out.add(topics.lead_updates, to, NewLead(probe=probe).model_dump_json().encode())


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.identity_keys)
    index = json_table(app, "identity_index", settings)

    def resolve_one(record: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        resolve_step(record, staged, out, topics=topics, rules=rules)

    async def resolve_identity(stream: Any) -> None:
        await run_batches(app, stream, settings, resolve_one, index)

    return app.agent(source, name=STEP, concurrency=1)(resolve_identity)
