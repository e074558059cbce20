"""`leadflow bench queries`: funnel and pipeline from the views vs from the raw fact table.

Generates leads and transitions straight into a fresh embedded ClickHouse
(through the same migrations and views the product uses), then times each
question both ways in the same run and checks that both give the same
answer. Figures are printed and written as JSON; nothing is asserted on time.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from leadflow.rules import load_rules
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.funnel import activity_funnel, sync_stage_definitions
from sinks.clickhouse.migrations import migrate

START = "2026-01-01 00:00:00"
ViewQuery = Callable[[ClickHouse], Awaitable[list[dict[str, Any]]]]


def _generate_sql(db: str, leads: int) -> str:
    """Transitions for `leads` leads: lead n walks the first 8 to 12 stages (10 on average)."""
    per_lead = 12
    return f"""
        INSERT INTO {db}.lead_transitions
            (transition_id, lead_id, deal_id, from_stage, to_stage, event_time, ingest_time,
             owner, team, channel, source, campaign, score, amount, currency, reason)
        SELECT
            concat('t', toString(n)) AS transition_id,
            concat('lead-', toString(lead)) AS lead_id,
            if(step >= 7, concat('deal-', toString(lead)), '') AS deal_id,
            if(step = 0, '', stages[step]) AS from_stage,
            stages[step + 1] AS to_stage,
            toDateTime64('{START}', 3, 'UTC')
                + toIntervalSecond(lead * 25 + step * 86400) AS event_time,
            event_time AS ingest_time,
            ['carol.d', 'dan.o', 'liu.yang', 'chen.jing', 'wang.li'][lead % 5 + 1] AS owner,
            ['global_inbound', 'china_inbound', 'china_enterprise'][lead % 3 + 1] AS team,
            ['web', 'social', 'tradeshow', 'call'][lead % 4 + 1] AS channel,
            ['google', 'baidu', 'linkedin', 'douyin', 'xiaohongshu', 'direct'][lead % 6 + 1]
                AS source,
            concat('campaign-', toString(lead % 20)) AS campaign,
            toFloat32(lead % 100) AS score,
            if(step >= 7, toFloat64(1000 + lead % 9000), 0) AS amount,
            if(step >= 7, 'CNY', '') AS currency,
            '' AS reason
        FROM (
            SELECT number AS n, intDiv(number, {per_lead}) AS lead,
                   number % {per_lead} AS step,
                   ['new', 'assigned', 'contacted', 'nurturing', 'mql', 'sql', 'converted',
                    'qualification', 'demo', 'proposal', 'negotiation', 'won'] AS stages
            FROM numbers({leads * per_lead})
        )
        WHERE step < 8 + (lead * 7919) % 5
    """


async def _timed(run: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    """Median milliseconds over `repeat` runs (after one warm-up), and the answer."""
    answer = await run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), answer


async def run_query_bench(leads: int, repeat: int, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="leadflow-bench-") as folder:
        clickhouse = ClickHouse(f"chdb://{folder}", "bench")
        try:
            await migrate(clickhouse)
            await sync_stage_definitions(clickhouse, load_rules().stages)
            db = clickhouse.database
            with console.status(
                f"generating {leads:,} leads and about {10 * leads:,} "
                "transitions (through the views) ..."
            ):
                started = time.perf_counter()
                await clickhouse.command(_generate_sql(db, leads))
                # Merged parts, as background merges leave them in steady state.
                for name in (
                    "lead_transitions",
                    "funnel_daily",
                    "funnel_monthly",
                    "pipeline_current",
                ):
                    await clickhouse.command(f"OPTIMIZE TABLE {db}.{name} FINAL")
                load_s = time.perf_counter() - started
            rows = (await clickhouse.query(f"SELECT count() AS n FROM {db}.lead_transitions"))[0][
                "n"
            ]
            questions = _questions(db)
            results: list[dict[str, Any]] = []
            for name, from_view, from_raw in questions:
                ask_view = (
                    partial(clickhouse.query, from_view)
                    if isinstance(from_view, str)
                    else partial(from_view, clickhouse)
                )
                view_ms, view_answer = await _timed(ask_view, repeat)
                raw_ms, raw_answer = await _timed(partial(clickhouse.query, from_raw), repeat)
                results.append(
                    {
                        "question": name,
                        "view_ms": round(view_ms, 1),
                        "raw_ms": round(raw_ms, 1),
                        "speedup": round(raw_ms / view_ms, 1) if view_ms else None,
                        "same_answer": _canonical(view_answer) == _canonical(raw_answer),
                    }
                )
        finally:
            await clickhouse.close()
    report = {
        "leads": leads,
        "transitions": int(rows),
        "load_seconds": round(load_s, 1),
        "repeat": repeat,
        "results": results,
    }
    table = Table(
        title=f"queries over {int(rows):,} transitions of {leads:,} leads "
        f"(median of {repeat}; loaded in {load_s:.0f} s)"
    )
    for column in (
        "question",
        "from the view (ms)",
        "from lead_transitions (ms)",
        "speed-up",
        "same answer",
    ):
        table.add_column(column, justify="left" if column == "question" else "right")
    for r in results:
        table.add_row(
            r["question"],
            f"{r['view_ms']:.1f}",
            f"{r['raw_ms']:.1f}",
            f"{r['speedup']}×",
            "yes" if r["same_answer"] else "NO",
        )
    console.print(table)
    return report


def _canonical(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        tuple(round(v, 2) if isinstance(v, float) else v for v in row.values()) for row in rows
    )


async def _product_activity_funnel(clickhouse: ClickHouse) -> list[dict[str, Any]]:
    """The activity funnel as leadflow answers it: edge days from funnel_daily, March whole."""
    answer = await activity_funnel(
        clickhouse, datetime(2026, 2, 25, tzinfo=UTC), datetime(2026, 4, 4, tzinfo=UTC)
    )
    return [{"stage": r["stage"], "leads": r["leads"]} for r in answer["rows"]]


def _questions(db: str) -> list[tuple[str, str | ViewQuery, str]]:
    month = "month = '2026-03-01'"
    raw_month = (
        "event_time >= toDateTime64('2026-03-01', 3, 'UTC') "
        "AND event_time < toDateTime64('2026-04-01', 3, 'UTC')"
    )
    return [
        (
            "leads entering each stage in March",
            f"SELECT stage, uniqExactMerge(leads) AS leads FROM {db}.funnel_monthly "
            f"WHERE {month} GROUP BY stage",
            f"SELECT to_stage AS stage, uniqExact(lead_id) AS leads "
            f"FROM {db}.lead_transitions FINAL WHERE {raw_month} GROUP BY stage",
        ),
        (
            "the same, by source",
            f"SELECT source, stage, uniqExactMerge(leads) AS leads FROM {db}.funnel_monthly "
            f"WHERE {month} GROUP BY source, stage",
            f"SELECT source, to_stage AS stage, uniqExact(lead_id) AS leads "
            f"FROM {db}.lead_transitions FINAL WHERE {raw_month} GROUP BY source, stage",
        ),
        (
            "leads entering each stage, 25 Feb - 3 Apr (leadflow's query)",
            _product_activity_funnel,
            f"SELECT to_stage AS stage, uniqExact(lead_id) AS leads "
            f"FROM {db}.lead_transitions FINAL WHERE event_time >= toDateTime64('2026-02-25', 3, "
            f"'UTC') AND event_time < toDateTime64('2026-04-04', 3, 'UTC') GROUP BY stage",
        ),
        (
            "pipeline now: leads and amount per stage",
            f"SELECT stage, count() AS leads, sum(amount) AS amount "
            f"FROM {db}.pipeline_current FINAL GROUP BY stage",
            f"SELECT stage, count() AS leads, sum(amount) AS amount FROM ("
            f"SELECT lead_id, argMax(to_stage, event_time) AS stage, "
            f"argMax(amount, event_time) AS amount FROM {db}.lead_transitions FINAL "
            f"GROUP BY lead_id) GROUP BY stage",
        ),
        (
            "pipeline now, by owner",
            f"SELECT owner, stage, count() AS leads FROM {db}.pipeline_current FINAL "
            f"GROUP BY owner, stage",
            f"SELECT owner, stage, count() AS leads FROM ("
            f"SELECT lead_id, argMax(owner, event_time) AS owner, "
            f"argMax(to_stage, event_time) AS stage FROM {db}.lead_transitions FINAL "
            f"GROUP BY lead_id) GROUP BY owner, stage",
        ),
    ]


def bench_queries(leads: int, repeat: int, out: Path | None, console: Console) -> dict[str, Any]:
    report = asyncio.run(run_query_bench(leads, repeat, console))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"figures written to {out}")
    return report


def _write_badge_csv(path: Path, rows: int) -> None:
    """A trade-show export: Chinese headers, a title row, 10% repeated rows, a few bad ones."""
    given = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳"]
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["CIIE 2026 badge scans"])
        writer.writerow(["姓名", "手机", "邮箱", "公司", "职位"])
        for n in range(rows):
            m = n - 7 if n % 10 == 9 else n  # every tenth row repeats an earlier one
            phone = f"13{m % 10}{10_000_000 + m % 89_999_999:08d}"
            email = f"user{m}@corp{m % 97}.example.cn" if m % 50 else "not-an-email"
            writer.writerow(
                [
                    f"王{given[m % 8]}{m}",
                    phone,
                    email,
                    f"公司{m % 997}有限公司",
                    "销售总监" if m % 3 else "工程师",
                ]
            )


def bench_upload(rows: int, console: Console, out: Path | None) -> dict[str, Any]:
    """Upload a generated CSV to the project's own broker, beside a bare csv.reader pass."""
    from leadflow_tools.broker.local import LocalKafka, free_port

    with tempfile.TemporaryDirectory(prefix="leadflow-bench-upload-") as folder:
        path = Path(folder) / "scans.csv"
        with console.status(f"writing a {rows:,}-row CSV ..."):
            _write_badge_csv(path, rows)
        started = time.perf_counter()
        with path.open(newline="", encoding="utf-8") as stream:
            bare_rows = sum(1 for _ in csv.reader(stream))
        bare_s = time.perf_counter() - started
        broker = LocalKafka(Path(folder) / "kafka", port=free_port(), controller_port=free_port())
        with console.status("starting a broker for the run ..."):
            broker.start()
        try:
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP": broker.bootstrap,
                "KAFKA_TOPIC_PREFIX": "bench.",
                "LEADFLOW_DATA_DIR": folder,
            }
            started = time.perf_counter()
            with console.status(f"leadflow upload of {rows:,} rows ..."):
                result = subprocess.run(
                    [sys.executable, "-m", "leadflow", "upload", str(path), "--event", "bench"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
            upload_s = time.perf_counter() - started
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        finally:
            broker.stop()
    if result.returncode != 0:
        raise RuntimeError(f"upload failed:\n{result.stdout}{result.stderr}")
    report = {
        "rows": rows,
        "file_rows": bare_rows,
        "bare_csv_reader_rows_per_s": round(bare_rows / bare_s),
        "upload_rows_per_s": round(rows / upload_s),
        "upload_seconds": round(upload_s, 1),
        "upload_peak_rss_mb": round(peak_kib / 1024, 1),
        "summary": result.stdout,
    }
    table = Table(title=f"leadflow upload of {rows:,} rows (one run, broker on this machine)")
    for column in ("measure", "value"):
        table.add_column(column)
    table.add_row("bare csv.reader pass", f"{report['bare_csv_reader_rows_per_s']:,} rows/s")
    table.add_row(
        "leadflow upload (parse, validate, publish acks=all)",
        f"{report['upload_rows_per_s']:,} rows/s",
    )
    table.add_row("upload process peak RSS", f"{report['upload_peak_rss_mb']} MB")
    console.print(table)
    console.print(result.stdout)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report
