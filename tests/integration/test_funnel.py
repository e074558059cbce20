"""Funnel and pipeline queries against a hand-computed fixture in the embedded engine."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from leadflow.kafka_clients import make_producer
from leadflow.rules import load_rules
from leadflow.settings import KafkaSettings
from schemas import CrmEvent, StageTransition, TransitionRow
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.funnel import (
    activity_funnel,
    cohort_funnel,
    pipeline,
    stagnant,
    sync_stage_definitions,
)
from tests.integration.processes import Stack, run_cli
from tests.keys import KEYS


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (lead, stage, time, channel, source, owner, amount)
FIXTURE = [
    ("A", "new", "2026-03-01 10:00", "web", "google", "", 0),
    ("A", "assigned", "2026-03-01 11:00", "web", "google", "carol.d", 0),
    ("A", "contacted", "2026-03-02 09:00", "web", "google", "carol.d", 0),
    ("A", "mql", "2026-03-05 09:00", "web", "google", "carol.d", 0),
    ("A", "sql", "2026-03-10 09:00", "web", "google", "carol.d", 0),
    ("A", "converted", "2026-03-15 09:00", "web", "google", "carol.d", 1000),
    ("A", "qualification", "2026-03-15 09:00", "web", "google", "carol.d", 1000),
    ("A", "demo", "2026-03-20 09:00", "web", "google", "carol.d", 1000),
    ("A", "won", "2026-04-10 09:00", "web", "google", "carol.d", 1000),
    ("B", "new", "2026-03-02 08:00", "web", "baidu", "", 0),
    ("B", "assigned", "2026-03-02 09:00", "web", "baidu", "liu.yang", 0),
    ("B", "lost", "2026-03-20 09:00", "web", "baidu", "liu.yang", 0),
    ("C", "new", "2026-03-03 08:00", "call", "call_center", "", 0),
    ("C", "mql", "2026-03-04 08:00", "call", "call_center", "dan.o", 0),
    ("C", "sql", "2026-03-06 08:00", "call", "call_center", "dan.o", 0),
    ("D", "new", "2026-04-02 08:00", "web", "google", "", 0),
    ("D", "assigned", "2026-04-02 09:00", "web", "google", "dan.o", 0),
]


def rows() -> list[list[object]]:
    made = []
    for n, (lead, stage, when, channel, source, owner, amount) in enumerate(FIXTURE):
        transition = StageTransition(
            transition_id=f"t{n}",
            lead_id=lead,
            from_stage="",
            to_stage=stage,
            event_time=at(when),
            ingest_time=at(when),
            owner=owner,
            channel=channel,
            source=source,
            amount=amount,
            currency="CNY" if amount else "",
        )
        made.append(TransitionRow.from_transition(transition).as_row())
    return made


@pytest.fixture
async def loaded(clickhouse: ClickHouse) -> ClickHouse:
    await sync_stage_definitions(clickhouse, load_rules().stages)
    await clickhouse.insert(
        "lead_transitions", rows(), TransitionRow.column_names(), dedup_token="fixture-1"
    )
    return clickhouse


def column(result: dict[str, object], name: str, group: str = "all") -> dict[str, object]:
    return {r["stage"]: r[name] for r in result["rows"] if r["group"] == group}  # type: ignore[index,union-attr]


async def test_cohort_funnel_any_order(loaded: ClickHouse) -> None:
    march = await cohort_funnel(loaded, at("2026-03-01 00:00"), at("2026-04-01 00:00"))
    assert column(march, "leads") == {
        "new": 3,
        "assigned": 3,
        "contacted": 2,
        "nurturing": 2,
        "mql": 2,
        "sql": 2,
        "converted": 1,
        "qualification": 1,
        "demo": 1,
        "proposal": 1,
        "negotiation": 1,
        "won": 1,
    }
    assert column(march, "step_conversion")["contacted"] == pytest.approx(2 / 3, abs=1e-3)
    assert column(march, "cumulative_conversion")["won"] == pytest.approx(1 / 3, abs=1e-3)
    # new → assigned took an hour for A and for B.
    assert column(march, "median_s_from_previous")["assigned"] == 3600


async def test_cohort_funnel_strict_order_and_window(loaded: ClickHouse) -> None:
    strict = await cohort_funnel(
        loaded, at("2026-03-01 00:00"), at("2026-04-01 00:00"), mode="strict"
    )
    leads = column(strict, "leads")
    assert (leads["new"], leads["assigned"], leads["contacted"], leads["nurturing"]) == (3, 2, 1, 0)
    short = await cohort_funnel(
        loaded, at("2026-03-01 00:00"), at("2026-04-01 00:00"), window_days=30
    )
    assert column(short, "leads")["won"] == 0  # A won 40 days after entering


async def test_funnel_by_source(loaded: ClickHouse) -> None:
    by_source = await cohort_funnel(
        loaded, at("2026-03-01 00:00"), at("2026-04-01 00:00"), by="source"
    )
    assert column(by_source, "leads", "google")["won"] == 1
    assert column(by_source, "leads", "baidu")["assigned"] == 1
    assert column(by_source, "leads", "call_center")["sql"] == 1


async def test_activity_funnel_from_the_view(loaded: ClickHouse) -> None:
    march = await activity_funnel(loaded, at("2026-03-01 00:00"), at("2026-04-01 00:00"))
    assert column(march, "leads") == {
        "new": 3,
        "assigned": 2,
        "contacted": 1,
        "mql": 2,
        "sql": 2,
        "converted": 1,
        "qualification": 1,
        "demo": 1,
        "lost": 1,
    }
    april = await activity_funnel(loaded, at("2026-04-01 00:00"), at("2026-05-01 00:00"))
    assert column(april, "leads") == {"new": 1, "assigned": 1, "won": 1}


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-03-02 00:00", "2026-04-03 00:00"),  # days, a whole month, days
        ("2026-03-01 00:00", "2026-05-01 00:00"),  # whole months only
        ("2026-03-02 00:00", "2026-03-20 00:00"),  # days inside one month
        ("2026-02-15 00:00", "2026-04-10 00:00"),
    ],
)
async def test_activity_funnel_over_any_range_matches_the_fact_table(
    loaded: ClickHouse, start: str, end: str
) -> None:
    from_views = await activity_funnel(loaded, at(start), at(end), by="source")
    raw = await loaded.query(
        f"SELECT source, to_stage AS stage, uniqExact(lead_id) AS leads "
        f"FROM {loaded.database}.lead_transitions FINAL "
        "WHERE toDate(event_time) >= toDate({s:DateTime64(3, 'UTC')}) "
        "AND toDate(event_time) < toDate({e:DateTime64(3, 'UTC')}) GROUP BY source, stage",
        {"s": at(start), "e": at(end)},
    )
    assert raw  # every range holds some moves
    assert {(r["group"], r["stage"]): r["leads"] for r in from_views["rows"]} == {
        (r["source"], r["stage"]): r["leads"] for r in raw
    }


async def test_pipeline_now_and_as_of_a_past_date(loaded: ClickHouse) -> None:
    end_of_march = await pipeline(loaded, as_of=at("2026-03-31 23:59"))
    assert column(end_of_march, "leads") == {"demo": 1, "lost": 1, "sql": 1}
    assert column(end_of_march, "weighted_amount")["demo"] == 250.0  # 1000 × 0.25
    now = await pipeline(loaded)
    assert column(now, "leads") == {"assigned": 1, "sql": 1, "won": 1, "lost": 1}
    assert column(now, "weighted_amount")["won"] == 1000.0
    by_owner = await pipeline(loaded, by="owner")
    assert column(by_owner, "leads", "dan.o") == {"sql": 1, "assigned": 1}


async def test_stagnant_open_leads(loaded: ClickHouse) -> None:
    stuck = await stagnant(loaded, days=14, now=at("2026-04-30 00:00"))
    assert [(r["lead_id"], r["stage"]) for r in stuck] == [("C", "sql"), ("D", "assigned")]


async def test_resending_the_same_events_changes_no_number(loaded: ClickHouse) -> None:
    before = (
        await cohort_funnel(loaded, at("2026-03-01 00:00"), at("2026-05-01 00:00")),
        await activity_funnel(loaded, at("2026-03-01 00:00"), at("2026-05-01 00:00")),
        await pipeline(loaded),
    )
    # Once with the same dedup token (a retried batch), once cut differently after a restart.
    await loaded.insert(
        "lead_transitions", rows(), TransitionRow.column_names(), dedup_token="fixture-1"
    )
    await loaded.insert(
        "lead_transitions", rows()[:5], TransitionRow.column_names(), dedup_token="fixture-2"
    )
    after = (
        await cohort_funnel(loaded, at("2026-03-01 00:00"), at("2026-05-01 00:00")),
        await activity_funnel(loaded, at("2026-03-01 00:00"), at("2026-05-01 00:00")),
        await pipeline(loaded),
    )
    assert after == before


NOTE = "<b>call</b> after 3pm\n想看演示"  # markup that must stay text on the page


@pytest.fixture
async def dashboard_stack(stack: Stack) -> Stack:
    """A running stack with three leads, one converted to a deal at `proposal`."""
    await play_three_leads(stack)
    return stack


async def play_three_leads(stack: Stack) -> None:
    for n, country in enumerate(("US", "CN", "GB")):
        fields = {"name": f"Lead {n}", "email": f"lead{n}@example.com", "country": country}
        if n == 1:
            fields["message"] = NOTE
        assert stack.post_json(fields)[0] == 202
    for _ in range(120):
        leads = stack.leads()["leads"]
        if len(leads) == 3 and all(lead["owner"] for lead in leads):
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError(stack.logs())
    winner = next(lead for lead in leads if lead["email"] == "lead0@example.com")
    now = datetime.now(UTC)
    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        for action, extra in (
            ("convert", {"amount": 50_000.0, "currency": "USD"}),
            ("set_stage", {"stage": "proposal"}),
        ):
            event = CrmEvent(
                event_id=f"crm-{action}",
                lead_id=winner["lead_id"],
                action=action,
                occurred_at=now,
                **extra,
            )  # type: ignore[arg-type]
            await producer.send_and_wait(
                stack.topics.events_crm,
                event.model_dump_json().encode(),
                key=winner["lead_id"].encode(),
            )
    finally:
        await producer.stop()

    for _ in range(120):
        _, piped = stack.http("GET", "/v1/pipeline")
        if any(r["stage"] == "proposal" for r in piped.get("rows", [])):
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError(f"{piped}\n{stack.logs()}")


async def test_funnel_and_pipeline_through_the_running_stack(dashboard_stack: Stack) -> None:
    stack = dashboard_stack
    day = datetime.now(UTC).date()
    query = f"from={day}&to={day + timedelta(days=1)}"
    _, piped = stack.http("GET", "/v1/pipeline")
    stages = {r["stage"]: r for r in piped["rows"]}
    assert stages["proposal"]["amount"] == 50_000.0
    assert stages["proposal"]["weighted_amount"] == 25_000.0
    status, funnel = stack.http("GET", f"/v1/funnel?{query}")
    assert status == 200
    reached = {r["stage"]: r["leads"] for r in funnel["rows"]}
    assert reached["new"] == 3
    assert reached["proposal"] == 1
    bad, answer = stack.http("GET", "/v1/funnel?from=yesterday&to=x")
    assert bad == 400
    assert "ISO" in answer["message"]

    table = await asyncio.to_thread(
        run_cli,
        "funnel",
        "--from",
        str(day),
        "--to",
        str(day + timedelta(days=1)),
        "--url",
        stack.base_url,
    )
    assert "cohort funnel (any order" in table
    assert "proposal" in table
    as_csv = await asyncio.to_thread(
        run_cli, "pipeline", "--format", "csv", "--url", stack.base_url
    )
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert {"stage": "proposal", "leads": "1"}.items() <= next(
        r for r in rows if r["stage"] == "proposal"
    ).items()


async def test_the_sql_recipes_in_the_docs_run(loaded: ClickHouse) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "funnel.md").read_text()
    recipes = re.findall(r"```sql\n(.*?)```", doc, flags=re.DOTALL)
    assert len(recipes) >= 5
    answers = []
    for recipe in recipes:
        sql = recipe.replace("leadflow.", f"{loaded.database}.").strip().rstrip(";")
        answers.append(await loaded.query(sql))
    cohort = {row["stage"]: row["leads"] for row in answers[0]}
    assert (cohort["new"], cohort["contacted"], cohort["won"]) == (3, 2, 1)
    assert all(answers), "every recipe returns rows on the fixture"


def render(url: str, screenshot: Path | None = None) -> str:
    """The page as headless Chromium leaves it after its scripts ran."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by `make test` (Debian package chromium)"
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--virtual-time-budget=15000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ]
    if screenshot is not None:
        subprocess.run(
            [*flags, "--window-size=1280,720", f"--screenshot={screenshot}", url],
            capture_output=True,
            check=True,
            timeout=120,
        )
    return subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def test_dashboard_renders_what_the_api_returns(dashboard_stack: Stack) -> None:
    day = datetime.now(UTC).date()
    query = f"from={day}&to={day + timedelta(days=1)}"
    locked = render(f"{dashboard_stack.base_url}/dashboard?{query}")
    assert 'data-loaded="error"' in locked  # the page holds no data without a key
    assert "read:analytics" in locked
    assert '<tr data-stage="new">' not in locked
    key = f"#key={KEYS['read:analytics']}"
    dom = render(f"{dashboard_stack.base_url}/dashboard?{query}{key}")
    assert 'data-loaded="yes"' in dom
    _, funnel = dashboard_stack.http("GET", f"/v1/funnel?{query}")
    for row in funnel["rows"]:
        assert re.search(
            rf'<tr data-stage="{row["stage"]}"><td class="stage">{row["stage"]}'
            rf'</td><td class="leads">{row["leads"]}</td>',
            dom,
        ), row
    _, pipeline = dashboard_stack.http("GET", "/v1/pipeline")
    for row in pipeline["rows"]:
        assert f'<td class="weighted">{row["weighted_amount"]:,.0f}</td>' in dom, row
    filtered = render(f"{dashboard_stack.base_url}/dashboard?{query}&owner=nobody{key}")
    assert '<tr data-stage="new">' not in filtered  # a filter keeps only its group

    # Latest leads and their notes: personal data, shown only to a key with read:pii.
    assert "a key with read:pii shows the latest leads" in dom
    assert "data-lead=" not in dom
    personal = render(f"{dashboard_stack.base_url}/dashboard?{query}#key={KEYS['admin']}")
    assert 'data-loaded="yes"' in personal
    leads = dashboard_stack.leads()["leads"]
    for lead in leads:
        assert f'data-lead="{lead["lead_id"]}"' in personal
    # The note's markup is text (escaped by the DOM), its line break kept.
    assert "&lt;b&gt;call&lt;/b&gt; after 3pm\n想看演示" in personal
    assert "<b>call</b>" not in personal


