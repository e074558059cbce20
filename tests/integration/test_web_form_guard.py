"""Web-form credentials, CORS, bot quarantine, rate limits and multipart, over real Kafka."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from leadflow.kafka_clients import ensure_topics
from leadflow.settings import HttpSettings, KafkaSettings, Settings, WebSettings
from leadflow.topics import Topics
from schemas import DeadLetter, RawLead
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for
from tests.keys import KEYS, WRONG_KEY, bearer

SITE = "https://www.example.com"
TOKEN = "pk_contact_us_3f9a"  # config/forms.yaml
PERSON = {"name": "Ada Lovelace", "email": "ada@example.com"}


INGEST = bearer(KEYS["ingest"])


@pytest.fixture
async def guarded(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TestClient]:
    """The app behind a reverse proxy on 127.0.0.1: small per-visitor and per-key limits."""
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(
            publish_timeout_s=5,
            trusted_proxies=["127.0.0.1/32"],
            write_rate_per_s=1,
            write_rate_burst=4,
        ),
        web=WebSettings(rate_per_s=1, rate_burst=3),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap, key=None):
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


async def test_a_form_without_public_token_needs_an_ingest_key(
    guarded: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    url = "/v1/leads/web?form_id=partner-portal"
    refused = await guarded.post(url, json=PERSON)
    assert refused.status == 401
    assert "scope ingest" in (await refused.json())["message"]
    unknown = await guarded.post(url, json=PERSON, headers=bearer(WRONG_KEY))
    assert unknown.status == 401
    reader = await guarded.post(url, json=PERSON, headers=bearer(KEYS["read:pii"]))
    assert reader.status == 403
    assert (await reader.json())["error"] == "forbidden"
    # The client address is no credential: loopback without a key is refused like anyone.
    spoofed = await guarded.post(url, json=PERSON, headers={"X-Forwarded-For": "127.0.0.1"})
    assert spoofed.status == 401
    ok = await guarded.post(url, json=PERSON, headers={"X-Api-Key": KEYS["ingest"]})
    assert ok.status == 202
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("web_form"), 4)
    ids = {DeadLetter.model_validate_json(m.value or b"").dead_letter_id for m in letters}
    assert (await refused.json())["dead_letter_id"] in ids
    assert (await reader.json())["dead_letter_id"] in ids


async def test_bots_are_answered_like_people_but_quarantined(
    guarded: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    honeypot = await guarded.post(
        "/v1/leads/web", json={**PERSON, "_hp": "http://spam.example"}, headers=INGEST
    )
    too_fast = await guarded.post(
        "/v1/leads/web",
        json={**PERSON, "_started_at": str(int(time.time() * 1000) - 300)},
        headers=INGEST,
    )
    person = await guarded.post(
        "/v1/leads/web",
        json={**PERSON, "email": "grace@example.com", "_started_at": str(int(time.time()) - 40)},
        headers=INGEST,
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


async def test_each_visitor_of_a_public_form_has_its_own_bucket(guarded: TestClient) -> None:
    url = "/v1/leads/web?form_id=contact-us"

    async def post(n: int, visitor: str) -> int:
        answer = await guarded.post(
            url,
            json={"name": f"Lead {n}", "email": f"l{n}@example.com"},
            headers={"Origin": SITE, "X-Form-Token": TOKEN, "X-Forwarded-For": visitor},
        )
        return answer.status

    statuses = [await post(n, "203.0.113.5") for n in range(5)]
    assert statuses[:3] == [202, 202, 202]
    assert 429 in statuses[3:]
    limited = await guarded.post(
        url,
        json=PERSON,
        headers={"Origin": SITE, "X-Form-Token": TOKEN, "X-Forwarded-For": "203.0.113.5"},
    )
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # Another visitor of the same form, behind the same proxy, is not held back.
    assert await post(10, "203.0.113.6") == 202
    # The proxy's own hops are skipped: the client is the right-most untrusted address.
    assert await post(11, "198.51.100.7, 127.0.0.1") == 202


async def test_writes_with_a_key_are_limited_per_key(guarded: TestClient) -> None:
    statuses = [
        (
            await guarded.post(
                "/v1/leads/web",
                json={"name": f"K {n}", "email": f"k{n}@example.com"},
                headers=INGEST,
            )
        ).status
        for n in range(10)
    ]
    assert statuses[:4] == [202] * 4
    assert 429 in statuses
    # Another key has its own bucket.
    other = await guarded.post("/v1/leads/web", json=PERSON, headers=bearer(KEYS["admin"]))
    assert other.status == 202


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(publish_timeout_s=5),
        web=WebSettings(rate_per_s=1, rate_burst=2),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for client in client_for(settings, kafka_bootstrap, key=None):
        statuses = [
            (
                await client.post(
                    "/v1/leads/web?form_id=contact-us",
                    json={"name": f"V {n}", "email": f"v{n}@example.com"},
                    headers={
                        "Origin": SITE,
                        "X-Form-Token": TOKEN,
                        # A client rotating this header must not get a fresh bucket each time.
                        "X-Forwarded-For": f"198.51.100.{n}",
                    },
                )
            ).status
            for n in range(4)
        ]
        assert statuses[:2] == [202, 202]
        assert 429 in statuses[2:]


async def test_multipart_forms(
    guarded: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    form = FormData()
    form.add_field("姓名", "王小明")
    form.add_field("邮箱", "wang@example.cn")
    form.add_field("utm_source", "baidu")
    ok = await guarded.post("/v1/leads/web", data=form, headers=INGEST)
    assert ok.status == 202, await ok.text()
    [lead] = await read_topic(kafka_bootstrap, Topics(topic_prefix).leads_raw, 1)
    assert RawLead.model_validate_json(lead.value or b"").fields["姓名"] == "王小明"

    with_file = FormData()
    with_file.add_field("email", "x@example.com")
    with_file.add_field("cv", b"%PDF-1.7", filename="cv.pdf", content_type="application/pdf")
    refused = await guarded.post("/v1/leads/web", data=with_file, headers=INGEST)
    assert refused.status == 422
    assert (await refused.json())["fields"] == {"cv": "files are not accepted"}
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("web_form"), 1)
    assert DeadLetter.model_validate_json(letters[0].value or b"").reason == "invalid_fields"
