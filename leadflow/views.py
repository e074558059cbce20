"""Terminal renderings for people: tables and panels built from API answers."""

from __future__ import annotations

from typing import Any

from rich.panel import Panel
from rich.table import Table

LEAD_TABLE_COLUMNS = {
    "email": "email", "phone": "phone", "full_name": "name", "company": "company",
    "country": "country", "first_touch_source": "source", "touch_count": "touches",
    "score": "score", "grade": "grade", "team": "team", "owner": "owner",
}  # fmt: skip


def lead_table(leads: list[dict[str, Any]], title: str) -> Table:
    """Leads as a table: who, where from, how hot, whose."""
    table = Table(title=title)
    for header in LEAD_TABLE_COLUMNS.values():
        table.add_column(header, overflow="fold")
    for lead in leads:
        table.add_row(*(_text(lead.get(column)) for column in LEAD_TABLE_COLUMNS))
    return table


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def explain_panels(answer: dict[str, Any]) -> list[Panel | Table]:
    """`leadflow explain`: the person, the merges, the score and the routing decision."""
    lead = answer["lead"]
    who = " · ".join(
        _text(lead.get(k)) for k in ("full_name", "company", "email", "phone") if lead.get(k)
    )
    heading = f"lead {lead['lead_id']}"
    if answer["requested_id"] != lead["lead_id"]:
        heading += f" (you asked for {answer['requested_id']}, merged into it)"
    parts: list[Panel | Table] = [Panel(who or "(no name)", title=heading)]

    merges = Table(title="merged because")
    for column in ("merged lead", "rule", "score", "at"):
        merges.add_column(column)
    for merge in answer["merges"]:
        merges.add_row(
            merge["merged_id"], merge["rule"], f"{merge['score']:g}", _text(merge["merged_at"])
        )
    if not answer["merges"]:
        merges.add_row("(none: no other lead matched this person)", "", "", "")
    parts.append(merges)

    score = answer["score"]
    scored = Table(
        title=f"score {score['score']:g}, grade {score['grade']}"
        + (f", MQL since {score['mql_at']}" if score.get("mql_at") else "")
    )
    scored.add_column("rule")
    scored.add_column("points", justify="right")
    for rule, points in score["rules"].items():
        scored.add_row(rule, f"{points:+g}")
    parts.append(scored)

    routing = answer["routing"]
    owner = routing["owner_name"] or routing["owner"] or "-"
    parts.append(
        Panel(
            f"team {routing['team'] or '-'} → {owner}\n"
            f"rule: {routing['assignment_rule'] or '-'}\n"
            f"why: {routing['assignment_reason'] or '-'}",
            title="routing",
        )
    )

    touches = Table(title="touches")
    for column in ("at", "channel", "source", "event"):
        touches.add_column(column)
    for touch in answer["touches"]:
        touches.add_row(_text(touch["at"]), touch["channel"], touch["source"], touch["event_id"])
    parts.append(touches)
    return parts
