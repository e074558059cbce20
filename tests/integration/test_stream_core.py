"""The stream core on the real broker: 4 partitions, two worker processes, a restart.

A mixed sample from every channel, with known duplicates, must come out as
exactly the people the matching rules define (the oracle of tests/topology.py),
each with an owner from its team and the grade its touches earn.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from leadflow.kafka_clients import make_producer
from leadflow.rules import Rules, load_rules
from leadflow.settings import KafkaSettings
from leadflow_tools.samples.generate import Sample, generate
from schemas import CallEvent, CrmEvent, DeadLetter, EngagementEvent
from streams.frames import MAGIC, partition_for, unframe
from tests.integration.processes import Stack, read_topic, start_stack
from tests.keys import ADMIN_KEY
from tests.topology import expected_people


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture
def two_workers(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(kafka_bootstrap, topic_prefix, tmp_path, workers=2)
    try:
        yield running
    finally:
        running.stop()


async def publish(stack: Stack, sample: Sample, start: int, end: int) -> None:
    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        for envelope in sample.envelopes[start:end]:
            await producer.send(
                stack.topics.leads_raw,
                envelope.model_dump_json().encode(),
                key=envelope.event_id.encode(),
            )
        await producer.flush()
    finally:
        await producer.stop()


def settled_leads(stack: Stack, expected: int, timeout_s: float = 240.0) -> list[dict[str, Any]]:
    """Leads once `expected` of them exist, all owned, and nothing changed for 3 seconds."""
    deadline = time.monotonic() + timeout_s
    last: list[tuple[str, int]] = []
    stable_since = time.monotonic()
    leads: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        stack.assert_running()
        leads = stack.leads(limit="10000")["leads"]
        snapshot = sorted((lead["lead_id"], lead["version"]) for lead in leads)
        if snapshot != last:
            last, stable_since = snapshot, time.monotonic()
        elif (
            len(leads) == expected
            and all(lead["owner"] for lead in leads)
            and time.monotonic() - stable_since > 3
        ):
            return leads
        time.sleep(0.5)
    unowned = [lead["lead_id"] for lead in leads if not lead["owner"]]
    raise AssertionError(
        f"{len(leads)} leads, expected {expected}; without owner: {unowned}; last change "
        f"{time.monotonic() - stable_since:.0f}s ago\n{stack.logs()}"
    )


def check(leads: list[dict[str, Any]], groups: list[set[str]], rules: Rules) -> None:
    got = sorted(sorted(lead["touch_event_ids"]) for lead in leads)
    assert got == sorted(sorted(group) for group in groups)
    for lead in leads:
        team = rules.routing.teams[lead["team"]]
        assert lead["owner"] in {r.id for r in team.reps} | {f"queue:{lead['team']}"}
        assert lead["grade"] in "ABCD"


async def test_mixed_channels_two_workers_and_a_restart(two_workers: Stack, rules: Rules) -> None:
    sample = generate(200, duplicate_share=0.3, seed=11)
    groups = expected_people(sample.envelopes, rules)
    duplicates = len(sample.envelopes) - len(groups)
    assert duplicates >= 40  # the sample really exercises dedupe

    half = len(sample.envelopes) // 2
    await publish(two_workers, sample, 0, half)
    two_workers.restart("worker2")  # mid-run: its partitions move, then come back
    await publish(two_workers, sample, half, len(sample.envelopes))

    leads = settled_leads(two_workers, len(groups))
    check(leads, groups, rules)
    # The identity hops travelled in frames, each on the partition of its records' keys.
    hops = await read_topic(two_workers.bootstrap, two_workers.topics.identity_keys, 1)
    frames = [m for m in hops if m.value.startswith(MAGIC)]
    assert frames, "no frame on identity.keys"
    for message in frames:
        assert {partition_for(k, 4) for k, _ in unframe(message.value)} == {message.partition}
    # Chinese leads reach the China teams, others the global ones.
    by_country = {(lead["country"], lead["team"]) for lead in leads}
    assert all(team.startswith("china") for country, team in by_country if country == "CN")
    merges = sum(len(lead["merged_from"]) for lead in leads)
    assert merges >= duplicates * 0.5

    # `explain` says why: the merge rules, the score's rules, the routing decision.
    merged = max(leads, key=lambda lead: len(lead["merged_from"]))
    status, why = two_workers.http("GET", f"/v1/leads/{merged['lead_id']}/explain")
    assert status == 200
    assert {m["merged_id"] for m in why["merges"]} <= set(merged["merged_from"])
    assert why["merges"]
    assert all(m["rule"] in {r.name for r in rules.identity.rules} for m in why["merges"])
    assert sum(why["score"]["rules"].values()) == pytest.approx(
        why["score"]["score"], abs=0.1
    ) or why["score"]["score"] in (0, 100)
    assert why["routing"]["owner"] == merged["owner"]
    # Every routing decision about the person is a row of `assignments`; the owner is one.
    assert why["assignments"]
    assert {a["lead_id"] for a in why["assignments"]} <= {merged["lead_id"], *merged["merged_from"]}
    assert merged["owner"] in {a["owner"] for a in why["assignments"]}
    assert len(why["touches"]) == len(merged["touch_event_ids"])
    # Asking by a merged-away id answers with the survivor.
    status, via_loser = two_workers.http(
        "GET", f"/v1/leads/{why['merges'][0]['merged_id']}/explain"
    )
    assert status == 200
    assert via_loser["lead"]["lead_id"] == merged["lead_id"]

    shown = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "leadflow",
            "explain",
            merged["lead_id"],
            "--url",
            two_workers.base_url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200", "LEADFLOW_API_KEY": ADMIN_KEY},
    )
    assert "merged because" in shown.stdout
    assert why["merges"][0]["rule"] in shown.stdout
    assert f"grade {why['score']['grade']}" in shown.stdout


def store_options(data_dir: Path) -> list[str]:
    """The RocksDB OPTIONS file in force for each `lead_state` store a worker opened."""
    stores = data_dir.glob("worker*/worker-state/*/tables/lead_state-*.db")
    return [sorted(store.glob("OPTIONS-*"))[-1].read_text() for store in stores]


async def test_engagement_and_calls_rescore_the_lead(stack: Stack) -> None:
    status, _ = stack.post_json(
        {
            "name": "Ada",
            "email": "ada@fabrikam.example",
            "phone": "+86 138 0013 8000",
            "title": "Engineer",
        }
    )
    assert status == 202
    [before] = stack.wait_for_leads(1, email="ada@fabrikam.example")
    now = datetime.now(UTC)
    events = [
        (
            stack.topics.events_engagement,
            b"ada@fabrikam.example",
            EngagementEvent(
                event_id="eng-1",
                kind="webinar_attended",
                occurred_at=now,
                email="Ada@Fabrikam.example",
            ),
        ),
        (
            stack.topics.events_engagement,
            b"ada@fabrikam.example",
            EngagementEvent(
                event_id="eng-2",
                kind="demo_requested",
                occurred_at=now,
                email="ada@fabrikam.example",
            ),
        ),
        (
            stack.topics.events_calls,
            b"+8613800138000",
            CallEvent(
                event_id="call-1",
                call_id="CA9",
                direction="inbound",
                caller="+8613800138000",
                status="completed",
                duration_s=90,
                started_at=now,
            ),
        ),
    ]
    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        for topic, key, event in events:
            await producer.send_and_wait(topic, event.model_dump_json().encode(), key=key)
        await producer.send_and_wait(stack.topics.events_calls, b'{"call_id": 1}', key=b"?")
    finally:
        await producer.stop()

    for _ in range(100):
        [lead] = stack.leads(email="ada@fabrikam.example")["leads"]
        if lead["touch_count"] >= 2 and lead["mql_at"]:
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError(f"events did not land: {lead}\n{stack.logs()}")
    assert lead["lead_id"] == before["lead_id"]
    assert lead["touch_count"] == 2
    assert lead["score"] > before["score"]
    assert lead["mql_at"]
    status, why = stack.http("GET", f"/v1/leads/{lead['lead_id']}/explain")
    assert {"webinar_attended", "demo_requested", "call_connected"} <= set(why["score"]["rules"])

    [letter] = await read_topic(stack.bootstrap, stack.topics.dlq("events"), 1)
    assert DeadLetter.model_validate_json(letter.value or b"").original == b'{"call_id": 1}'

    # The table stores run with leadflow's RocksDB sizes, not Faust's (64 MB buffers).
    options = store_options(Path(stack.env["LEADFLOW_DATA_DIR"]))
    assert options
    for text in options:
        assert "write_buffer_size=4194304" in text
        assert "max_write_buffer_number=2" in text


async def test_a_call_from_a_known_number_keeps_the_lead_and_its_rep(stack: Stack) -> None:
    """A call logged weeks before the lead arrived, delivered now: it lands on the lead,
    which keeps its id, owner and assignment; no second lead, no second routing."""
    status, _ = stack.post_json(
        {
            "name": "Anna Schmidt",
            "email": "anna.schmidt@contoso-de.com",
            "phone": "+49 89 2123 4567",
            "company": "Contoso GmbH",
            "country": "DE",
        }
    )
    assert status == 202
    stack.wait_for_leads(1, email="anna.schmidt@contoso-de.com")
    for _ in range(100):
        [owned] = stack.leads(email="anna.schmidt@contoso-de.com")["leads"]
        if owned["owner"]:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"never routed\n{stack.logs()}")

    started = datetime.now(UTC) - timedelta(days=30)
    call = CallEvent(
        event_id="call-anna-1",
        call_id="CA-anna-1",
        direction="inbound",
        caller="+498921234567",
        status="completed",
        duration_s=180,
        started_at=started,
    )
    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            stack.topics.events_calls, call.model_dump_json().encode(), key=b"+498921234567"
        )
    finally:
        await producer.stop()

    for _ in range(100):
        [lead] = stack.leads(email="anna.schmidt@contoso-de.com")["leads"]
        if lead["touch_count"] == 2:
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError(f"the call did not land: {lead}\n{stack.logs()}")
    await asyncio.sleep(2)  # anything a wrong merge would send would have landed by now
    assert [x["lead_id"] for x in stack.leads(limit="100")["leads"]] == [owned["lead_id"]]
    [lead] = stack.leads(email="anna.schmidt@contoso-de.com")["leads"]
    assert (lead["lead_id"], lead["owner"], lead["team"], lead["assigned_at"]) == (
        owned["lead_id"],
        owned["owner"],
        owned["team"],
        owned["assigned_at"],
    )
    assert lead["first_seen"] == owned["first_seen"]
    assert "call:CA-anna-1" in lead["touch_event_ids"]


async def test_sla_reroutes_and_accept_stops_the_clock(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(Path(__file__).parents[2] / "config", rules_dir)
    routing = yaml.safe_load((rules_dir / "routing.yaml").read_text())
    routing["teams"]["global_inbound"]["sla_minutes"] = 0.05  # three seconds
    (rules_dir / "routing.yaml").write_text(yaml.safe_dump(routing, allow_unicode=True))
    os.environ["WORKER_RULES_DIR"] = str(rules_dir)
    os.environ["WORKER_SLA_CHECK_INTERVAL_S"] = "0.5"
    try:
        stack = start_stack(kafka_bootstrap, topic_prefix, tmp_path / "stack")
    finally:
        del os.environ["WORKER_RULES_DIR"], os.environ["WORKER_SLA_CHECK_INTERVAL_S"]
    try:
        assert (
            stack.post_json({"name": "Ada", "email": "ada@example.us", "country": "US"})[0] == 202
        )
        stack.wait_for_leads(1, email="ada@example.us")
        for _ in range(60):
            [first] = stack.leads(email="ada@example.us")["leads"]
            if first["owner"]:
                break
            await asyncio.sleep(0.1)
        for _ in range(60):
            [lead] = stack.leads(email="ada@example.us")["leads"]
            if lead["owner"] and lead["owner"] != first["owner"]:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError(f"never re-routed: {lead}\n{stack.logs()}")
        assert lead["assignment_reason"].startswith(f"re-routed: {first['owner']}")

        accept = CrmEvent(
            event_id="acc-1",
            lead_id=lead["lead_id"],
            action="accept",
            rep_id=lead["owner"],
            occurred_at=datetime.now(UTC),
        )
        producer = make_producer(KafkaSettings(), stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                stack.topics.events_crm,
                accept.model_dump_json().encode(),
                key=lead["lead_id"].encode(),
            )
        finally:
            await producer.stop()
        for _ in range(60):
            [accepted] = stack.leads(email="ada@example.us")["leads"]
            if accepted["accepted_at"]:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError(f"accept did not land\n{stack.logs()}")
        await asyncio.sleep(4)  # past another SLA: an accepted lead stays
        [still] = stack.leads(email="ada@example.us")["leads"]
        assert still["owner"] == lead["owner"]
    finally:
        stack.stop()
