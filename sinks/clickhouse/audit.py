"""The audit log: every erasure and every read of personal data, with who did it.

Rows go to `audit_log` (migration 0007). Who is the API key of the request
(its principal, set by the access middleware): its id and name,
never the key; `''` when a request carries none. What is described without
personal data: an email, phone or lead id is stored as its salted hash
(`leadflow.suppression.identifier_hash`, the same the suppression list uses), so
an auditor who knows an identifier finds its rows by hashing it
(`GET /v1/audit?identifier=…`), and an erasure leaves nothing readable here.

A read is recorded before its answer leaves: when the row cannot be written,
the read fails instead of going unrecorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import orjson
from aiohttp import web

from leadflow.http_shared import principal_of
from leadflow.suppression import identifier_hash
from sinks.clickhouse.client import ClickHouse

TABLE = "audit_log"
Action = Literal[
    "erase",
    "erase_dry_run",
    "read_leads",
    "read_explain",
    "read_dead_letters",
    "read_duplicates",
    "merge",
    "unmerge",
]
ACTIONS: tuple[Action, ...] = get_args(Action)
COLUMNS = [
    "audit_id", "at", "key_id", "key_name", "action", "route", "target", "lead_hashes", "rows",
    "detail",
]  # fmt: skip


@dataclass(frozen=True)
class Actor:
    """Who acted: an API key's id and name; both empty for a request without a key."""

    key_id: str = ""
    key_name: str = ""

    @classmethod
    def of(cls, request: web.Request) -> Actor:
        """The actor of a request: its principal, which the access middleware sets."""
        principal = principal_of(request) or request.get("principal")
        return cls(
            key_id=str(getattr(principal, "key_id", "") or ""),
            key_name=str(getattr(principal, "name", "") or ""),
        )


def hashed(value: str) -> str:
    """How an identifier appears in the log: `h:` and its salted hash."""
    return "h:" + identifier_hash(value)


def describe(**parts: str | int | None) -> str:
    """A target as `name=value` pairs in a stable order, the unset ones left out."""
    return " ".join(f"{k}={v}" for k, v in sorted(parts.items()) if v is not None)


async def record(
    clickhouse: ClickHouse,
    actor: Actor,
    action: Action,
    *,
    route: str = "",
    target: str = "",
    lead_ids: Iterable[str] = (),
    rows: int = 0,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> str:
    """Write one audit row; its id. `lead_ids` are stored hashed."""
    audit_id = str(uuid.uuid4())
    row = [
        audit_id,
        at or datetime.now(UTC),
        actor.key_id,
        actor.key_name,
        action,
        route,
        target,
        sorted({hashed(lead) for lead in lead_ids if lead}),
        max(0, rows),
        orjson.dumps(dict(detail or {}), option=orjson.OPT_SORT_KEYS).decode(),
    ]
    await clickhouse.insert(TABLE, [row], COLUMNS)
    return audit_id


async def entries(
    clickhouse: ClickHouse,
    *,
    action: str | None = None,
    key_id: str | None = None,
    identifier: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows, newest first, matching every given filter.

    `identifier` (an email, an E.164 phone or a lead id) is hashed and found
    in the rows' targets and lead hashes.
    """
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if action is not None:
        where.append("action = {action:String}")
        params["action"] = action
    if key_id is not None:
        where.append("key_id = {key_id:String}")
        params["key_id"] = key_id
    if identifier is not None:
        where.append("(position(target, {needle:String}) > 0 OR has(lead_hashes, {needle:String}))")
        params["needle"] = hashed(identifier)
    if start is not None:
        where.append("at >= {start:DateTime64(3, 'UTC')}")
        params["start"] = start
    if end is not None:
        where.append("at < {end:DateTime64(3, 'UTC')}")
        params["end"] = end
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = await clickhouse.query(
        f"SELECT {', '.join(COLUMNS)} FROM {clickhouse.database}.{TABLE} {clause} "
        "ORDER BY at DESC, audit_id LIMIT {limit:UInt32}",
        params,
    )
    for row in rows:
        row["detail"] = orjson.loads(row["detail"] or "{}")
    return rows
