"""Funnel and pipeline queries, answered from ClickHouse alone.

Definitions (docs/funnel.md has them with the SQL for analysts):

- Cohort funnel: the leads whose `new` transition falls in [start, end).
  A lead reaches stage S when, within `window_days` of entering, it has a
  transition to S (mode `any`: to S or any later stage, since forward moves
  may skip stages; mode `strict`: to every stage up to S in funnel order,
  each no earlier than the one before). Step conversion is reached(S) /
  reached(previous), cumulative is reached(S) / reached(new). Time between
  stages: the median and p90 of first-reached(S) − first-reached(previous),
  over leads that reached both.
- Activity funnel: leads that entered each stage during [start, end), from
  the `funnel_monthly` (whole months) and `funnel_daily` (the days around
  them) views.
- Pipeline: every lead's latest stage with its amount and the amount weighed
  by the stage's win probability; now from the `pipeline_current` view, as
  of a past time from `lead_transitions` (latest transition at or before it).
- Stagnation: open leads whose latest move is older than N days.

A lead found to be the same person as an earlier one moves to `merged`: it
leaves cohorts and the pipeline (its survivor carries on), while the
activity funnel still shows the record's own entries, and `merged` itself.

The breakdown dimension (`by`) is read from the lead's entry (channel,
source, campaign) or from its latest owner and team.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from leadflow.rules import MERGED, StageRules
from sinks.clickhouse.client import ClickHouse

Dimension = Literal["channel", "source", "campaign", "team", "owner"]
DIMENSIONS: tuple[Dimension, ...] = ("channel", "source", "campaign", "team", "owner")
CLOSED_ORDER = 1000


async def sync_stage_definitions(clickhouse: ClickHouse, stages: StageRules) -> None:
    """Write config/stages.yaml into `stage_definitions`, replacing what was there."""
    layout = clickhouse.layout
    table = layout.local("stage_definitions")
    await clickhouse.command(f"TRUNCATE TABLE IF EXISTS {table} {layout.on_cluster}")
    rows: list[list[Any]] = [[s.name, i, s.probability, 0] for i, s in enumerate(stages.stages)]
    rows += [[name, CLOSED_ORDER, 0.0, 1] for name in [*stages.closed, MERGED]]
    rows.append(["re_engaged", -1, 0.0, 0])
    await clickhouse.insert(
        "stage_definitions", rows, ["stage", "stage_order", "probability", "is_closed"]
    )


async def funnel_stages(clickhouse: ClickHouse) -> list[str]:
    rows = await clickhouse.query(
        f"SELECT stage FROM {clickhouse.database}.stage_definitions FINAL "
        "WHERE is_closed = 0 AND stage_order >= 0 ORDER BY stage_order"
    )
    return [r["stage"] for r in rows]


def _dimension(by: Dimension | None, table: str) -> str:
    """The breakdown column, qualified by the table alias that holds it."""
    if by is None:
        return "'all'"
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
    return f"{table}.{by}"


def _entries_sql(db: str) -> str:
    """Leads entering the cohort, with the dimensions of their entry and latest owner."""
    return f"""
        SELECT lead_id,
               minIf(event_time, to_stage = 'new') AS entered,
               argMinIf(channel, event_time, to_stage = 'new') AS channel,
               argMinIf(source, event_time, to_stage = 'new') AS source,
               argMinIf(campaign, event_time, to_stage = 'new') AS campaign,
               argMaxIf(team, event_time, team != '') AS team,
               argMaxIf(owner, event_time, owner != '') AS owner
        FROM {db}.lead_transitions FINAL
        GROUP BY lead_id
        HAVING countIf(to_stage = 'new') > 0 AND countIf(to_stage = 'merged') = 0
           AND entered >= {{start:DateTime64(3, 'UTC')}} AND entered < {{end:DateTime64(3, 'UTC')}}
    """


async def cohort_funnel(
    clickhouse: ClickHouse,
    start: datetime,
    end: datetime,
    *,
    mode: Literal["any", "strict"] = "any",
    window_days: int = 90,
    by: Dimension | None = None,
) -> dict[str, Any]:
    db = clickhouse.database
    stages = await funnel_stages(clickhouse)
    dim = _dimension(by, "e")
    params: dict[str, Any] = {"start": start, "end": end, "window_ms": window_days * 86_400_000}
    entries = _entries_sql(db)
    if mode == "any":
        levels = await clickhouse.query(
            f"""
            SELECT grp, level, count() AS leads FROM (
                SELECT e.lead_id, {dim} AS grp, max(d.stage_order) + 1 AS level
                FROM {db}.lead_transitions AS t FINAL
                INNER JOIN ({entries}) AS e ON e.lead_id = t.lead_id
                INNER JOIN {db}.stage_definitions AS d FINAL ON d.stage = t.to_stage
                WHERE d.is_closed = 0 AND d.stage_order >= 0
                  AND toUnixTimestamp64Milli(t.event_time)
                      <= toUnixTimestamp64Milli(e.entered) + {{window_ms:UInt64}}
                GROUP BY e.lead_id, grp)
            GROUP BY grp, level""",
            params,
        )
    else:
        for index, stage in enumerate(stages):
            params[f"s{index}"] = stage
        conditions = ", ".join(f"t.to_stage = {{s{i}:String}}" for i in range(len(stages)))
        levels = await clickhouse.query(
            f"""
            SELECT grp, level, count() AS leads FROM (
                SELECT e.lead_id, {dim} AS grp,
                       windowFunnel({{window_ms:UInt64}})(
                           toUInt64(toUnixTimestamp64Milli(t.event_time)), {conditions}) AS level
                FROM {db}.lead_transitions AS t FINAL
                INNER JOIN ({entries}) AS e ON e.lead_id = t.lead_id
                GROUP BY e.lead_id, grp)
            GROUP BY grp, level""",
            params,
        )
    timing = await clickhouse.query(
        f"""
        WITH reached AS (
            SELECT t.lead_id AS lead_id, {dim} AS grp, d.stage_order AS stage_order,
                   min(t.event_time) AS at
            FROM {db}.lead_transitions AS t FINAL
            INNER JOIN ({entries}) AS e ON e.lead_id = t.lead_id
            INNER JOIN {db}.stage_definitions AS d FINAL ON d.stage = t.to_stage
            WHERE d.is_closed = 0 AND d.stage_order >= 0
            GROUP BY lead_id, grp, stage_order)
        SELECT b.grp AS grp, b.stage_order AS stage_order,
               quantileExact(0.5)(dateDiff('second', a.at, b.at)) AS median_s,
               quantileExact(0.9)(dateDiff('second', a.at, b.at)) AS p90_s
        FROM reached AS a INNER JOIN reached AS b
          ON a.lead_id = b.lead_id AND b.stage_order = a.stage_order + 1
        GROUP BY grp, stage_order""",
        params,
    )
    return _funnel_table(stages, levels, timing, mode, by)


def _funnel_table(
    stages: list[str],
    levels: list[dict[str, Any]],
    timing: list[dict[str, Any]],
    mode: str,
    by: Dimension | None,
) -> dict[str, Any]:
    groups = sorted({str(row["grp"]) for row in levels})
    times = {(str(r["grp"]), int(r["stage_order"])): r for r in timing}
    rows = []
    for group in groups:
        reached = [0] * len(stages)
        for row in levels:
            if str(row["grp"]) == group:
                for index in range(min(int(row["level"]), len(stages))):
                    reached[index] += int(row["leads"])
        for index, stage in enumerate(stages):
            previous = reached[index - 1] if index else reached[0]
            timed = times.get((group, index))
            rows.append(
                {
                    "group": group,
                    "stage": stage,
                    "leads": reached[index],
                    "step_conversion": round(reached[index] / previous, 4) if previous else None,
                    "cumulative_conversion": round(reached[index] / reached[0], 4)
                    if reached[0]
                    else None,
                    "median_s_from_previous": None if timed is None else float(timed["median_s"]),
                    "p90_s_from_previous": None if timed is None else float(timed["p90_s"]),
                }
            )
    return {"mode": mode, "by": by, "stages": stages, "rows": rows}


def month_split(
    first: date, stop: date
) -> tuple[tuple[date, date], tuple[date, date], tuple[date, date]]:
    """[first, stop) as leading days, whole months, trailing days (each [from, to), maybe empty)."""
    month_in = date(first.year, first.month, 1)
    if month_in < first:
        month_in = date(month_in.year + month_in.month // 12, month_in.month % 12 + 1, 1)
    month_out = date(stop.year, stop.month, 1)
    if month_in >= month_out:
        return (first, stop), (stop, stop), (stop, stop)
    return (first, month_in), (month_in, month_out), (month_out, stop)


def _utc_day(moment: datetime) -> date:
    return (moment.astimezone(UTC) if moment.tzinfo else moment).date()


async def activity_funnel(
    clickhouse: ClickHouse, start: datetime, end: datetime, *, by: Dimension | None = None
) -> dict[str, Any]:
    """Leads entering each stage during [start, end) (whole UTC days), from the rollup views.

    Whole months come from `funnel_monthly`, the days around them from
    `funnel_daily`; the distinct-lead states of both merge into one exact count.
    """
    db = clickhouse.database
    dim = _dimension(by, "f")
    head, months, tail = month_split(_utc_day(start), _utc_day(end))
    dims = "channel, source, campaign, team, owner, stage, leads, amount"
    rows = await clickhouse.query(
        f"""
        SELECT {dim} AS grp, f.stage AS stage, uniqExactMerge(f.leads) AS leads,
               sumMerge(f.amount) AS amount
        FROM (
            SELECT {dims} FROM {db}.funnel_daily
            WHERE day >= {{head_from:Date}} AND day < {{head_to:Date}}
            UNION ALL
            SELECT {dims} FROM {db}.funnel_monthly
            WHERE month >= {{months_from:Date}} AND month < {{months_to:Date}}
            UNION ALL
            SELECT {dims} FROM {db}.funnel_daily
            WHERE day >= {{tail_from:Date}} AND day < {{tail_to:Date}}
        ) AS f
        GROUP BY grp, stage""",
        {
            "head_from": head[0],
            "head_to": head[1],
            "months_from": months[0],
            "months_to": months[1],
            "tail_from": tail[0],
            "tail_to": tail[1],
        },
    )
    stages = await funnel_stages(clickhouse)
    order = {s: i for i, s in enumerate(stages)}
    rows.sort(key=lambda r: (str(r["grp"]), order.get(r["stage"], CLOSED_ORDER), r["stage"]))
    return {
        "by": by,
        "rows": [
            {
                "group": str(r["grp"]),
                "stage": r["stage"],
                "leads": int(r["leads"]),
                "amount": float(r["amount"]),
            }
            for r in rows
        ],
    }


async def pipeline(
    clickhouse: ClickHouse, *, as_of: datetime | None = None, by: Dimension | None = None
) -> dict[str, Any]:
    """Count, amount and probability-weighted amount per stage: now, or as of a past time."""
    db = clickhouse.database
    dim = _dimension(by, "p")
    if as_of is None:
        source = f"SELECT * FROM {db}.pipeline_current FINAL"
        params: dict[str, Any] = {}
    else:
        source = f"""
            SELECT t.lead_id AS lead_id,
                   argMax(t.to_stage, (t.event_time, d.stage_order)) AS stage,
                   argMax(t.amount, (t.event_time, d.stage_order)) AS amount,
                   argMax(t.owner, (t.event_time, d.stage_order)) AS owner,
                   argMax(t.team, (t.event_time, d.stage_order)) AS team,
                   argMax(t.channel, (t.event_time, d.stage_order)) AS channel,
                   argMax(t.source, (t.event_time, d.stage_order)) AS source,
                   argMax(t.campaign, (t.event_time, d.stage_order)) AS campaign
            FROM {db}.lead_transitions AS t FINAL
            LEFT JOIN {db}.stage_definitions AS d FINAL ON d.stage = t.to_stage
            WHERE t.event_time <= {{as_of:DateTime64(3, 'UTC')}}
            GROUP BY t.lead_id"""
        params = {"as_of": as_of}
    rows = await clickhouse.query(
        f"""
        SELECT {dim} AS grp, p.stage AS stage, count() AS leads, sum(p.amount) AS amount,
               sum(p.amount * d.probability) AS weighted_amount,
               any(d.stage_order) AS stage_order
        FROM ({source}) AS p
        LEFT JOIN {db}.stage_definitions AS d FINAL ON d.stage = p.stage
        WHERE p.stage != 'merged'
        GROUP BY grp, stage
        ORDER BY grp, stage_order, stage""",
        params,
    )
    return {
        "as_of": as_of.isoformat() if as_of else None,
        "by": by,
        "rows": [
            {
                "group": str(r["grp"]),
                "stage": r["stage"],
                "leads": int(r["leads"]),
                "amount": round(float(r["amount"]), 2),
                "weighted_amount": round(float(r["weighted_amount"]), 2),
            }
            for r in rows
        ],
    }


async def stagnant(
    clickhouse: ClickHouse, *, days: int, now: datetime, limit: int = 100
) -> list[dict[str, Any]]:
    """Open leads whose latest move is older than `days` days, oldest first."""
    db = clickhouse.database
    return await clickhouse.query(
        f"""
        SELECT p.lead_id AS lead_id, p.stage AS stage, p.stage_at AS stage_at,
               p.owner AS owner, p.team AS team, p.amount AS amount,
               dateDiff('day', p.stage_at, {{now:DateTime64(3, 'UTC')}}) AS days_in_stage
        FROM {db}.pipeline_current AS p FINAL
        LEFT JOIN {db}.stage_definitions AS d FINAL ON d.stage = p.stage
        WHERE d.is_closed = 0 AND p.stage != 'won'
          AND p.stage_at < {{now:DateTime64(3, 'UTC')}} - toIntervalDay({{days:UInt32}})
        ORDER BY p.stage_at LIMIT {{limit:UInt32}}""",
        {"days": days, "now": now, "limit": limit},
    )
