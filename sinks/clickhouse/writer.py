"""The ClickHouse writer: Kafka topics in, batched idempotent inserts out.

Input topics: `leads.identified` → table `leads`; `lead.merges` → table
`lead_merges`; `lead.transitions` → table `lead_transitions` (and through
materialized views `funnel_daily` and `pipeline_current`); every
`dlq.<stage>` → table `dead_letters`. Inserts set
`deduplicate_blocks_in_dependent_materialized_views`, so a retried batch
changes no view either. Offsets are
committed only after the rows of every message up to them are in ClickHouse.

- A batch is one poll (up to `batch_rows` messages or `flush_interval_s`), one
  insert per table; its dedup token is a digest of the topic-partition offset
  ranges it holds, so a retry of the same batch is dropped by ClickHouse, and
  rows replace each other by their stable id (lead id, transition id,
  dead-letter id) even when a batch is cut differently after a restart.
- A ClickHouse or network failure (`RetriableError`) backs off and retries the
  same batch with the same token, forever; nothing is committed meanwhile.
- A message that is not a valid model is a bad record: it is published to
  `dlq.clickhouse_writer` with its coordinates (or, when it came from a
  dead-letter topic, stored as an unreadable dead letter) and the batch goes on.
- A terminal ClickHouse error (`FatalError`) stops the writer uncommitted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from leadflow import stages
from leadflow.dead_letters import dead_letter_for_record
from leadflow.errors import RetriableError
from leadflow.metrics import Metrics
from leadflow.privacy import SuppressionList
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import (
    DeadLetter,
    DeadLetterRow,
    LeadRow,
    LeadState,
    MergeRecord,
    MergeRow,
    StageTransition,
    TransitionRow,
)
from sinks.clickhouse.client import ClickHouse

log = logging.getLogger(__name__)
STAGE = stages.CLICKHOUSE_WRITER


@dataclass(frozen=True)
class Route:
    """How one topic's messages become rows of one table."""

    table: str
    columns: list[str]
    to_row: Callable[[ConsumerRecord[bytes, bytes]], list[Any]]
    is_dead_letter_topic: bool


def _lead_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    state = LeadState.model_validate_json(message.value or b"")
    return LeadRow.from_state(state, message.partition, message.offset).as_row()


def _merge_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    record = MergeRecord.model_validate_json(message.value or b"")
    return MergeRow.from_record(record).as_row()


def _dead_letter_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    letter = DeadLetter.model_validate_json(message.value or b"")
    return DeadLetterRow.from_dead_letter(letter).as_row()


def _transition_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    transition = StageTransition.model_validate_json(message.value or b"")
    return TransitionRow.from_transition(transition).as_row()


def routes(topics: Topics) -> dict[str, Route]:
    table: dict[str, Route] = {
        topics.leads_identified: Route(LeadRow.table, LeadRow.column_names(), _lead_row, False),
        topics.lead_merges: Route(MergeRow.table, MergeRow.column_names(), _merge_row, False),
        topics.lead_transitions: Route(
            TransitionRow.table, TransitionRow.column_names(), _transition_row, False
        ),
    }
    for name in topics.all_dlq():
        table[name] = Route(
            DeadLetterRow.table, DeadLetterRow.column_names(), _dead_letter_row, True
        )
    return table


# Columns that identify a person; a row whose value here is suppressed is not written.
_IDENTIFYING = frozenset(
    {"lead_id", "survivor_id", "merged_id", "email", "phone", "emails", "phones"}
)


@dataclass
class _Batch:
    """One table's rows of a poll, and the offset ranges they came from."""

    table: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)

    def token(self) -> str:
        """The insert's dedup token: the same poll retried gives the same token."""
        digest = hashlib.sha256(",".join(self.ranges).encode()).hexdigest()[:32]
        return f"{self.table}:{digest}"


