"""The HTTP app in this process with a real Kafka producer: limits and failure answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from ingest_adapters.publisher import Publisher
from leadflow.kafka_clients import ensure_topics, make_producer
from leadflow.metrics import Metrics
from leadflow.settings import AuthSettings, CallsSettings, HttpSettings, KafkaSettings, Settings
from leadflow.topics import Topics
from leadflow_app.server import Roles, build_app
from schemas import DeadLetter
from tests.integration.processes import read_topic
from tests.keys import ADMIN_KEY, ENTRIES, KEYS, bearer


async def client_for(
    settings: Settings, bootstrap: str, key: str | None = ADMIN_KEY
) -> AsyncIterator[TestClient]:
    """The app on a test server that accepts the test keys; every request sends `key`
    (the admin key by default; None sends none)."""
    if not settings.auth.keys:
        settings = settings.model_copy(update={"auth": AuthSettings(keys=ENTRIES)})
    producer = make_producer(settings.kafka, bootstrap, request_timeout_ms=1500)
    await producer.start()
    metrics = Metrics()
    publisher = Publisher(producer, metrics, settings.http.publish_timeout_s)
    app = build_app(settings, metrics, Roles.parse(["adapters"]), publisher, None, bootstrap)
    client = TestClient(TestServer(app), headers=bearer(key) if key else None)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await producer.stop()


@pytest.fixture
async def client(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TestClient]:
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_body_bytes=2048, publish_timeout_s=10),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


async def test_oversized_body_is_413_in_json(client: TestClient) -> None:
    response = await client.post(
        "/v1/leads/web",
        data=b'{"email": "a@example.com", "pad": "' + b"x" * 4096 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    answer = await response.json()
    assert answer["error"] == "body_too_large"
    assert "2048" in answer["message"]


async def test_unknown_route_and_method_answer_json(client: TestClient) -> None:
    missing = await client.get("/v1/nothing-here")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong_method = await client.get("/v1/leads/web")
    assert wrong_method.status == 405


async def test_unsupported_media_type_is_415_with_a_dead_letter(client: TestClient) -> None:
    response = await client.post(
        "/v1/leads/web", data=b"email=a@example.com", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    answer = await response.json()
    assert answer["error"] == "unsupported_media_type"
    assert answer["dead_letter_id"]


async def test_kafka_not_acknowledging_is_503_never_2xx(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # Topics are not declared and the broker does not auto-create them, so no write is
    # ever acknowledged: the adapter must answer 503 with Retry-After, not 202.
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix + "undeclared."),
        http=HttpSettings(publish_timeout_s=1.5),
    )
    async for client in client_for(settings, kafka_bootstrap):
        response = await client.post("/v1/leads/web", json={"email": "a@example.com"})
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"] == "unavailable"
        metrics = await (await client.get("/metrics")).text()
        assert 'leadflow_http_requests_total{route="/v1/leads/web",status="503"} 1.0' in metrics


async def test_a_request_past_its_timeout_is_504_never_2xx(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # Kafka would take up to 5 s to give up; the request's own limit is shorter.
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix + "undeclared."),
        http=HttpSettings(publish_timeout_s=5, request_timeout_s=0.5),
    )
    async for client in client_for(settings, kafka_bootstrap):
        started = asyncio.get_running_loop().time()
        response = await client.post("/v1/leads/web", json={"email": "a@example.com"})
        assert response.status == 504
        assert (await response.json())["error"] == "timeout"
        assert response.headers["Retry-After"] == "5"
        assert asyncio.get_running_loop().time() - started < 3


async def test_event_endpoints_validate_publish_and_dead_letter(
    client: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    ok = await client.post(
        "/v1/events/crm",
        json={
            "event_id": "c1",
            "lead_id": "lead-1",
            "action": "convert",
            "amount": 1200.5,
            "currency": "CNY",
            "occurred_at": "2026-03-02T09:00:00Z",
        },
    )
    assert ok.status == 202
    assert (await ok.json())["event_id"] == "c1"
    bad = await client.post(
        "/v1/events/crm",
        json={
            "event_id": "c2",
            "lead_id": "lead-1",
            "action": "lost",
            "occurred_at": "2026-03-02T09:00:00Z",
            "currency": "yuan",
        },
    )
    assert bad.status == 422
    answer = await bad.json()
    assert set(answer["fields"]) == {"currency"}
    no_reason = await client.post(
        "/v1/events/crm",
        json={
            "event_id": "c3",
            "lead_id": "lead-1",
            "action": "lost",
            "occurred_at": "2026-03-02T09:00:00Z",
        },
    )
    assert no_reason.status == 422
    assert "lost needs a reason" in (await no_reason.json())["message"]
    engagement = await client.post(
        "/v1/events/engagement",
        json={
            "event_id": "e1",
            "kind": "webinar_attended",
            "occurred_at": "2026-03-02T09:00:00Z",
            "email": "ada@example.com",
        },
    )
    assert engagement.status == 202

    [published] = await read_topic(kafka_bootstrap, topics.events_crm, 1)
    assert published.key == b"lead-1"
    [by_email] = await read_topic(kafka_bootstrap, topics.events_engagement, 1)
    assert by_email.key == b"ada@example.com"
    letters = await read_topic(kafka_bootstrap, topics.dlq("events"), 2)
    ids = {DeadLetter.model_validate_json(m.value or b"").dead_letter_id for m in letters}
    assert answer["dead_letter_id"] in ids


async def test_call_center_endpoints(kafka_bootstrap: str, topic_prefix: str) -> None:
    from urllib.parse import urlencode

    from ingest_adapters.call_center import twilio_signature
    from schemas import CallEvent

    url = "https://leads.example.com/v1/calls/twilio"
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        calls=CallsSettings(twilio_auth_token=SecretStr("tok"), twilio_public_url=url),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    topics = Topics(topic_prefix)
    params = {
        "CallSid": "CA77",
        "From": "+8613800138000",
        "To": "+862161234567",
        "CallStatus": "completed",
        "CallDuration": "80",
        "Direction": "inbound",
        "SequenceNumber": "2",
        "Timestamp": "Mon, 02 Mar 2026 01:01:20 +0000",
    }
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async for client in client_for(settings, kafka_bootstrap, key=None):
        signature = twilio_signature("tok", url, params)
        ok = await client.post(
            "/v1/calls/twilio",
            data=urlencode(params),
            headers={**form, "X-Twilio-Signature": signature},
        )
        assert ok.status == 202
        forged = await client.post(
            "/v1/calls/twilio",
            data=urlencode(params),
            headers={**form, "X-Twilio-Signature": "Zm9yZ2Vk"},
        )
        assert forged.status == 403
        assert (await forged.json())["error"] == "bad_signature"
        no_key = await client.post("/v1/calls/events", json={"call_id": "x"})
        assert no_key.status == 401
        cdr = (
            b"Event: Cdr\nUniqueID: 9.1\nSource: 13900139000\nDestination: 8001\n"
            b"StartTime: 2026-03-02 09:00:00\nBillableSeconds: 30\nDisposition: ANSWERED\n"
        )
        ami = await client.post(
            "/v1/calls/asterisk",
            data=cdr,
            headers={"X-Api-Key": KEYS["calls"], "Content-Type": "text/plain"},
        )
        assert ami.status == 202

    calls = await read_topic(kafka_bootstrap, topics.events_calls, 2)
    by_key = {m.key: CallEvent.model_validate_json(m.value or b"") for m in calls}
    assert by_key[b"+8613800138000"].duration_s == 80
    assert by_key[b"+8613900139000"].source_system == "asterisk"
    letters = await read_topic(kafka_bootstrap, topics.dlq("call_center"), 2)
    reasons = {DeadLetter.model_validate_json(m.value or b"").reason for m in letters}
    assert reasons == {"bad_signature", "unauthorized"}


async def test_a_form_whose_envelope_can_never_fit_is_413_with_a_digest_letter(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # 600 KB of control characters: under the body limit, but each one becomes six bytes
    # (\u0001) in the JSON envelope, past what Kafka takes. Retrying can never help.
    settings = Settings(kafka=KafkaSettings(topic_prefix=topic_prefix))
    await ensure_topics(settings.kafka, kafka_bootstrap)
    boundary = "leadflow-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'
        f"ada@example.com\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\n'
        + "\x01" * 600_000
        + f"\r\n--{boundary}--\r\n"
    ).encode()
    async for client in client_for(settings, kafka_bootstrap):
        answer = await client.post(
            "/v1/leads/web",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert answer.status in (413, 422), await answer.text()
        refused = await answer.json()
        assert refused["dead_letter_id"]
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("web_form"), 1)
    [letter] = [DeadLetter.model_validate_json(m.value or b"") for m in letters]
    assert letter.dead_letter_id == refused["dead_letter_id"]
    assert len(letters[0].value or b"") < 1_000_000  # the letter itself fits


async def test_a_body_over_the_limit_leaves_a_dead_letter(
    client: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    answer = await client.post(
        "/v1/events/crm",
        data=b'{"pad": "' + b"x" * 8192 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 413
    refused = await answer.json()
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("events"), 1)
    assert refused["dead_letter_id"] in {
        DeadLetter.model_validate_json(m.value or b"").dead_letter_id for m in letters
    }


async def test_the_server_checks_events_against_its_configured_window(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    from datetime import UTC, datetime

    from leadflow.settings import LimitsSettings
    from schemas.limits import active, configure

    before = active()
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        limits=LimitsSettings(earliest_time=datetime(2026, 1, 1, tzinfo=UTC), max_amount=5000),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    event = {
        "event_id": "w1",
        "lead_id": "lead-1",
        "action": "convert",
        "amount": 1200,
        "currency": "CNY",
        "occurred_at": "2025-12-31T23:00:00Z",
    }
    try:
        async for client in client_for(settings, kafka_bootstrap):
            old = await client.post("/v1/events/crm", json=event)
            assert old.status == 422
            assert "LIMITS_EARLIEST_TIME" in (await old.json())["message"]
            big = await client.post(
                "/v1/events/crm",
                json={**event, "occurred_at": "2026-03-02T09:00:00Z", "amount": 6000},
            )
            assert big.status == 422
            assert "amount" in (await big.json())["fields"]
            ok = await client.post(
                "/v1/events/crm", json={**event, "occurred_at": "2026-03-02T09:00:00Z"}
            )
            assert ok.status == 202
    finally:
        configure(before)
