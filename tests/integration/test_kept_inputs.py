"""The odd-but-usable corpus (tests/data/bad_inputs/upload_kept_cases.json): inputs that
look wrong but hold a person. Each becomes a lead, with the odd part kept verbatim or
left out with a named warning, never a refusal of the whole row or webhook.

Each case is uploaded over HTTP to the real app (real broker behind it); the summary's
counts and warning reasons, and the published envelope's cells, are checked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from ingest_adapters.social.meta import meta_signature
from leadflow.kafka_clients import ensure_topics
from leadflow.settings import AuthSettings, KafkaSettings, Settings, SocialSettings
from leadflow.topics import Topics
from schemas import RawLead
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for
from tests.keys import ENTRIES, KEYS, bearer

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "data" / "bad_inputs" / "upload_kept_cases.json").read_text()
)
META_SECRET = "meta-secret"


@pytest.fixture
async def app(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = Settings(
        LEADFLOW_DATA_DIR=tmp_path,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        auth=AuthSettings(keys=ENTRIES),
        social=SocialSettings(meta_app_secret=SecretStr(META_SECRET)),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


async def test_odd_but_usable_rows_become_leads_with_named_warnings(
    app: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    wrong: list[str] = []
    for n, case in enumerate(CASES):
        data = FormData()
        data.add_field("event", f"corpus-{n}")
        data.add_field(
            "file", case["csv"].encode(), filename=f"case{n}.csv", content_type="text/csv"
        )
        answer = await app.post("/v1/uploads/tradeshow", data=data, headers=bearer(KEYS["upload"]))
        summary = await answer.json()
        got = (answer.status, summary.get("published"), sorted(summary.get("warned", {})))
        if got != (200, case["published"], sorted(case["warned"])) or summary.get("rejected"):
            wrong.append(f"{case['name']}: {got} rejected={summary.get('rejected')}")
    assert wrong == [], "\n".join(wrong)

    published = [
        RawLead.model_validate_json(m.value or b"")
        for m in await read_topic(kafka_bootstrap, Topics(topic_prefix).leads_raw, len(CASES))
    ]
    by_event = {lead.form_id: lead for lead in published}
    for n, case in enumerate(CASES):
        lead = by_event[f"corpus-{n}"]
        for column, value in case["fields"].items():
            assert lead.fields[column] == value, (case["name"], column, lead.fields)
        if "bad_scan_time" in case["warned"]:
            assert lead.occurred_at is None, case["name"]  # the arrival time stands in
            assert "arrival time" in lead.context["warnings"], case["name"]


async def test_a_meta_webhook_with_opaque_ids_is_taken(app: TestClient) -> None:
    """Only the leadgen id is needed to fetch the lead: form, page and ad ids that are not
    numbers (test pages, other tools' relays) do not refuse the notification."""
    body = json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": "page-test",
                    "time": 1772158504,
                    "changes": [
                        {
                            "field": "leadgen",
                            "value": {
                                "leadgen_id": "1020304050607080",
                                "form_id": "form:abc",
                                "page_id": "pg_1",
                                "ad_id": "ad-xyz",
                                "created_time": 1772158503,
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta_signature(META_SECRET, body),
    }
    answer = await app.post("/v1/social/meta", data=body, headers=headers)
    assert answer.status == 200, await answer.text()


def test_the_kept_corpus_names_each_case_once() -> None:
    assert len(CASES) >= 6
    assert len({case["name"] for case in CASES}) == len(CASES)
