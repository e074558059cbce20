"""The bad-input corpus (tests/data/bad_inputs): every case a clear 4xx and a dead letter.

Each case is posted to the real app (real broker behind it). Nothing may
answer 2xx or 5xx; every refusal names its reason; every refused body is on
a dead-letter topic under the id the sender was given (an oversized one,
never read whole, as a letter that names its declared size).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from ingest_adapters.call_center import twilio_signature
from ingest_adapters.social.meta import meta_signature
from leadflow import steps
from leadflow.kafka_clients import ensure_topics
from leadflow.settings import (
    CallsSettings,
    HttpSettings,
    KafkaSettings,
    Settings,
    SocialSettings,
    WebSettings,
)
from leadflow.topics import Topics
from schemas import DeadLetter
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for
from tests.keys import KEYS, bearer

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "data" / "bad_inputs" / "http_cases.json").read_text()
)
SECRETS = {"meta": "meta-secret", "meta-wrong": "not-the-app-secret"}
TWILIO_TOKEN = "twilio-token"
TWILIO_URL = "https://leads.example.com/v1/calls/twilio"


@pytest.fixture
async def app_client(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TestClient]:
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_body_bytes=65536, publish_timeout_s=15),
        web=WebSettings(rate_per_s=1000, rate_burst=1000),
        calls=CallsSettings(
            twilio_auth_token=SecretStr(TWILIO_TOKEN),
            twilio_public_url=TWILIO_URL,
        ),
        social=SocialSettings(
            meta_app_secret=SecretStr(SECRETS["meta"]),
            linkedin_client_secret=SecretStr("linkedin-secret"),
        ),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap, key=None):
        yield made


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({case["name"] for case in CASES}) == len(CASES)


async def test_every_bad_input_gets_a_clear_4xx_and_a_dead_letter(
    app_client: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    letter_ids: dict[str, str] = {}
    wrong: list[str] = []
    for case in CASES:
        body = base64.b64decode(case["body_b64"])
        # A case names the scope of the key it is sent with; null sends none.
        scope = case.get("key", "admin")
        credential = bearer(KEYS[scope]) if scope else {}
        headers = {"Content-Type": case["content_type"], **credential, **case["headers"]}
        if case["sign"] == "twilio":  # signed as Twilio signs: over the URL and the fields
            fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
            headers["X-Twilio-Signature"] = twilio_signature(TWILIO_TOKEN, TWILIO_URL, fields)
        elif case["sign"]:
            headers["X-Hub-Signature-256"] = meta_signature(SECRETS[case["sign"]], body)
        answer = await app_client.post(case["path"], data=body, headers=headers)
        payload = await answer.json()
        if answer.status != case["expect"] or not payload.get("error"):
            wrong.append(f"{case['name']}: {answer.status} {payload}")
            continue
        letter_ids[case["name"]] = payload.get("dead_letter_id", "")
    assert wrong == [], "\n".join(wrong)
    assert all(letter_ids.values()), [name for name, lid in letter_ids.items() if not lid]

    topics = Topics(topic_prefix)
    found: set[str] = set()
    for stage in (steps.WEB_FORM, steps.CALL_CENTER, steps.EVENTS, steps.SOCIAL_ADS):
        for message in await read_topic(kafka_bootstrap, topics.dlq(stage), 1, timeout_s=5):
            found.add(DeadLetter.model_validate_json(message.value or b"").dead_letter_id)
    assert set(letter_ids.values()) <= found
