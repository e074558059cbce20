"""Terminal renderings for people: tables and panels built from API answers."""

from __future__ import annotations

from typing import Any

from rich.panel import Panel
from rich.table import Table

LEAD_TABLE_COLUMNS = {
    "email": "email", "phone": "phone", "full_name": "name", "company": "company",
    "country": "country", "first_touch_source": "source", "touch_count": "touches",
    "score": "score", "grade": "grade", "stage": "stage", "team": "team", "owner": "owner",
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
    if score.get("fit_probability") is not None:
        learned = Table(
            title=f"learned: fit {100 * score['fit_probability']:.0f}% (model version "
            f"{score['model_version']}), rules {score['rule_score']:g}"
        )
        learned.add_column("feature")
        learned.add_column("weight (log-odds)", justify="right")
        for feature, weight in score.get("fit_factors", {}).items():
            learned.add_row(feature, f"{weight:+.2f}")
        parts.append(learned)

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

    if len(answer.get("assignments") or []) > 1:
        history = Table(title="routing history (assignments)")
        for column in ("at", "lead", "team", "owner", "rule", "why"):
            history.add_column(column, overflow="fold")
        for decision in answer["assignments"]:
            history.add_row(
                _text(decision["assigned_at"]),
                decision["lead_id"],
                decision["team"],
                decision["owner_name"] or decision["owner"],
                decision["rule"],
                decision["reason"],
            )
        parts.append(history)

    touches = Table(title="touches")
    for column in ("at", "channel", "source", "event"):
        touches.add_column(column)
    for touch in answer["touches"]:
        touches.add_row(_text(touch["at"]), touch["channel"], touch["source"], touch["event_id"])
    parts.append(touches)

    stage = answer.get("stage") or {}
    if stage.get("stage"):
        parts.append(
            Panel(
                f"{stage['stage']} since {_text(stage.get('stage_at'))}"
                + (f"\nwhy: {stage['stage_reason']}" if stage.get("stage_reason") else ""),
                title="stage",
            )
        )
    if answer.get("notes"):
        notes = Table(title="notes")
        for column in ("at", "from", "text"):
            notes.add_column(column, overflow="fold")
        for note in answer["notes"]:
            notes.add_row(_text(note["at"]), note["source"], note["text"])
        parts.append(notes)
    if answer.get("suggested_duplicates"):
        suggested = Table(title="suggested duplicates (not merged: an email or phone differs)")
        for column in ("lead", "rule", "score"):
            suggested.add_column(column)
        for other in answer["suggested_duplicates"]:
            suggested.add_row(other["lead_id"], other["rule"], f"{other['score']:g}")
        parts.append(suggested)
    if answer.get("warnings"):
        parts.append(Panel("\n".join(answer["warnings"]), title="left out on the way in"))
    return parts


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def funnel_table(answer: dict[str, Any], title: str) -> Table:
    """A funnel for people: leads per stage, a bar, conversion and time from the previous stage."""
    table = Table(title=title)
    rows = answer["rows"]
    columns = ["group"] if answer.get("by") else []
    columns += ["stage", "leads", ""]
    if rows and "step_conversion" in rows[0]:
        columns += ["step", "cumulative", "median from previous", "p90"]
    elif rows and "amount" in rows[0]:
        columns += ["amount"]
    for column in columns:
        table.add_column(
            column, justify="right" if column not in ("group", "stage", "") else "left"
        )
    widest = max((r["leads"] for r in rows), default=0) or 1
    for row in rows:
        bar = "█" * max(0, round(24 * row["leads"] / widest))
        cells = [row["group"]] if answer.get("by") else []
        cells += [row["stage"], str(row["leads"]), bar]
        if "step_conversion" in row:
            cells += [
                _percent(row["step_conversion"]),
                _percent(row["cumulative_conversion"]),
                _duration(row["median_s_from_previous"]),
                _duration(row["p90_s_from_previous"]),
            ]
        elif "amount" in row:
            cells.append(f"{row['amount']:,.2f}")
        table.add_row(*cells)
    return table


def pipeline_table(answer: dict[str, Any]) -> Table:
    """The pipeline for people: leads, amount and weighted amount per stage."""
    when = f"as of {answer['as_of']}" if answer.get("as_of") else "now"
    table = Table(title=f"pipeline {when}")
    columns = (["group"] if answer.get("by") else []) + [
        "stage",
        "leads",
        "amount",
        "weighted amount",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column in ("group", "stage") else "right")
    for row in answer["rows"]:
        cells = [row["group"]] if answer.get("by") else []
        cells += [
            row["stage"],
            str(row["leads"]),
            f"{row['amount']:,.2f}",
            f"{row['weighted_amount']:,.2f}",
        ]
        table.add_row(*cells)
    return table


_NURTURE_COLUMNS = (
    ("enrolled", "enrolled"), ("sent", "sent"), ("opened", "opened"), ("clicked", "clicked"),
    ("replied", "replied"), ("bounced", "bounced"), ("unsubscribed", "unsubscribed"),
    ("skipped", "skipped"), ("exited", "exited"), ("tasks", "task_created"),
    ("done", "task_done"),
)  # fmt: skip


def nurture_table(answer: dict[str, Any]) -> Table:
    """Each sequence's steps for people: leads per kind of event, with the open rate."""
    table = Table(title="nurture sequences: leads per step")
    table.add_column("sequence")
    table.add_column("step")
    for column, _ in _NURTURE_COLUMNS:
        table.add_column(column, justify="right")
    table.add_column("open rate", justify="right")
    for row in answer["rows"]:
        rate = _percent(row["opened"] / row["sent"]) if row["sent"] else ""
        cells = [str(row[key]) for _, key in _NURTURE_COLUMNS]
        table.add_row(row["sequence"], row["step"] or "(sequence)", *cells, rate)
    return table


def tasks_table(answer: dict[str, Any]) -> Table:
    """Each rep's call tasks: due, done on time, late (done late or missed), missed, open."""
    table = Table(title=f"call tasks per rep, as of {answer['as_of']}")
    for column in ("owner", "tasks", "due", "on time", "late", "missed", "open", ""):
        table.add_column(column, justify="left" if column in ("owner", "") else "right")
    for row in answer["rows"]:
        bar = "[green]" + "█" * row["on_time"] + "[/][red]" + "█" * row["late"] + "[/]"
        table.add_row(
            row["owner"] or "(no owner)",
            *(str(row[k]) for k in ("tasks", "due", "on_time", "late", "missed", "open")),
            bar if row["tasks"] <= 60 else "",
        )
    return table


def evaluation_table(answer: dict[str, Any]) -> Table:
    """The learned score per version or week: outcomes, AUC of the model and the rules."""
    by = answer["by"]
    table = Table(title=f"learned score, judged before learning, per {by}")
    for column in (by, "outcomes", "won", "model AUC", "rules AUC", "model log-loss"):
        table.add_column(column, justify="left" if column == by else "right")

    def num(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    for row in answer["rows"]:
        table.add_row(
            str(row[by])[:10],
            str(row["outcomes"]),
            str(row["won"]),
            num(row["model_auc"]),
            num(row["rules_auc"]),
            num(row["model_log_loss"]),
        )
    return table
