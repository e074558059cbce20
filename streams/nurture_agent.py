"""The agent of step `nurture`: sequences, durable timers and call tasks, per lead.

Inputs, co-partitioned by lead id: `leads.identified` (every snapshot of a
lead) and `nurture.commands` (`NurtureTick`, the clock, sent to every
partition every NURTURE_TICK_INTERVAL_S by each worker; `NurtureForget`, an
erasure). Outputs: `nurture.sends` (emails, for the mailer) and
`nurture.events` (for ClickHouse). Unreadable input goes to `dlq.nurture`.

State, in the partition that owns the lead (table `nurture_state`), in three
kinds of keys so that no write rewrites anything that grows with the number
of enrolled leads:
    `lead|<lead id>`                      the lead's entry (streams/nurture.py)
    `due|<partition>|<minute>|<shard>`    (lead id, due ms) of what is due in that minute
    `due-days|<partition>`                the days that still hold due leads, sorted
    `due-minutes|<partition>|<day>`       that day's minutes that still hold due leads
A tick of partition p reads the minutes up to its time, fires the leads in
them, and files each lead again under its next due minute. Timers are table
entries like any other: they survive restarts, kill -9 and rebalances with
the table, and a step fires once because its outputs carry derived ids.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from pydantic import ValidationError

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.nurture_rules import NurtureRules
from leadflow.settings import Settings
from leadflow.suppression import identifier_hash
from leadflow.topics import Topics
from schemas import LeadState
from schemas.nurture import NURTURE_COMMAND, NurtureForget, NurtureTick
from streams import nurture
from streams.wiring import (
    Outbox,
    Outputs,
    StagedTable,
    Table,
    json_table,
    raw_topic,
    run_batches,
)

STEP = steps.NURTURE
DUE_SHARDS = 64


def _minute(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def _lead_key(lead_id: str) -> str:
    return f"lead|{lead_id}"


def _bucket(partition: int, minute: str, lead_id: str) -> str:
    return f"due|{partition}|{minute}|{zlib.crc32(lead_id.encode()) % DUE_SHARDS}"


def _days_key(partition: int) -> str:
    return f"due-days|{partition}"


def _minutes_key(partition: int, day: str) -> str:
    return f"due-minutes|{partition}|{day}"


def _add_sorted(table: Table, key: str, item: str) -> None:
    items = table.get(key) or []
    if item not in items:
        table[key] = sorted([*items, item])


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def file_due(table: Table, partition: int, entry: dict[str, Any]) -> None:
    """Move the lead in the timer index to when its next step is due (or out of it).

    A bucket holds `[lead id, due ms]` pairs, so a tick passes over the leads of its
    minute that are due later without reading (or writing) their entries."""
    lead_id = entry["lead_id"]
    due = nurture.next_due(entry)
    due_ms = _ms(due) if due is not None else None
    filed = entry.get("filed")
    if filed == due_ms:
        return
    if filed is not None:
        key = _bucket(partition, _minute(_at_ms(filed)), lead_id)
        pairs = [p for p in table.get(key) or [] if p[0] != lead_id]
        if pairs:
            table[key] = pairs
        else:
            table.pop(key, None)
    if due is not None:
        minute = _minute(due)
        key = _bucket(partition, minute, lead_id)
        table[key] = [*(table.get(key) or []), [lead_id, due_ms]]
        # Two levels: a 30-day wait spreads leads over ~43,000 minutes, too many for one
        # value rewritten whenever a minute is added.
        _add_sorted(table, _days_key(partition), minute[:10])
        _add_sorted(table, _minutes_key(partition, minute[:10]), minute)
    entry["filed"] = due_ms


def _at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _emit(out: Outputs, topics: Topics, outcome: nurture.Outcome) -> None:
    for email in outcome.emails:
        out.add(topics.nurture_sends, email.lead_id, email.model_dump_json().encode())
    for event in outcome.events:
        out.add(topics.nurture_events, event.lead_id, event.model_dump_json().encode())
    for address in outcome.suppress:
        record = orjson.dumps({"reason": "unsubscribed", "at": datetime.now(UTC).isoformat()})
        out.add(topics.nurture_suppressions, identifier_hash(address), record)


def observe_step(
    record: Any,
    table: Table,
    out: Outputs,
    *,
    topics: Topics,
    rules: NurtureRules,
    now: datetime,
) -> None:
    """One snapshot of a lead from `leads.identified`."""
    lead = LeadState.model_validate_json(record.value or b"")
    key = _lead_key(lead.lead_id)
    stored = table.get(key)
    entry = unpack(stored) if stored is not None else nurture.new_entry(lead.lead_id)
    outcome = nurture.observe(entry, lead, rules, now)
    file_due(table, record.message.partition, entry)
    packed = pack(entry)
    if packed != stored:  # a snapshot that changes nothing here (a new score) writes nothing
        table[key] = packed
    _emit(out, topics, outcome)


def tick_step(
    partition: int,
    table: Table,
    out: Outputs,
    *,
    topics: Topics,
    rules: NurtureRules,
    now: datetime,
) -> int:
    """Fire every lead of the partition due by `now`; returns how many were fired."""
    now_minute, now_ms = _minute(now), _ms(now)
    fired = 0
    for day in [d for d in table.get(_days_key(partition)) or [] if d <= now_minute[:10]]:
        minutes = table.get(_minutes_key(partition, day)) or []
        due_minutes = [m for m in minutes if m <= now_minute]
        for minute in due_minutes:
            for shard in range(DUE_SHARDS):
                for lead_id, due_ms in table.get(f"due|{partition}|{minute}|{shard}") or []:
                    if due_ms > now_ms:
                        continue  # later in its minute: a later tick
                    key = _lead_key(lead_id)
                    stored = table.get(key)
                    if stored is None:
                        continue
                    entry = unpack(stored)
                    outcome = nurture.fire(entry, rules, now)
                    fired += 1
                    file_due(table, partition, entry)
                    packed = pack(entry)
                    if packed != stored:
                        table[key] = packed
                    _emit(out, topics, outcome)
        if due_minutes:
            _drop_empty_minutes(table, partition, day, due_minutes)
    return fired


def _drop_empty_minutes(table: Table, partition: int, day: str, looked: list[str]) -> None:
    """Forget the minutes (and the day) a tick emptied; filing may have added some since."""
    minutes = table.get(_minutes_key(partition, day)) or []
    still = [
        m
        for m in minutes
        if m not in looked or any(table.get(f"due|{partition}|{m}|{s}") for s in range(DUE_SHARDS))
    ]
    if still == minutes:
        return
    if still:
        table[_minutes_key(partition, day)] = still
        return
    table.pop(_minutes_key(partition, day), None)
    days = [d for d in table.get(_days_key(partition)) or [] if d != day]
    if days:
        table[_days_key(partition)] = days
    else:
        table.pop(_days_key(partition), None)


def forget_step(
    lead_id: str, partition: int, table: Table, out: Outputs, *, topics: Topics, now: datetime
) -> None:
    key = _lead_key(lead_id)
    stored = table.get(key)
    # No entry yet: still a tombstone, for a snapshot that may be on its way.
    entry = unpack(stored) if stored is not None else nurture.new_entry(lead_id)
    outcome = nurture.forget(entry, now)
    file_due(table, partition, entry)
    table[key] = pack(entry)  # a tombstone: no data of the person, only "erased"
    _emit(out, topics, outcome)


def pack(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as stored: empty fields left out (most leads run no sequence)."""
    return {k: v for k, v in entry.items() if k == "lead_id" or v not in (None, [], {}, False)}


