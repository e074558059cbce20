"""Read-side queries over the tables the writer fills. Parameters are bound, never pasted.

Reads use FINAL so a lead that landed twice (a retried batch cut differently)
is still one lead.
"""

from __future__ import annotations

from typing import Any

from sinks.clickhouse import nurture
from sinks.clickhouse.client import ClickHouse

LEAD_COLUMNS = (
    "lead_id", "version", "email", "phone", "full_name", "company", "title", "country",
    "company_size", "industry", "first_touch_channel", "first_touch_source",
    "first_touch_medium", "first_touch_campaign", "last_touch_source", "touch_count", "score",
    "grade", "team", "owner", "owner_name", "assignment_rule", "assignment_reason",
    "merged_from", "touch_event_ids", "event_id", "first_seen", "updated_at", "mql_at",
    "assigned_at", "accepted_at", "phone_extension", "stage", "stage_at", "note_texts",
    "note_sources", "note_at", "warnings", "rule_score", "fit_probability", "model_version",
)  # fmt: skip


def _with_notes(lead: dict[str, Any]) -> dict[str, Any]:
    """The parallel note columns as one list of {source, at, text}, oldest first."""
    lead["notes"] = [
        {"source": source, "at": at, "text": text}
        for text, source, at in zip(
            lead.pop("note_texts"), lead.pop("note_sources"), lead.pop("note_at"), strict=True
        )
    ]
    return lead


async def find_leads(
    clickhouse: ClickHouse,
    *,
    email: str | None = None,
    phone: str | None = None,
    lead_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Current leads (merged ones excluded) matching every given filter, newest first.

    An email or phone matches any address the person ever used; a lead id also
    finds a lead merged into another, which answers with its survivor.
    """
    where: list[str] = ["merged_into = ''"]
    params: dict[str, Any] = {"limit": limit}
    if email is not None:
        where.append("has(emails, {email:String})")
        params["email"] = email
    if phone is not None:
        where.append("has(phones, {phone:String})")
        params["phone"] = phone
    if lead_id is not None:
        where.append("(lead_id = {lead_id:String} OR has(merged_from, {lead_id:String}))")
        params["lead_id"] = lead_id
    rows = await clickhouse.query(
        f"SELECT {', '.join(LEAD_COLUMNS)} FROM {clickhouse.database}.leads FINAL "
        f"WHERE {' AND '.join(where)} "
        "ORDER BY first_seen DESC, lead_id LIMIT {limit:UInt32}",
        params,
    )
    return [_with_notes(row) for row in rows]


async def lead_merges(clickhouse: ClickHouse, lead_id: str) -> list[dict[str, Any]]:
    """Every merge into this lead: which lead, by which rule, with what score."""
    return await clickhouse.query(
        "SELECT survivor_id, merged_id, rule, score, event_id, merged_at "
        f"FROM {clickhouse.database}.lead_merges FINAL "
        "WHERE survivor_id = {lead_id:String} AND unmerged_at IS NULL ORDER BY merged_at",
        {"lead_id": lead_id},
    )


async def assignments(clickhouse: ClickHouse, lead_ids: list[str]) -> list[dict[str, Any]]:
    """Every routing decision about these leads (a person's lead and the leads merged into
    it), oldest first: team, owner, rule, reason, score."""
    return await clickhouse.query(
        "SELECT lead_id, assignment_id, team, owner, owner_name, rule, reason, assigned_at, "
        f"score, grade FROM {clickhouse.database}.assignments FINAL "
        "WHERE lead_id IN {ids:Array(String)} ORDER BY assigned_at, assignment_id",
        {"ids": lead_ids},
    )


async def count_leads(clickhouse: ClickHouse) -> int:
    rows = await clickhouse.query(
        f"SELECT count() AS n FROM {clickhouse.database}.leads FINAL WHERE merged_into = ''"
    )
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


async def explain_lead(clickhouse: ClickHouse, lead_id: str) -> dict[str, Any] | None:
    """Why a lead is what it is: merges (rule, score), score rules, routing decision, touches.

    A merged lead id is followed to its survivor; `requested_id` keeps the one asked for.
    """
    db = clickhouse.database
    current = lead_id
    for _ in range(10):  # merge chains are short; the bound only guards against a cycle
        rows = await clickhouse.query(
            "SELECT lead_id, merged_into, merged_from, email, phone, full_name, company, "
            "company_key, title, country, company_size, industry, score, grade, score_rules, "
            "mql_at, team, owner, owner_name, assignment_rule, assignment_reason, assigned_at, "
            "accepted_at, phone_extension, stage, stage_at, stage_reason, note_texts, "
            "note_sources, note_at, warnings, suggested_lead_ids, suggested_rules, "
            "suggested_scores, rule_score, fit_probability, model_version, fit_factors, "
            "touch_event_ids, touch_channels, touch_sources, touch_at, first_seen, updated_at "
            f"FROM {db}.leads FINAL WHERE lead_id = {{lead_id:String}}",
            {"lead_id": current},
        )
        if not rows:
            # A lead merged at first sight never had a row: its merge names the survivor.
            merged = await clickhouse.query(
                f"SELECT survivor_id FROM {db}.lead_merges FINAL "
                "WHERE merged_id = {lead_id:String} AND unmerged_at IS NULL LIMIT 1",
                {"lead_id": current},
            )
            if not merged:
                return None
            current = merged[0]["survivor_id"]
            continue
        lead = rows[0]
        if not lead["merged_into"]:
            break
        current = lead["merged_into"]
    else:
        return None
    touches = [
        {"event_id": e, "channel": c, "source": s, "at": a}
        for e, c, s, a in zip(
            lead.pop("touch_event_ids"),
            lead.pop("touch_channels"),
            lead.pop("touch_sources"),
            lead.pop("touch_at"),
            strict=True,
        )
    ]
    score_rules = lead.pop("score_rules")
    _with_notes(lead)
    suggested = [
        {"lead_id": other, "rule": rule, "score": score}
        for other, rule, score in zip(
            lead.pop("suggested_lead_ids"),
            lead.pop("suggested_rules"),
            lead.pop("suggested_scores"),
            strict=True,
        )
    ]
    return {
        "requested_id": lead_id,
        "lead": lead,
        "merges": await lead_merges(clickhouse, current),
        "score": {
            "score": lead["score"],
            "grade": lead["grade"],
            "mql_at": lead["mql_at"],
            "rules": dict(sorted(score_rules.items(), key=lambda kv: -abs(kv[1]))),
            "rule_score": lead.pop("rule_score"),
            # The learned part (docs/scoring.md): None while the rules score alone.
            "fit_probability": lead.pop("fit_probability"),
            "model_version": lead.pop("model_version"),
            "fit_factors": dict(
                sorted(lead.pop("fit_factors").items(), key=lambda kv: -abs(kv[1]))
            ),
        },
        "routing": {
            k: lead[k]
            for k in (
                "team",
                "owner",
                "owner_name",
                "assignment_rule",
                "assignment_reason",
                "assigned_at",
            )
        },
        "assignments": await assignments(clickhouse, [current, *lead["merged_from"]]),
        "nurture": await nurture.lead_history(clickhouse, [current]),
        "touches": touches,
        "notes": lead.pop("notes"),
        "warnings": lead.pop("warnings"),
        "suggested_duplicates": suggested,
        "stage": {k: lead[k] for k in ("stage", "stage_at", "stage_reason")},
    }
