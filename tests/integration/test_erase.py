"""`leadflow erase`: a person is gone from ClickHouse, state and dead letters, and stays gone.

The test erases a person on the running stack, then replays every raw
topic from the start, and finds nothing of them anywhere: not in the
leads, transitions, merges or dead-letter tables, not in the lead state
(its changelog ends in a tombstone), not on the dead-letter topics.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from leadflow.kafka_clients import make_producer
from leadflow.settings import KafkaSettings
from leadflow.stack import http_json
from tests.integration.processes import Stack, read_topic

EMAIL = "erase.me@example.com"
PHONE = "+8613800138000"


def erase(stack: Stack, **who: str) -> dict[str, Any]:
    status, report = http_json(
        "POST",
        f"{stack.base_url}/v1/privacy/erase",
        json.dumps(who).encode(),
        {"Content-Type": "application/json"},
        timeout_s=120,
    )
    assert status == 200, report
    return report


def run_cli_json(stack: Stack, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "leadflow", *args, "--url", stack.base_url, "--format", "json"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def latest_by_key(messages: list[Any]) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for message in messages:
        latest[message.key] = message.value
    return latest


async def test_erase_then_replay_finds_nothing(stack: Stack) -> None:
    status, _ = stack.post_json({"name": "Erase Me", "email": EMAIL, "mobile": "138 0013 8000"})
    assert status == 202
    status, _ = stack.post_json({"name": "Keep Me", "email": "keep.me@example.com"})
    assert status == 202
    # A refused post that mentions the person: a dead letter holding their email.
    status, refused = stack.post_json({"name": "Erase Me", "email": EMAIL, "phone": "12"})
    assert status == 422
    [person] = stack.wait_for_leads(1, email=EMAIL)
    stack.wait_for_leads(1, email="keep.me@example.com")

    report = erase(stack, email=EMAIL)
    assert report["lead_ids"] == [person["lead_id"]]
    assert report["rows_deleted"]["leads"] >= 1
    assert report["rows_deleted"]["lead_transitions"] >= 1
    assert report["rows_deleted"]["dead_letters"] >= 1
    assert report["dead_letters_tombstoned"] == {stack.topics.dlq("web_form"): 1}

    # Replay: every raw lead sent again from the start, as an operator's reprocessing would.
    raw = await read_topic(stack.bootstrap, stack.topics.leads_raw, 2)
    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        for message in raw:
            await producer.send_and_wait(stack.topics.leads_raw, message.value, key=message.key)
    finally:
        await producer.stop()
    status, _ = stack.post_json({"name": "After Replay", "email": "after@example.com"})
    stack.wait_for_leads(1, email="after@example.com")
    await asyncio.sleep(3)

    assert stack.leads(email=EMAIL)["leads"] == []
    assert stack.leads(phone=PHONE)["leads"] == []
    assert stack.leads(lead_id=person["lead_id"])["leads"] == []
    assert len(stack.leads(email="keep.me@example.com")["leads"]) == 1
    status, _ = http_json("GET", f"{stack.base_url}/v1/leads/{person['lead_id']}/explain")
    assert status == 404
    letters = http_json("GET", f"{stack.base_url}/v1/dead-letters?limit=1000")[1]
    assert refused["dead_letter_id"] not in json.dumps(letters)
    # Nothing left for a second erasure (through the CLI this time) to find in any table.
    again = run_cli_json(stack, "erase", "--phone", "138 0013 8000")
    assert again["lead_ids"] == []
    assert set(again["rows_deleted"].values()) == {0}

    # Kafka: the dead letter and the lead's state end in tombstones.
    dlq = latest_by_key(await read_topic(stack.bootstrap, stack.topics.dlq("web_form"), 2))
    assert dlq[refused["dead_letter_id"].encode()] is None
    changelog = f"{stack.topics.prefix}leadflow-lead_state-changelog"
    state = latest_by_key(await read_topic(stack.bootstrap, changelog, 1))
    mine = [key for key in state if person["lead_id"].encode() in key]
    assert mine
    assert all(state[key] is None for key in mine)


def test_erase_cli_needs_an_identifier() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "leadflow", "erase", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "give --email, --phone or --lead-id" in done.stdout