def unpack(stored: dict[str, Any]) -> dict[str, Any]:
    """A working copy of a stored entry, every field present. A copy: the stored value
    is the staged table's, which a step never changes in place."""
    entry = nurture.new_entry(stored["lead_id"])
    entry.update(orjson.loads(orjson.dumps(stored)))
    return entry


def nurture_step(
    record: Any,
    table: Table,
    out: Outputs,
    *,
    topics: Topics,
    rules: NurtureRules,
    now: datetime,
) -> None:
    """One record of either input topic."""
    try:
        if record.message.topic == topics.leads_identified:
            observe_step(record, table, out, topics=topics, rules=rules, now=now)
            return
        command = NURTURE_COMMAND.validate_json(record.value or b"")
    except (BadRecordError, ValidationError, ValueError) as exc:
        out.dead_letter(topics.dlq(STEP), STEP, record, exc)
        return
    if isinstance(command, NurtureTick):
        tick_step(record.message.partition, table, out, topics=topics, rules=rules, now=command.now)
    elif isinstance(command, NurtureForget):
        forget_step(command.lead_id, record.message.partition, table, out, topics=topics, now=now)


def register(app: faust.App, topics: Topics, settings: Settings, rules: NurtureRules) -> Any:
    source = app.topic(
        topics.leads_identified,
        topics.nurture_commands,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    commands = raw_topic(app, topics.nurture_commands)
    table = json_table(app, "nurture_state", settings)

    def one(record: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        nurture_step(record, staged, out, topics=topics, rules=rules, now=datetime.now(UTC))

    async def follow_up(stream: Any) -> None:
        await run_batches(app, stream, settings, one, table)

    async def tick() -> None:
        # Every worker ticks every partition; the partition's owner fires what is due,
        # and a second tick of the same minute finds nothing left.
        value = NurtureTick(now=datetime.now(UTC)).model_dump_json().encode()
        for partition in range(settings.kafka.partitions):
            await commands.send(key=None, value=value, partition=partition)

    app.timer(interval=settings.nurture.tick_interval_s)(tick)
    return app.agent(source, name=STEP, concurrency=1)(follow_up)
