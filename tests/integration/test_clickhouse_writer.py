"""The ClickHouse writer in this process, against the real broker and the embedded engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from leadflow.kafka_clients import ensure_topics, make_consumer, make_producer
from leadflow.metrics import Metrics
from leadflow.settings import ClickHouseSettings, KafkaSettings, Settings
from leadflow.topics import Topics
from schemas import DeadLetter, LeadRow, RawLead
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.migrations import load_migrations, migrate
from sinks.clickhouse.writer import ClickHouseWriter, routes
from streams.identity import start_probe
from streams.leads import apply_lead
from streams.normalize import normalize_lead
from streams.rules import load_rules
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
    def __init__(self, settings: Settings, bootstrap: str, clickhouse: ClickHouse) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.clickhouse = clickhouse
        self.metrics = Metrics()
        self.topics = Topics(settings.kafka.topic_prefix)

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
            self.settings, self.clickhouse, self.consumer, self.producer, self.metrics
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
    bootstrap: str, settings: Settings, emails: list[str], extra: list[bytes] = ()
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