def test_query_bench_compares_views_with_the_raw_table(tmp_path: Path) -> None:
    out = tmp_path / "queries.json"
    run_cli("bench", "queries", "--leads", "3000", "--repeat", "1", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["transitions"] > 3000 * 5
    assert len(report["results"]) == 5
    assert [r["same_answer"] for r in report["results"]] == [True] * 5
    assert all(r["view_ms"] > 0 and r["raw_ms"] > 0 for r in report["results"])


async def test_grafana_provisioning_queries_run(loaded: ClickHouse) -> None:
    root = Path(__file__).parents[2]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    source = yaml.safe_load(
        (root / "deploy/grafana/provisioning/datasources/clickhouse.yaml").read_text()
    )
    [datasource] = source["datasources"]
    assert datasource["jsonData"]["host"] in compose["services"]  # the compose server
    dashboard = json.loads((root / "deploy/grafana/dashboards/funnel.json").read_text())
    answers = {}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        sql = panel["targets"][0]["rawSql"].replace("leadflow.", f"{loaded.database}.")
        answers[panel["title"]] = await loaded.query(sql)
    pipeline_rows = answers["Pipeline now: amount and weighted amount by stage"]
    assert {r["stage"]: r["leads"] for r in pipeline_rows} == {
        "assigned": 1,
        "sql": 1,
        "won": 1,
        "lost": 1,
    }
    stuck = answers["Stagnant open leads (14+ days in stage)"]
    assert {r["lead_id"] for r in stuck} == {"C", "D"}


async def test_csv_exports_neutralise_formula_text(stack: Stack) -> None:
    # A campaign name is whatever the ad platform or the form sent: text for leadflow, a
    # live formula for a spreadsheet that opens the export unless it is neutralised.
    formula = '=HYPERLINK("http://attacker.example","点我")'
    fields = {"name": "Eve", "email": "eve@example.com", "utm_campaign": formula}
    assert stack.post_json(fields)[0] == 202
    stack.wait_for_leads(1, email="eve@example.com")
    day = datetime.now(UTC).date()
    window = ["--from", str(day), "--to", str(day + timedelta(days=1))]
    as_csv = await asyncio.to_thread(
        run_cli, "funnel", *window, "--by", "campaign", "--format", "csv", "--url", stack.base_url
    )
    cells = [cell for row in csv.reader(io.StringIO(as_csv)) for cell in row]
    assert "'" + formula.lower() in cells, as_csv  # campaigns are kept lower-cased
    assert not [cell for cell in cells if cell.startswith(("=", "+", "@", "\t", "\r"))]
