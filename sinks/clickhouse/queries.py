"""Read-side queries over the tables the writer fills. Parameters are bound, never pasted.

Reads use FINAL so a lead that landed twice (a retried batch cut differently)
is still one lead.
"""

from __future__ import annotations

from typing import Any

from sinks.clickhouse.client import ClickHouse

LEAD_COLUMNS = (
    "lead_id",
    "event_id",
    "channel",
    "source_system",
    "email",
    "phone",
    "full_name",
    "company",
    "title",
    "country",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "form_id",
    "received_at",
    "normalized_at",
)


async def find_leads(
    clickhouse: ClickHouse,
    *,
    email: str | None = None,
    phone: str | None = None,
    lead_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Leads matching every given filter, newest first."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for column, value in (("email", email), ("phone", phone), ("lead_id", lead_id)):
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return await clickhouse.query(
        f"SELECT {', '.join(LEAD_COLUMNS)} FROM {clickhouse.database}.leads FINAL {clause} "
        "ORDER BY received_at DESC, lead_id LIMIT {limit:UInt32}",
        params,
    )


async def count_leads(clickhouse: ClickHouse) -> int:
    rows = await clickhouse.query(f"SELECT count() AS n FROM {clickhouse.database}.leads FINAL")
    return int(rows[0]["n"])


async def recent_dead_letters(
    clickhouse: ClickHouse, *, stage: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit}
    clause = ""
    if stage is not None:
        clause = "WHERE stage = {stage:String}"
        params["stage"] = stage
    return await clickhouse.query(
        "SELECT dead_letter_id, stage, reason, message, problems, source_topic, "
        "source_partition, source_offset, source_detail, failed_at "
        f"FROM {clickhouse.database}.dead_letters FINAL {clause} "
        "ORDER BY failed_at DESC LIMIT {limit:UInt32}",
        params,
    )
