"""`leadflow erase`: a person is gone from ClickHouse, state and dead letters, and stays gone.

The first test erases a person on the running stack, then replays every raw
topic from the start, and finds nothing of them anywhere: not in the
leads, transitions, merges or dead-letter tables, not in the lead state
(its changelog ends in a tombstone), not on the dead-letter topics.

The second: the route takes JSON from an admin key only; a dry run erases
nothing; an erased phone posted again in national format with its country,
and a person erased before they were ever seen, leave a `suppressed` dead
letter with hashes only, and no lead, transition or pipeline row; every
erasure is in the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from typing import Any

from leadflow.kafka_clients import make_producer
from leadflow.settings import KafkaSettings
from leadflow.suppression import identifier_hash
from leadflow_app.client import http_json
from schemas import DeadLetter
from tests.integration.processes import Stack, read_topic, wait_until
from tests.keys import ADMIN_KEY, KEYS, bearer

EMAIL = "erase.me@example.com"
PHONE = "+8613800138000"
ADMIN_KEY_ID = ADMIN_KEY[3:].partition("_")[0]


def post_erase(
    stack: Stack,
    body: bytes,
    content_type: str = "application/json",
    key: str | None = ADMIN_KEY,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type, **(bearer(key) if key else {})}
    return http_json("POST", f"{stack.base_url}/v1/privacy/erase", body, headers, timeout_s=120)


def erase(stack: Stack, **who: Any) -> dict[str, Any]:
    status, report = post_erase(stack, json.dumps(who).encode())
    assert status == 200, report
    return report


def get(stack: Stack, path: str, key: str = ADMIN_KEY) -> tuple[int, dict[str, Any]]:
    return http_json("GET", stack.base_url + path, None, bearer(key))


def run_cli_json(stack: Stack, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "leadflow", *args, "--url", stack.base_url, "--format", "json"],
        env={**stack.env, "LEADFLOW_API_KEY": ADMIN_KEY},
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
    # A lead's row and its transitions are separate inserts: wait for both, or the erase
    # below may run between them (and then rightly refuse the transitions that come late).
    wait_for(lambda: pipeline_leads(stack) == 2, "both leads' transitions", stack)

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
    status, _ = get(stack, f"/v1/leads/{person['lead_id']}/explain")
    assert status == 404
    letters = get(stack, "/v1/dead-letters?limit=1000")[1]
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


async def test_erase_leaves_no_trace_in_the_identity_index(stack: Stack) -> None:
    """The person's exact keys (a phone with its extension included) are tombstoned, and
    their name leaves the company and domain keys that list colleagues too: a namesake who
    turns up later at the same company is a new lead, not the erased one come back."""
    anna = {
        "name": "Anna Schmidt",
        "email": "anna@contoso-de.com",
        "phone": "+49 89 2123 4567 ext 12",
        "company": "Contoso GmbH",
    }
    assert stack.post_json(anna)[0] == 202
    assert (
        stack.post_json(
            {"name": "Bernd Weber", "email": "bernd@contoso-de.com", "company": "Contoso"}
        )[0]
        == 202
    )
    [erased] = stack.wait_for_leads(1, email="anna@contoso-de.com")
    stack.wait_for_leads(1, email="bernd@contoso-de.com")
    wait_for(lambda: pipeline_leads(stack) == 2, "both leads' transitions", stack)

    report = erase(stack, email="anna@contoso-de.com")
    assert report["lead_ids"] == [erased["lead_id"]]

    changelog = f"{stack.topics.prefix}leadflow-identity_index-changelog"

    def index() -> dict[bytes, bytes | None] | None:
        latest = latest_by_key(asyncio.run(read_topic(stack.bootstrap, changelog, 1)))
        gone = [k for k in latest if b"anna@contoso-de.com" in k or b";ext=12" in k]
        return latest if gone and all(latest[k] is None for k in gone) else None

    latest = await asyncio.to_thread(wait_for, index, "the index tombstones", stack)
    assert [k for k in latest if b";ext=12" in k], "the extension key was indexed and erased"
    for key, value in latest.items():
        text = (value or b"").decode()
        assert "anna" not in text.lower(), (key, text)
        assert erased["lead_id"] not in text, (key, text)
    # Bernd's name is filed under the blocks of its words (`be`, `we`), Anna's are gone.
    company = latest.get(b'"company:contoso|be"') or latest.get(b"company:contoso|be")
    assert company is not None, sorted(k for k in latest if b"company:contoso" in k)
    assert b"bernd@contoso-de.com" in company  # the colleague stays findable
    assert latest.get(b'"company:contoso|an"', latest.get(b"company:contoso|an")) is None

    namesake = {"name": "Anna Schmidt", "phone": "+49 89 7777 1234", "company": "Contoso AG"}
    assert stack.post_json(namesake)[0] == 202
    [new] = stack.wait_for_leads(1, phone="+498977771234")
    assert new["lead_id"] != erased["lead_id"]
    assert new["merged_from"] == []


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


NATIONAL = {"phone": "(212) 555-0142", "country": "US"}
E164 = "+12125550142"
UNSEEN = "never.seen@example.com"


def wait_for(check: Any, what: str, stack: Stack, timeout_s: float = 30.0) -> Any:
    return wait_until(check, what, stack, timeout_s)


def pipeline_leads(stack: Stack) -> int:
    status, answer = get(stack, "/v1/pipeline", KEYS["read:analytics"])
    assert status == 200, answer
    return sum(row["leads"] for row in answer["rows"])


async def test_erase_is_for_admins_json_only_and_keeps_a_national_phone_out(
    stack: Stack,
) -> None:
    status, _ = stack.post_json({"name": "Nat Format", **NATIONAL})
    assert status == 202
    status, _ = stack.post_json({"name": "Control One", "email": "control.one@example.com"})
    assert status == 202
    [person] = stack.wait_for_leads(1, phone=E164)
    stack.wait_for_leads(1, email="control.one@example.com")
    wait_for(lambda: pipeline_leads(stack) == 2, "both leads in the pipeline", stack)

    # Not JSON, not an admin, not one identifier: refused, and nothing happens.
    who = json.dumps({"phone": E164}).encode()
    assert post_erase(stack, who, "text/plain")[0] == 415  # a cross-site "simple" POST
    assert post_erase(stack, b"phone=%2B12125550142", "application/x-www-form-urlencoded")[0] == 415
    assert post_erase(stack, who, key=None)[0] == 401
    assert post_erase(stack, who, key=KEYS["read:pii"])[0] == 403
    assert post_erase(stack, b"{not json")[0] == 400
    for bad in ({"phone": E164, "email": "x@example.com"}, {"phone": E164, "admin": True}, {}):
        status, answer = post_erase(stack, json.dumps(bad).encode())
        assert status == 422, answer

    # A dry run names what would go, by either writing of the number, and erases nothing.
    for request in ({"phone": E164}, NATIONAL):
        plan = erase(stack, **request, dry_run=True)
        assert plan["dry_run"] is True
        assert plan["lead_ids"] == [person["lead_id"]]
        assert plan["identifiers_suppressed"] >= 2  # the phone and the lead id
        for table in ("leads", "lead_transitions", "pipeline_current"):
            assert plan["rows_deleted"][table] >= 1, plan
    assert len(stack.leads(phone=E164)["leads"]) == 1
    assert pipeline_leads(stack) == 2

    # The real erasure, by E.164; and a person nobody has seen yet, erased in advance.
    report = erase(stack, phone=E164)
    assert report["dry_run"] is False
    assert report["lead_ids"] == [person["lead_id"]]
    for table in ("leads", "lead_transitions", "pipeline_current"):
        assert report["rows_deleted"][table] >= 1, report
    assert pipeline_leads(stack) == 1
    assert erase(stack, email=UNSEEN)["lead_ids"] == []

    # Both come back: their posts get the usual answer, then a dead letter of hashes.
    status, _ = stack.post_json({"name": "Nat Again", **NATIONAL})
    assert status == 202
    status, _ = stack.post_json({"name": "Never Seen", "email": "Never.Seen@Example.com"})
    assert status == 202
    status, _ = stack.post_json({"name": "Control Two", "email": "control.two@example.com"})
    assert status == 202
    stack.wait_for_leads(1, email="control.two@example.com")

    def suppressed_letters() -> list[dict[str, Any]]:
        answer = get(stack, "/v1/dead-letters?stage=normalize", KEYS["read:pii"])[1]
        found = [d for d in answer["dead_letters"] if d["reason"] == "suppressed"]
        return found if len(found) == 2 else []

    wait_for(suppressed_letters, "two suppressed dead letters", stack)
    records = await read_topic(stack.bootstrap, stack.topics.dlq("normalize"), 2)
    bodies = [DeadLetter.model_validate_json(r.value or b"") for r in records]
    assert {b.reason for b in bodies} == {"suppressed"}
    kept = [json.loads(b.original) for b in bodies]
    assert sorted(h for k in kept for h in k["suppressed"]) == sorted(
        [identifier_hash(E164), identifier_hash(UNSEEN)]
    )
    everything = json.dumps([b.model_dump(mode="json") for b in bodies])
    everything += " ".join(base64.b64decode(b.original_b64).decode() for b in bodies)
    for personal in ("555-0142", "2125550142", "nat again", "never.seen", "never seen"):
        assert personal not in everything.lower()

    # A call from the erased number and engagement of the erased address do not bring
    # them back either: the events step leaves a dead letter of hashes instead.
    call = {
        "call_id": "after-erase-1",
        "from": E164,
        "to": "+862161234567",
        "direction": "inbound",
        "status": "completed",
        "started_at": "2026-03-02T09:00:00Z",
        "duration_s": 60,
    }
    assert stack.post("/v1/calls/events", call, KEYS["calls"]) == 202
    engagement = {
        "event_id": "after-erase-2",
        "kind": "pricing_page_view",
        "occurred_at": "2026-03-02T09:00:00Z",
        "email": UNSEEN,
    }
    assert stack.post("/v1/events/engagement", engagement, KEYS["ingest"]) == 202
    events = await read_topic(stack.bootstrap, stack.topics.dlq("events"), 2, timeout_s=60)
    event_letters = [DeadLetter.model_validate_json(r.value or b"") for r in events]
    assert sorted(b.reason for b in event_letters) == ["suppressed", "suppressed"]
    for letter in event_letters:
        text = base64.b64decode(letter.original_b64).decode()
        assert "2125550142" not in text
        assert UNSEEN not in text.lower()

    # No lead, no transition, no pipeline row for either.
    assert stack.leads(phone=E164)["leads"] == []
    assert stack.leads(email=UNSEEN)["leads"] == []
    await asyncio.sleep(2)  # anything that slipped through would have landed by now
    assert stack.leads()["total"] == 2  # the two controls
    assert pipeline_leads(stack) == 2

    # Every erasure and dry run is in the audit log, by key, with the phone only hashed.
    status, log = get(stack, "/v1/audit?identifier=%2B12125550142")
    assert status == 200, log
    actions = sorted(e["action"] for e in log["entries"])
    assert actions[:3] == ["erase", "erase_dry_run", "erase_dry_run"]
    erased = next(e for e in log["entries"] if e["action"] == "erase")
    assert erased["key_id"] == ADMIN_KEY_ID
    assert erased["target"] == f"phone=h:{identifier_hash(E164)}"
    assert erased["lead_hashes"] == [f"h:{identifier_hash(person['lead_id'])}"]
    assert erased["detail"]["rows"]["pipeline_current"] >= 1
    status, log = get(stack, "/v1/audit?action=erase")
    assert len(log["entries"]) == 2
    status, everything_logged = get(stack, "/v1/audit?limit=1000")
    text = json.dumps(everything_logged)
    for raw in ("2125550142", "555-0142", UNSEEN, person["lead_id"]):
        assert raw not in text
    assert get(stack, "/v1/audit", KEYS["read:pii"])[0] == 403