class ClickHouseWriter:
    """Consumes, batches per topic-partition, inserts, then commits. One instance per process."""

    def __init__(
        self,
        settings: Settings,
        clickhouse: ClickHouse,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        suppressions: SuppressionList | None = None,
    ) -> None:
        self._settings = settings
        if suppressions is None:
            suppressions = SuppressionList()
            suppressions.mark_loaded()
        self._suppressions = suppressions
        self._clickhouse = clickhouse
        self._consumer = consumer
        self._producer = producer
        self._metrics = metrics
        self._topics = Topics(settings.kafka.topic_prefix)
        self._routes = routes(self._topics)
        self._stopping = asyncio.Event()
        # Set by fault-injection tests: the next N inserts fail as if ClickHouse were down.
        self.fail_next_inserts = 0
        # Fault drills (CLICKHOUSE_FAULT_FAIL_S): every insert fails for that long after start.
        self._fail_until = time.monotonic() + settings.clickhouse.fault_fail_s

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stop(); at return everything consumed is inserted and committed."""
        await self._suppressions.wait_loaded()
        while not self._stopping.is_set():
            fetched = await self._collect()
            if fetched:
                await self._write_and_commit(fetched)

    async def _collect(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Messages until `batch_rows` are buffered or `flush_interval_s` passed."""
        conf = self._settings.clickhouse
        loop = asyncio.get_running_loop()
        deadline = loop.time() + conf.flush_interval_s
        collected: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        count = 0
        while count < conf.batch_rows and not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            got = await self._consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)), max_records=conf.batch_rows - count
            )
            for tp, messages in got.items():
                collected.setdefault(tp, []).extend(messages)
                count += len(messages)
        return collected

    async def _write_and_commit(
        self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """One insert per table for the whole poll, then one commit.

        Few large inserts cost the engine far less than one per topic-partition
        (every insert into `lead_transitions` also runs three views).
        """
        tables: dict[str, _Batch] = {}
        for tp in sorted(fetched, key=lambda tp: (tp.topic, tp.partition)):
            await self._rows_of(tp, fetched[tp], tables)
        for table, batch in tables.items():
            if batch.rows:
                await self._insert_with_retry(table, batch.rows, batch.columns, batch.token())
                self._metrics.rows_written.labels(table=table).inc(len(batch.rows))
        await self._consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in fetched.items()})

    async def _rows_of(
        self,
        tp: TopicPartition,
        messages: list[ConsumerRecord[bytes, bytes]],
        tables: dict[str, _Batch],
    ) -> None:
        """Add the rows of one topic-partition's messages to the poll's batches."""
        route = self._routes[tp.topic]
        batch = tables.setdefault(route.table, _Batch(route.table, route.columns))
        batch.ranges.append(f"{tp.topic}:{tp.partition}:{messages[0].offset}-{messages[-1].offset}")
        identifying = [i for i, c in enumerate(route.columns) if c in _IDENTIFYING]
        for message in messages:
            try:
                row = route.to_row(message)
                if self._suppressed(row, identifying):
                    self._metrics.suppressed.labels(table=route.table).inc()
                    continue
                batch.rows.append(row)
            except ValueError as exc:
                letter = dead_letter_for_record(exc, message, stage=STAGE)
                self._metrics.dead_letters.labels(stage=STAGE).inc()
                if route.is_dead_letter_topic:
                    # Republishing would feed this very loop; store it as it is instead.
                    batch.rows.append(DeadLetterRow.from_dead_letter(letter).as_row())
                else:
                    key, value = letter.record()
                    await self._producer.send_and_wait(self._topics.dlq(STAGE), value, key=key)

    def _suppressed(self, row: list[Any], identifying: list[int]) -> bool:
        """True for a row about an erased person (their ids, emails or phones)."""
        if not len(self._suppressions):
            return False
        values: list[str] = []
        for index in identifying:
            cell = row[index]
            values.extend(cell if isinstance(cell, list) else [cell])
        return self._suppressions.hits(str(v) for v in values if v)

    async def _insert_with_retry(
        self, table: str, rows: list[list[Any]], columns: list[str], token: str
    ) -> None:
        backoff = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.fail_next_inserts > 0:
                    self.fail_next_inserts -= 1
                    raise RetriableError("injected ClickHouse failure")
                if time.monotonic() < self._fail_until:
                    raise RetriableError("injected ClickHouse failure (CLICKHOUSE_FAULT_FAIL_S)")
                await self._clickhouse.insert(table, rows, columns, dedup_token=token)
                if attempt > 1:
                    log.info("insert into %s succeeded after %d attempts", table, attempt)
                return
            except RetriableError as exc:
                self._metrics.insert_retries.labels(table=table).inc()
                delay = min(backoff, self._settings.clickhouse.retry_backoff_max_s)
                log.warning("insert into %s failed (%s); retrying in %.1fs", table, exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311
                backoff *= 2
