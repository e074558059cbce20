"""Web-form credentials, CORS, bot quarantine, rate limits and multipart, over real Kafka."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from leadflow.kafka_clients import ensure_topics
from leadflow.settings import HttpSettings, KafkaSettings, Settings, WebSettings
from leadflow.topics import Topics
from schemas import DeadLetter, RawLead
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for

SITE = "https://www.example.com"
TOKEN = "pk_contact_us_3f9a"  # config/forms.yaml
PERSON = {"name": "Ada Lovelace", "email": "ada@example.com"}


@pytest.fixture
async def guarded(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TestClient]:
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(publish_timeout_s=5),
        web=WebSettings(
            api_keys={"partner-portal": SecretStr("partner-secret")}, rate_per_s=1, rate_burst=3
        ),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


async def test_public_token_and_origin_with_cors(guarded: TestClient) -> None:
    preflight = await guarded.options("/v1/leads/web?form_id=contact-us", headers={"Origin": SITE})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == SITE
    foreign = await guarded.options(
        "/v1/leads/web?form_id=contact-us", headers={"Origin": "https://evil.example"}
    )
    assert foreign.status == 403

    ok = await guarded.post(
        "/v1/leads/web?form_id=contact-us",
        json=PERSON,
        headers={"Origin": SITE, "X-Form-Token": TOKEN},
    )
    assert ok.status == 202, await ok.text()
    assert ok.headers["Access-Control-Allow-Origin"] == SITE
    as_field = await guarded.post(
        "/v1/leads/web?form_id=contact-us",
        json={**PERSON, "_token": TOKEN},
        headers={"Origin": SITE},
    )
    assert as_field.status == 202
    no_token = await guarded.post(
        "/v1/leads/web?form_id=contact-us", json=PERSON, headers={"Origin": SITE}
    )
    assert no_token.status == 401
    assert (await no_token.json())["dead_letter_id"]
    wrong_origin = await guarded.post(
        "/v1/leads/web?form_id=contact-us",
        json=PERSON,
        headers={"Origin": "https://evil.example", "X-Form-Token": TOKEN},
    )
    assert wrong_origin.status == 403
    assert (await wrong_origin.json())["error"] == "forbidden_origin"


async def test_server_side_key(guarded: TestClient) -> None:
    refused = await guarded.post("/v1/leads/web?form_id=partner-portal", json=PERSON)
    assert refused.status == 401
    ok = await guarded.post(
        "/v1/leads/web?form_id=partner-portal", json=PERSON, headers={"X-Api-Key": "partner-secret"}
    )
    assert ok.status == 202


async def test_bots_are_answered_like_people_but_quarantined(
    guarded: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    honeypot = await guarded.post("/v1/leads/web", json={**PERSON, "_hp": "http://spam.example"})
    too_fast = await guarded.post(
        "/v1/leads/web", json={**PERSON, "_started_at": str(int(time.time() * 1000) - 300)}
    )
    person = await guarded.post(
        "/v1/leads/web",
        json={**PERSON, "email": "grace@example.com", "_started_at": str(int(time.time()) - 40)},
    )
    assert (honeypot.status, too_fast.status, person.status) == (202, 202, 202)
    quarantined = await read_topic(kafka_bootstrap, topics.leads_quarantine, 2)
    reasons = sorted(
        RawLead.model_validate_json(m.value or b"").context["spam"] for m in quarantined
    )
    assert reasons == ["filled_too_fast", "honeypot"]
    [lead] = await read_topic(kafka_bootstrap, topics.leads_raw, 1)
    envelope = RawLead.model_validate_json(lead.value or b"")
    assert envelope.fields == {"name": "Ada Lovelace", "email": "grace@example.com"}
    assert envelope.event_id == (await person.json())["event_id"]


async def test_rate_limit_per_credential_is_429_with_retry_after(guarded: TestClient) -> None:
    statuses = []
    for n in range(5):
        answer = await guarded.post(
            "/v1/leads/web", json={"name": f"Lead {n}", "email": f"l{n}@example.com"}
        )
        statuses.append(answer.status)
    assert statuses[:3] == [202, 202, 202]
    assert 429 in statuses[3:]
    limited = await guarded.post("/v1/leads/web", json=PERSON)
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # Another credential has its own bucket.
    other = await guarded.post(
        "/v1/leads/web?form_id=partner-portal", json=PERSON, headers={"X-Api-Key": "partner-secret"}
    )
    assert other.status == 202


async def test_multipart_forms(
    guarded: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    form = FormData()
    form.add_field("姓名", "王小明")
    form.add_field("邮箱", "wang@example.cn")
    form.add_field("utm_source", "baidu")
    ok = await guarded.post("/v1/leads/web", data=form)
    assert ok.status == 202, await ok.text()
    [lead] = await read_topic(kafka_bootstrap, Topics(topic_prefix).leads_raw, 1)
    assert RawLead.model_validate_json(lead.value or b"").fields["姓名"] == "王小明"

    with_file = FormData()
    with_file.add_field("email", "x@example.com")
    with_file.add_field("cv", b"%PDF-1.7", filename="cv.pdf", content_type="application/pdf")
    refused = await guarded.post("/v1/leads/web", data=with_file)
    assert refused.status == 422
    assert (await refused.json())["fields"] == {"cv": "files are not accepted"}
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("web_form"), 1)
    assert DeadLetter.model_validate_json(letters[0].value or b"").reason == "invalid_fields"
