"""Queries over `nurture_events`: each sequence's step funnel and each rep's call tasks.

- `step_funnel`: per sequence and step, how many leads were enrolled, mailed,
  bounced, opened, clicked, replied, unsubscribed, skipped, and left (exited).
- `task_report`: per rep, the call tasks due by `as_of`, done on time, done
  late, and missed (not done and past due). A missed task counts as late too:
  the rep did not call in time, whether or not the call came later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sinks.clickhouse.client import ClickHouse

STEP_KINDS = (
    "enrolled",
    "sent",
    "bounced",
    "opened",
    "clicked",
    "replied",
    "unsubscribed",
    "skipped",
    "exited",
    "task_created",
    "task_done",
)


async def step_funnel(clickhouse: ClickHouse, sequence: str | None = None) -> list[dict[str, Any]]:
    """One row per (sequence, step): leads per kind of event. Enrolments and exits have
    no step; they are the sequence's row with step ``""``."""
    db = clickhouse.database
    counts = ",\n".join(f"uniqExactIf(lead_id, kind = '{kind}') AS {kind}" for kind in STEP_KINDS)
    where = "WHERE sequence = {sequence:String}" if sequence else ""
    return await clickhouse.query(
        f"""
        SELECT sequence, step, {counts}
        FROM {db}.nurture_events FINAL
        {where}
        GROUP BY sequence, step
        ORDER BY sequence, step""",
        {"sequence": sequence} if sequence else {},
    )


async def task_report(clickhouse: ClickHouse, as_of: datetime) -> list[dict[str, Any]]:
    """Per owner: tasks created, due by `as_of`, done on time, done late, missed, open."""
    db = clickhouse.database
    return await clickhouse.query(
        f"""
        SELECT c.owner AS owner,
               count() AS tasks,
               countIf(c.due_at <= {{as_of:DateTime64(3, 'UTC')}}) AS due,
               countIf(d.done_at IS NOT NULL AND d.done_at <= c.due_at) AS on_time,
               countIf(d.done_at IS NOT NULL AND d.done_at > c.due_at) AS done_late,
               countIf(d.done_at IS NULL AND c.due_at <= {{as_of:DateTime64(3, 'UTC')}})
                   AS missed,
               done_late + missed AS late,
               countIf(d.done_at IS NULL AND c.due_at > {{as_of:DateTime64(3, 'UTC')}}) AS open
        FROM (
            SELECT send_id, any(owner) AS owner, any(due_at) AS due_at
            FROM {db}.nurture_events FINAL
            WHERE kind = 'task_created'
              -- a task dropped without a call (its lead merged or erased) is no rep's miss
              AND send_id NOT IN (
                  SELECT send_id FROM {db}.nurture_events FINAL
                  WHERE kind = 'exited' AND send_id != ''
              )
            GROUP BY send_id
        ) AS c
        LEFT JOIN (
            SELECT send_id, min(at) AS done_at
            FROM {db}.nurture_events FINAL
            WHERE kind = 'task_done'
            GROUP BY send_id
        ) AS d USING send_id
        GROUP BY owner
        ORDER BY owner
        SETTINGS join_use_nulls = 1""",
        {"as_of": as_of},
    )


async def lead_history(clickhouse: ClickHouse, lead_ids: list[str]) -> list[dict[str, Any]]:
    """Everything nurture did for these leads, oldest first (for `explain`)."""
    db = clickhouse.database
    return await clickhouse.query(
        f"""
        SELECT lead_id, sequence, step, kind, at, owner, due_at, detail
        FROM {db}.nurture_events FINAL
        WHERE lead_id IN {{ids:Array(String)}}
        ORDER BY at, event_id""",
        {"ids": lead_ids},
    )
