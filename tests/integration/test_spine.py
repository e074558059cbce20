"""One lead end to end through real processes: adapter → Kafka → Faust → ClickHouse."""

from __future__ import annotations

import asyncio
import base64
import json
import time

from schemas import DeadLetter, RawLead
from tests.integration.processes import Stack, read_topic, run_cli


async def test_posted_form_lands_normalized_in_leads(stack: Stack) -> None:
    started = time.monotonic()
    status, answer = stack.post_json(
        {
            "name": "  Foo   Bar ",
            "Email": " Foo@Example.COM ",
            "mobile": "１３８ ００１３ ８０００",
            "company": "Example Inc",
            "utm_source": "google",
            "gclid": "abc123",
        }
    )
    assert status == 202, answer

    [lead] = stack.wait_for_leads(1, email="foo@example.com")
    landed_after = time.monotonic() - started
    assert lead["email"] == "foo@example.com"
    assert lead["phone"] == "+8613800138000"
    assert lead["full_name"] == "Foo Bar"
    assert lead["first_touch_source"] == "google"
    assert lead["first_touch_channel"] == "web"
    assert lead["event_id"] == answer["event_id"]
    assert lead["first_seen"].endswith("Z")
    # Not a timing assert on the product: a generous bound that catches a stalled pipeline.
    assert landed_after < 30

    # The same lead through the CLI, as JSON and as a table for people.
    as_json = await asyncio.to_thread(
        run_cli, "leads", "--url", stack.base_url, "--email", "foo@example.com", "--format", "json"
    )
    assert json.loads(as_json)["leads"][0]["lead_id"] == lead["lead_id"]
    as_table = await asyncio.to_thread(run_cli, "leads", "--url", stack.base_url)
    assert "foo@example.com" in as_table
    assert "leads (1 of 1)" in as_table

    [message] = await read_topic(stack.bootstrap, stack.topics.leads_raw, 1)
    raw = RawLead.model_validate_json(message.value or b"")
    assert message.key == answer["event_id"].encode()
    assert raw.fields["Email"] == " Foo@Example.COM "  # the envelope keeps what was sent


async def test_malformed_body_gets_4xx_and_a_dead_letter(stack: Stack) -> None:
    body = b'{"name": "Eve", "email": "eve@example.com",'
    status, answer = stack.post_raw(body, "application/json")
    assert status == 400
    assert answer["error"] == "invalid_json"
    assert "not valid JSON" in answer["message"]

    status, invalid = stack.post_json({"name": "Mallory", "email": "mallory@", "phone": "12"})
    assert status == 422
    assert set(invalid["fields"]) == {"email", "phone"}

    letters = await read_topic(stack.bootstrap, stack.topics.dlq("web_form"), 2)
    by_id = {
        DeadLetter.model_validate_json(
            m.value or b""
        ).dead_letter_id: DeadLetter.model_validate_json(m.value or b"")
        for m in letters
    }
    first = by_id[answer["dead_letter_id"]]
    assert first.stage == "web_form"
    assert first.reason == "invalid_json"
    assert base64.b64decode(first.original_b64) == body
    assert first.source_detail == "POST /v1/leads/web"
    second = by_id[invalid["dead_letter_id"]]
    assert {p.field for p in second.problems} == {"email", "phone"}
    # Refused input never becomes a lead.
    assert stack.leads()["total"] == 0


async def test_same_idempotency_key_makes_one_lead(stack: Stack) -> None:
    fields = {"name": "Grace Hopper", "email": "grace@example.net"}
    key = {"Idempotency-Key": "order-form-42"}
    first_status, first = stack.post_json(fields, key)
    second_status, second = stack.post_json(fields, key)
    assert (first_status, second_status) == (202, 202)
    assert first["event_id"] == second["event_id"]

    # Both posts really reached Kafka: the dedupe is downstream, not a refused retry.
    messages = await read_topic(stack.bootstrap, stack.topics.leads_raw, 2)
    assert len(messages) == 2
    # A third post without the key, from someone else, is another lead.
    assert stack.post_json({"name": "Other", "email": "other@example.net"})[0] == 202
    stack.wait_for_leads(1, email="other@example.net")
    # Two people on two partitions: either may land first, so wait for Grace too.
    stack.wait_for_leads(1, email="grace@example.net")
    leads = stack.leads(email="grace@example.net")
    assert leads["total"] == 2
    assert len(leads["leads"]) == 1


async def test_bad_envelope_on_the_raw_topic_is_dead_lettered_by_normalize(stack: Stack) -> None:
    from leadflow.kafka_clients import make_producer
    from leadflow.settings import KafkaSettings

    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(stack.topics.leads_raw, b"\x00 not json", key=b"k1")
        good = RawLead(
            event_id="evt-direct-1",
            channel="api",
            source_system="test",
            received_at="2026-03-01T00:00:00Z",
            fields={"email": "direct@example.com"},
        )
        await producer.send_and_wait(
            stack.topics.leads_raw, good.model_dump_json().encode(), key=b"evt-direct-1"
        )
    finally:
        await producer.stop()
    [letter_message] = await read_topic(stack.bootstrap, stack.topics.dlq("normalize"), 1)
    letter = DeadLetter.model_validate_json(letter_message.value or b"")
    assert letter.stage == "normalize"
    assert letter.original == b"\x00 not json"
    assert letter.source_topic == stack.topics.leads_raw
    assert letter.source_offset is not None
    # Keyed by its own id (so an erasure can tombstone it); the original key is inside.
    assert letter_message.key == letter.dead_letter_id.encode()
    assert letter.original_key == "k1"
    [lead] = stack.wait_for_leads(1, email="direct@example.com")
    assert lead["first_touch_channel"] == "api"
    assert stack.leads()["total"] == 1  # the unreadable one is not a lead
