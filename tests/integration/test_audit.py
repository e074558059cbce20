"""The audit log and the query API's answers, over the embedded engine and the real app.

The app is the server's own (`build_app`, access middleware included) with the
query role only: no broker needed. Every read of personal data leaves a row
naming the key that made it, with identifiers hashed; parameters that are not
ASCII whole numbers are a JSON 400; sums that overflow answer null, never
`Infinity`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from leadflow.metrics import Metrics
from leadflow.normalize import normalize_lead
from leadflow.rules import load_rules
from leadflow.settings import AuthSettings, ClickHouseSettings, Settings
from leadflow.suppression import identifier_hash
from leadflow_app.server import Roles, build_app
from schemas import LeadRow, RawLead, StageTransition, TransitionRow
from sinks.clickhouse import audit
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.funnel import sync_stage_definitions
from streams.identity import start_probe
from streams.leads import apply_lead
from tests.keys import ENTRIES, KEYS, bearer

Client = TestClient[web.Request, web.Application]
RULES = load_rules()
EMAIL = "audited.person@example.com"
PHONE = "+12125550142"
PII = bearer(KEYS["read:pii"])
PII_KEY_ID = KEYS["read:pii"][3:].partition("_")[0]
ADMIN = bearer(KEYS["admin"])


@pytest.fixture
async def client(clickhouse: ClickHouse) -> AsyncIterator[Client]:
    settings = Settings(
        clickhouse=ClickHouseSettings(database=clickhouse.database),
        auth=AuthSettings(keys=ENTRIES),
    )
    app = build_app(settings, Metrics(), Roles.parse(["query"]), None, clickhouse)
    made: Client = TestClient(TestServer(app))
    await made.start_server()
    try:
        yield made
    finally:
        await made.close()


async def insert_lead(clickhouse: ClickHouse, event_id: str) -> str:
    raw = RawLead(
        event_id=event_id,
        channel="web",
        source_system="test",
        received_at=datetime(2026, 3, 1, tzinfo=UTC),
        fields={
            "name": "Audited Person",
            "email": EMAIL,
            "phone": "(212) 555-0142",
            "country": "US",
        },
    )
    lead = normalize_lead(raw, default_region="CN")
    state = apply_lead(None, start_probe(lead, RULES.identity), RULES, datetime.now(UTC))
    await clickhouse.insert(
        "leads", [LeadRow.from_state(state, 0, 0).as_row()], LeadRow.column_names()
    )
    return state.lead_id


async def get(client: Client, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    response = await client.get(path, headers=headers)
    text = await response.text()
    # Valid JSON only: Python's parser would otherwise accept NaN and Infinity.
    return response.status, json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} sent"))


async def test_every_read_of_personal_data_is_audited_with_hashes_only(
    client: Client, clickhouse: ClickHouse
) -> None:
    lead_id = await insert_lead(clickhouse, "evt-audit-1")
    status, found = await get(client, f"/v1/leads?email={EMAIL}", PII)
    assert status == 200
    assert [lead["lead_id"] for lead in found["leads"]] == [lead_id]
    assert (await get(client, f"/v1/leads/{lead_id}/explain", PII))[0] == 200
    assert (await get(client, "/v1/leads/no-such-lead/explain", PII))[0] == 404
    assert (await get(client, "/v1/dead-letters?stage=normalize", PII))[0] == 200

    # Analytics keys cannot read the log, nor personal data; admins can read the log.
    assert (await get(client, "/v1/audit", bearer(KEYS["read:analytics"])))[0] == 403
    assert (await get(client, "/v1/audit", PII))[0] == 403
    status, log = await get(client, "/v1/audit", ADMIN)
    assert status == 200
    entries = log["entries"]
    assert [e["action"] for e in entries] == [
        "read_dead_letters",
        "read_explain",
        "read_explain",
        "read_leads",
    ]
    assert {e["key_id"] for e in entries} == {PII_KEY_ID}
    assert {e["key_name"] for e in entries} == {"test read:pii"}
    read = entries[-1]
    assert read["route"] == "/v1/leads"
    assert read["rows"] == 1
    assert read["target"] == f"email=h:{identifier_hash(EMAIL)} limit=100"
    assert read["lead_hashes"] == [f"h:{identifier_hash(lead_id)}"]
    assert entries[0]["detail"] == {"dead_letter_ids": []}
    assert [e["rows"] for e in entries[1:3]] == [0, 1]
    # No raw identifier anywhere in the log.
    text = json.dumps(log)
    for raw in (EMAIL, PHONE, "555-0142", lead_id):
        assert raw not in text

    # An auditor finds a person's rows by the identifier itself.
    status, by_email = await get(client, f"/v1/audit?identifier={EMAIL}", ADMIN)
    assert [e["action"] for e in by_email["entries"]] == ["read_leads"]
    status, by_lead = await get(client, f"/v1/audit?identifier={lead_id}", ADMIN)
    assert [e["action"] for e in by_lead["entries"]] == ["read_explain", "read_leads"]
    status, letters = await get(client, "/v1/audit?action=read_dead_letters&limit=5", ADMIN)
    assert len(letters["entries"]) == 1
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    status, none = await get(client, f"/v1/audit?from={later.replace('+', '%2B')}", ADMIN)
    assert (status, none["entries"]) == (200, [])
    assert (await get(client, "/v1/audit?action=drop_table", ADMIN))[0] == 400


async def test_a_read_without_a_principal_is_recorded_with_an_empty_key(
    clickhouse: ClickHouse,
) -> None:
    await audit.record(clickhouse, audit.Actor(), "read_leads", target="limit=1")
    [entry] = await audit.entries(clickhouse)
    assert (entry["key_id"], entry["key_name"], entry["rows"]) == ("", "", 0)


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",  # ² : str.isdigit() is true, int() fails
        "limit=%EF%BC%91%EF%BC%90",  # full-width １０
        "limit=-5",
        "limit=0",
        "limit=99999999999999999999",
        "limit=ten",
    ],
)
async def test_bad_numbers_are_a_json_400(client: Client, query: str) -> None:
    for path in ("/v1/leads", "/v1/dead-letters", "/v1/pipeline/stagnant"):
        headers = ADMIN
        status, answer = await get(client, f"{path}?{query}", headers)
        assert status == 400, (path, answer)
        assert answer["error"] == "bad_request"
        assert "limit must be a whole number from 1 to 10000" in answer["message"]
    status, answer = await get(client, "/v1/pipeline/stagnant?days=%C2%B2", ADMIN)
    assert status == 400
    assert "days must be a whole number" in answer["message"]
    status, answer = await get(
        client, "/v1/funnel?from=2026-01-01&to=2026-02-01&window_days=%EF%BC%93", ADMIN
    )
    assert status == 400


async def test_overflowing_amounts_answer_null_not_infinity(
    client: Client, clickhouse: ClickHouse
) -> None:
    await sync_stage_definitions(clickhouse, RULES.stages)
    stage = RULES.stages.stages[1].name
    now = datetime.now(UTC)
    rows = [
        TransitionRow.from_transition(
            StageTransition(
                transition_id=f"t{i}",
                lead_id=f"lead-{i}",
                from_stage="",
                to_stage=stage,
                event_time=now - timedelta(days=40),
                ingest_time=now,
                amount=1e308,
            )
        ).as_row()
        for i in range(3)
    ]
    await clickhouse.insert("lead_transitions", rows, TransitionRow.column_names())
    analytics = bearer(KEYS["read:analytics"])
    status, answer = await get(client, "/v1/pipeline", analytics)
    assert status == 200
    [row] = [r for r in answer["rows"] if r["stage"] == stage]
    assert row["leads"] == 3
    assert row["amount"] is None  # 3e308 is no float
    start, end = (now - timedelta(days=60)).date(), (now + timedelta(days=1)).date()
    status, _ = await get(client, f"/v1/funnel?from={start}&to={end}&kind=activity", analytics)
    assert status == 200
    status, stagnant = await get(client, "/v1/pipeline/stagnant?days=30", analytics)
    assert status == 200
    assert {r["amount"] for r in stagnant["leads"]} == {1e308}
