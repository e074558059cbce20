"""Social lead ads end to end: signed webhook → notification → fetch → leads.raw → ClickHouse.

The Graph API is the only stand-in (tests/standins/social_api.py): everything
else is the real stack, broker and embedded ClickHouse.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ingest_adapters.social.common import lead_event_id
from ingest_adapters.social.linkedin import linkedin_signature
from ingest_adapters.social.meta import meta_signature
from schemas import DeadLetter, RawLead
from tests.integration.processes import Stack, read_topic, start_stack
from tests.standins.social_api import SocialApiStandIn, running

DATA = Path(__file__).parents[1] / "data" / "social"
APP_SECRET = "meta-app-secret-for-tests"
ACCESS_TOKEN = "EAAG-page-token-for-tests"
LI_SECRET = "linkedin-client-secret-for-tests"


@pytest.fixture
async def graph() -> AsyncIterator[SocialApiStandIn]:
    stand_in = SocialApiStandIn(meta_token=ACCESS_TOKEN)
    lead = json.loads((DATA / "meta_graph_lead.json").read_text())
    stand_in.meta_leads[lead["id"]] = lead  # the webhook's second lead is unknown: 404
    async with running(stand_in) as served:
        yield served


@pytest.fixture
async def social_stack(
    graph: SocialApiStandIn, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    env = {
        "SOCIAL_META_VERIFY_TOKEN": "verify-me",
        "SOCIAL_META_APP_SECRET": APP_SECRET,
        "SOCIAL_META_ACCESS_TOKEN": ACCESS_TOKEN,
        "SOCIAL_META_GRAPH_URL": graph.meta_graph_url,
        "SOCIAL_LINKEDIN_CLIENT_SECRET": LI_SECRET,
        "SOCIAL_FETCH_BACKOFF_S": "0.05",
        "SOCIAL_FETCH_MAX_TRIES": "3",
    }
    # The stand-in answers on this event loop, so the stack starts off it.
    stack = await asyncio.to_thread(start_stack, kafka_bootstrap, topic_prefix, tmp_path, 1, env)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


def call(stack: Stack, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
    return stack.http(method, path, body, headers)


async def test_meta_lead_ads_reach_clickhouse_once(
    social_stack: Stack, graph: SocialApiStandIn
) -> None:
    stack = social_stack
    status, answer = await asyncio.to_thread(
        call,
        stack,
        "GET",
        "/v1/social/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444",
    )
    assert (status, answer) == (200, 1158201444)  # the challenge echoed as sent
    status, answer = await asyncio.to_thread(
        call,
        stack,
        "GET",
        "/v1/social/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
    )
    assert status == 403

    body = (DATA / "meta_webhook_leadgen.json").read_bytes()
    status, answer = await asyncio.to_thread(
        call, stack, "POST", "/v1/social/meta", body, **{"Content-Type": "application/json"}
    )
    assert status == 403
    assert answer["error"] == "bad_signature"
    assert answer["dead_letter_id"]

    signed = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta_signature(APP_SECRET, body),
    }
    for _ in range(2):  # Meta redelivers when an answer is slow
        status, answer = await asyncio.to_thread(
            call, stack, "POST", "/v1/social/meta", body, **signed
        )
        assert status == 200, answer
    known = lead_event_id("meta", "1020304050607080")
    assert answer["event_ids"] == [known, lead_event_id("meta", "1020304050607082")]

    leads = await asyncio.to_thread(stack.wait_for_leads, 1, 60.0, email="wang.xiaoming@example.cn")
    assert leads[0]["phone"] == "+8613800138000"
    assert leads[0]["first_touch_channel"] == "social"

    raw = await read_topic(stack.bootstrap, stack.topics.leads_raw, expected=2)
    envelopes = [RawLead.model_validate_json(m.value or b"") for m in raw]
    assert {e.event_id for e in envelopes} == {known}  # a redelivery is the same event
    assert envelopes[0].context["campaign_name"] == "2026 Spring Leads"
    # The token went in a header, never in a URL the provider or a proxy would log.
    assert graph.received
    assert all(ACCESS_TOKEN not in json.dumps(r.query) for r in graph.received)

    letters = await read_topic(stack.bootstrap, stack.topics.dlq("social_ads"), expected=3)
    reasons = sorted(DeadLetter.model_validate_json(m.value or b"").reason for m in letters)
    assert reasons == ["bad_signature", "lead_not_found", "lead_not_found"]
    for message in letters:
        assert ACCESS_TOKEN not in (message.value or b"").decode()
    # Two leads touched, one still one lead: the redelivery changed nothing downstream.
    again = await asyncio.to_thread(stack.leads, email="wang.xiaoming@example.cn")
    assert again["leads"][0]["touch_count"] == 1


async def test_linkedin_challenge_and_signed_notification(social_stack: Stack) -> None:
    stack = social_stack
    status, answer = await asyncio.to_thread(
        call, stack, "GET", "/v1/social/linkedin?challengeCode=890e4665-4dfe-4ab1-b689"
    )
    assert status == 200
    assert answer["challengeCode"] == "890e4665-4dfe-4ab1-b689"
    assert len(answer["challengeResponse"]) == 64

    body = (DATA / "linkedin_notification_created.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        "X-LI-Signature": linkedin_signature(LI_SECRET, body),
    }
    status, answer = await asyncio.to_thread(
        call, stack, "POST", "/v1/social/linkedin", body, **headers
    )
    assert status == 200, answer
    notes = await read_topic(stack.bootstrap, stack.topics.social_notifications, expected=1)
    assert json.loads(notes[0].value or b"")["provider"] == "linkedin"

    deleted = (DATA / "linkedin_notification_deleted.json").read_bytes()
    headers["X-LI-Signature"] = linkedin_signature(LI_SECRET, deleted)
    status, answer = await asyncio.to_thread(
        call, stack, "POST", "/v1/social/linkedin", deleted, **headers
    )
    # LinkedIn must not retry a deletion; the dead letter is its trail.
    assert (status, answer["status"], answer["reason"]) == (200, "ignored", "lead_deleted")


async def test_backfill_of_an_ads_manager_export(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    from leadflow.topics import Topics

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "LEADFLOW_DATA_DIR": str(tmp_path),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leadflow", "backfill", str(DATA / "meta_export_utf16.tsv")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The sample holds two good rows and one with an unreadable date.
    assert "2 leads published; rejected: invalid_row 1" in done.stdout
    topics = Topics(topic_prefix)
    raw = await read_topic(kafka_bootstrap, topics.leads_raw, 2)
    envelopes = [RawLead.model_validate_json(m.value or b"") for m in raw]
    # The same event id a webhook for that lead would have given.
    assert {e.event_id for e in envelopes} == {
        lead_event_id("meta", "1020304050607080"),
        lead_event_id("meta", "1020304050607082"),
    }
    [letter] = await read_topic(kafka_bootstrap, topics.dlq("social_ads"), 1)
    assert DeadLetter.model_validate_json(letter.value or b"").reason == "invalid_row"
