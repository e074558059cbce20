"""The ClickHouse writer in this process, against the real broker and the embedded engine."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.kafka_clients import ensure_topics, make_consumer, make_producer
from leadflow.metrics import Metrics
from leadflow.normalize import normalize_lead
from leadflow.rules import load_rules
from leadflow.settings import ClickHouseSettings, KafkaSettings, Settings
from leadflow.suppression import SuppressionList, identifier_hash
from leadflow.topics import Topics
from schemas import DeadLetter, DeadLetterRow, LeadRow, RawLead, StageTransition
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.migrations import load_migrations, migrate
from sinks.clickhouse.writer import ClickHouseWriter, apply_retention, routes
from streams.identity import start_probe
from streams.leads import apply_lead
from tests.builders import make_assignment
from tests.integration.processes import read_topic

RULES = load_rules()


def make_settings(prefix: str, database: str) -> Settings:
    return Settings(
        kafka=KafkaSettings(topic_prefix=prefix, partitions=3),
        clickhouse=ClickHouseSettings(database=database, batch_rows=10, flush_interval_s=0.1),
    )


async def count(clickhouse: ClickHouse, table: str, final: bool = False) -> int:
    rows = await clickhouse.query(
        f"SELECT count() AS n FROM {clickhouse.database}.{table} {'FINAL' if final else ''}"
    )
    return int(rows[0]["n"])


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


class RunningWriter:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        clickhouse: ClickHouse,
        suppressions: SuppressionList | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.clickhouse = clickhouse
        self.metrics = Metrics()
        self.topics = Topics(settings.kafka.topic_prefix)
        self.suppressions = suppressions

    async def __aenter__(self) -> ClickHouseWriter:
        self.producer = make_producer(self.settings.kafka, self.bootstrap)
        self.consumer = make_consumer(
            self.settings.kafka,
            self.bootstrap,
            *routes(self.topics),
            group_id=self.topics.group("clickhouse-writer"),
        )
        await self.producer.start()
        await self.consumer.start()
        self.writer = ClickHouseWriter(
            self.settings,
            self.clickhouse,
            self.consumer,
            self.producer,
            self.metrics,
            self.suppressions,
        )
        self.task = asyncio.create_task(self.writer.run())
        return self.writer

    async def __aexit__(self, *_: object) -> None:
        self.writer.stop()
        await self.task
        await self.consumer.stop()
        await self.producer.stop()


@pytest.fixture
async def settings(kafka_bootstrap: str, topic_prefix: str, clickhouse: ClickHouse) -> Settings:
    configured = make_settings(topic_prefix, clickhouse.database)
    await ensure_topics(configured.kafka, kafka_bootstrap)
    return configured


async def publish_leads(
    bootstrap: str, settings: Settings, emails: list[str], extra: Sequence[bytes] = ()
) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    producer = make_producer(settings.kafka, bootstrap)
    await producer.start()
    try:
        for email in emails:
            raw = RawLead(
                event_id=f"evt-{email}",
                channel="web",
                source_system="test",
                received_at=datetime(2026, 3, 1, tzinfo=UTC),
                fields={"email": email},
            )
            lead = normalize_lead(raw, default_region="CN")
            state = apply_lead(None, start_probe(lead, RULES.identity), RULES, datetime.now(UTC))
            await producer.send_and_wait(
                topics.leads_identified,
                state.model_dump_json().encode(),
                key=state.lead_id.encode(),
            )
        for value in extra:
            await producer.send_and_wait(topics.leads_identified, value, key=b"bad")
    finally:
        await producer.stop()


async def test_migrations_are_idempotent_and_match_the_row_models(clickhouse: ClickHouse) -> None:
    assert await migrate(clickhouse) == []  # the fixture already applied them all
    applied = await clickhouse.query(
        f"SELECT version FROM {clickhouse.database}.schema_migrations FINAL ORDER BY version"
    )
    assert [r["version"] for r in applied] == [m.version for m in load_migrations()]
    columns = await clickhouse.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'leads' "
        "AND default_kind = '' ORDER BY position",
        {"db": clickhouse.database},
    )
    assert [c["name"] for c in columns] == LeadRow.column_names()


async def test_a_retried_batch_with_the_same_token_lands_once(clickhouse: ClickHouse) -> None:
    rows = [
        [f"id-{i}", "stage", "reason", "E", "m", {}, "", "", "", 0, i, "", datetime.now(UTC)]
        for i in range(5)
    ]
    columns = [
        "dead_letter_id", "stage", "reason", "error_class", "message", "problems",
        "original_b64", "original_key", "source_topic", "source_partition", "source_offset",
        "source_detail", "failed_at",
    ]  # fmt: skip
    await clickhouse.insert("dead_letters", rows, columns, dedup_token="t:0:0-4")
    await clickhouse.insert("dead_letters", rows, columns, dedup_token="t:0:0-4")
    assert await count(clickhouse, "dead_letters") == 5  # not FINAL: the second block never landed
    await clickhouse.insert("dead_letters", rows, columns, dedup_token="t:0:5-9")
    assert await count(clickhouse, "dead_letters") == 10


async def test_writer_retries_failed_inserts_and_commits_only_after(
    kafka_bootstrap: str, settings: Settings, clickhouse: ClickHouse
) -> None:
    emails = [f"lead{i}@example.com" for i in range(25)]
    await publish_leads(kafka_bootstrap, settings, emails, extra=[b"{not a lead"])
    running = RunningWriter(settings, kafka_bootstrap, clickhouse)
    async with running as writer:
        writer.fail_next_inserts = 3
        await wait_until(lambda: _has(clickhouse, "leads", 25))
    assert await count(clickhouse, "leads") == 25
    retries = running.metrics.insert_retries
    assert sum(retries.labels(table=t)._value.get() for t in ("leads", "dead_letters")) == 3

    [letter_message] = await read_topic(kafka_bootstrap, running.topics.dlq("clickhouse_writer"), 1)
    letter = DeadLetter.model_validate_json(letter_message.value or b"")
    assert letter.original == b"{not a lead"
    assert letter.stage == "clickhouse_writer"
    assert letter.source_topic == running.topics.leads_identified

    # Committed offsets reach the end of every partition of leads.identified.
    probe = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=running.topics.group("clickhouse-writer"),
        enable_auto_commit=False,
    )
    await probe.start()
    try:
        partitions = [TopicPartition(running.topics.leads_identified, p) for p in range(3)]
        ends = await probe.end_offsets(partitions)
        for tp in partitions:
            assert await probe.committed(tp) == ends[tp]
    finally:
        await probe.stop()

    # A restarted writer resumes after the committed offsets: nothing lands twice.
    await publish_leads(kafka_bootstrap, settings, ["late@example.com"])
    async with RunningWriter(settings, kafka_bootstrap, clickhouse):
        await wait_until(lambda: _has(clickhouse, "leads", 26))
        await wait_until(lambda: _has(clickhouse, "dead_letters", 1))
    assert await count(clickhouse, "leads") == 26
    assert await count(clickhouse, "dead_letters") == 1


async def _has(clickhouse: ClickHouse, table: str, n: int) -> bool:
    return await count(clickhouse, table) >= n


async def _count_where(clickhouse: ClickHouse, table: str, lead_id: str) -> int:
    rows = await clickhouse.query(
        f"SELECT count() AS n FROM {clickhouse.database}.{table} WHERE lead_id = {{id:String}}",
        {"id": lead_id},
    )
    return int(rows[0]["n"])


def _transition(lead_id: str, n: int, stage: str = "assigned") -> bytes:
    now = datetime.now(UTC)
    return (
        StageTransition(
            transition_id=f"{lead_id}-t{n}",
            lead_id=lead_id,
            from_stage="new",
            to_stage=stage,
            event_time=now,
            ingest_time=now,
        )
        .model_dump_json()
        .encode()
    )


async def test_a_lead_refused_for_its_phone_takes_its_transitions_and_pipeline_along(
    kafka_bootstrap: str, settings: Settings, clickhouse: ClickHouse
) -> None:
    """The erased phone comes back in national format with its country: the lead row is
    refused, and so is every row keyed by its new lead id, before or after it."""
    erased = "+12125550142"
    suppressions = SuppressionList([identifier_hash(erased)])
    suppressions.mark_loaded()
    raw = RawLead(
        event_id="evt-comes-back",
        channel="web",
        source_system="test",
        received_at=datetime(2026, 3, 1, tzinfo=UTC),
        fields={"name": "Back Again", "phone": "(212) 555-0142", "country": "US"},
    )
    lead = normalize_lead(raw, default_region="CN")
    assert lead.phone == erased
    state = apply_lead(None, start_probe(lead, RULES.identity), RULES, datetime.now(UTC))
    topics = Topics(settings.kafka.topic_prefix)
    producer = make_producer(settings.kafka, kafka_bootstrap)
    await producer.start()
    running = RunningWriter(settings, kafka_bootstrap, clickhouse, suppressions)
    try:
        # Its first transition lands before its lead row says who it is.
        await producer.send_and_wait(
            topics.lead_transitions, _transition(state.lead_id, 1), key=state.lead_id.encode()
        )
        await producer.send_and_wait(
            topics.lead_transitions, _transition("someone-else", 1), key=b"someone-else"
        )
        async with running:
            await wait_until(lambda: _has(clickhouse, "pipeline_current", 2))
            assert await _count_where(clickhouse, "lead_transitions", state.lead_id) == 1
            # Then the lead row, a later transition, and a refused post naming the phone.
            await producer.send_and_wait(
                topics.leads_identified,
                state.model_dump_json().encode(),
                key=state.lead_id.encode(),
            )
            await producer.send_and_wait(
                topics.lead_transitions, _transition(state.lead_id, 2), key=b"x"
            )
            body = json.dumps({"event_id": "evt-refused", "fields": raw.fields}).encode()
            refused = dead_letter_for(
                BadRecordError("invalid_fields", "consent: expected yes/no"),
                body,
                stage="web_form",
                key=b"idem-1",
            )
            await producer.send_and_wait(topics.dlq("web_form"), refused.record()[1], key=b"k")

            async def settled() -> bool:
                suppressed = running.metrics.suppressed
                return (
                    await _has(clickhouse, "dead_letters", 1)
                    and suppressed.labels(table="leads")._value.get() >= 1
                    and suppressed.labels(table="lead_transitions")._value.get() >= 1
                    and await _count_where(clickhouse, "lead_transitions", state.lead_id) == 0
                )

            await wait_until(settled)
    finally:
        await producer.stop()
    for table in ("leads", "lead_transitions", "pipeline_current"):
        assert await _count_where(clickhouse, table, state.lead_id) == 0, table
    assert await _count_where(clickhouse, "pipeline_current", "someone-else") == 1
    # The lead id is suppressed for good: on the topic every writer and stage follows.
    keys = {m.key for m in await read_topic(kafka_bootstrap, topics.privacy_suppressions, 1)}
    assert identifier_hash(state.lead_id).encode() in keys
    # The refused post is kept as a `suppressed` letter: hashes and event id, no phone.
    [letter] = await clickhouse.query(f"SELECT * FROM {clickhouse.database}.dead_letters FINAL")
    assert letter["dead_letter_id"] == refused.dead_letter_id
    assert (letter["reason"], letter["problems"]) == ("suppressed", {})
    kept = base64.b64decode(letter["original_b64"])
    assert json.loads(kept) == {"event_id": "evt-refused", "suppressed": [identifier_hash(erased)]}
    assert "555" not in letter["message"] + kept.decode()


async def test_dead_letters_expire_after_the_retention(clickhouse: ClickHouse) -> None:
    now = datetime.now(UTC)

    def letter(dead_letter_id: str, age: timedelta) -> list[object]:
        made = dead_letter_for(
            BadRecordError("invalid_fields", "email: not valid"),
            b'{"email": "someone@example.com"}',
            stage="web_form",
            now=lambda: now - age,
        )
        return DeadLetterRow.from_dead_letter(
            made.model_copy(update={"dead_letter_id": dead_letter_id})
        ).as_row()

    rows = [letter("old", timedelta(days=31)), letter("fresh", timedelta(days=29))]
    await clickhouse.insert("dead_letters", rows, DeadLetterRow.column_names())
    assert await apply_retention(clickhouse, 30) == ["dead_letters"]
    assert await apply_retention(clickhouse, 30) == []  # already so: nothing to do
    await clickhouse.command(f"OPTIMIZE TABLE {clickhouse.database}.dead_letters FINAL")
    left = await clickhouse.query(f"SELECT dead_letter_id FROM {clickhouse.database}.dead_letters")
    assert [r["dead_letter_id"] for r in left] == ["fresh"]
    # A shorter retention is a change, applied the same way.
    assert await apply_retention(clickhouse, 7) == ["dead_letters"]
    await clickhouse.command(f"OPTIMIZE TABLE {clickhouse.database}.dead_letters FINAL")
    assert await count(clickhouse, "dead_letters") == 0
    with pytest.raises(ValueError, match="at least one day"):
        await apply_retention(clickhouse, 0)


async def test_each_assignment_is_a_row_once_without_contact_data(
    kafka_bootstrap: str, settings: Settings, clickhouse: ClickHouse
) -> None:
    """`leads.assigned` → `assignments`: a replayed assignment lands once, and the row
    keeps the decision (team, owner, rule, score) but none of the person's contact data."""
    topics = Topics(settings.kafka.topic_prefix)
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    assignments = [
        make_assignment(
            "emea_inbound",
            n,
            lead_id=f"lead-{n}",
            owner="rep.anna",
            owner_name="Anna K.",
            rule="emea",
            assigned_at=at + timedelta(minutes=n),
            score=40.0 + n,
            full_name="Grace Hopper",
            email=f"grace{n}@example.com",
            phone="+4989123456",
            source="web_form",
        )
        for n in range(3)
    ]
    producer = make_producer(settings.kafka, kafka_bootstrap)
    await producer.start()
    try:
        for assignment in [*assignments, assignments[0]]:  # the first one replayed
            await producer.send_and_wait(
                topics.leads_assigned,
                assignment.model_dump_json().encode(),
                key=assignment.lead_id.encode(),
            )
    finally:
        await producer.stop()
    async with RunningWriter(settings, kafka_bootstrap, clickhouse):
        await wait_until(lambda: _has(clickhouse, "assignments", 3))
    assert await count(clickhouse, "assignments", final=True) == 3
    rows = await clickhouse.query(
        f"SELECT * FROM {clickhouse.database}.assignments FINAL ORDER BY lead_id"
    )
    assert [(r["lead_id"], r["owner"], r["team"], r["rule"]) for r in rows] == [
        (f"lead-{n}", "rep.anna", "emea_inbound", "emea") for n in range(3)
    ]
    assert rows[2]["score"] == pytest.approx(42.0)
    stored = json.dumps(rows, default=str)
    assert "grace" not in stored
    assert "+4989123456" not in stored
