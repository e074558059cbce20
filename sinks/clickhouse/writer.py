"""The ClickHouse writer: Kafka topics in, batched idempotent inserts out.

Input topics: `leads.identified` → table `leads`; `lead.merges` → table
`lead_merges`; `leads.assigned` → table `assignments`; `nurture.events` → table
`nurture_events`; `scoring.evaluations` → table `scoring_evaluations`;
`lead.transitions` →
table `lead_transitions` (and through materialized views `funnel_daily` and
`pipeline_current`); every `dlq.<stage>` → table `dead_letters`. Inserts set
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

Erased people (leadflow/suppression.py) stay out:
- a row carrying a suppressed identifier (lead id, email, phone) is not
  written; the lead rows of a poll are checked first, and a lead refused for
  its email or phone has its lead id suppressed too (published on
  `privacy.suppressions`), so its transitions and pipeline row are refused as
  well, and those that landed in an earlier poll are deleted: no funnel row
  for a lead that has no row in `leads`;
- a dead letter naming an erased person is stored as a `suppressed` one: the
  matching identifier hashes and event id instead of the body.

Dead letters expire after `KAFKA_DLQ_RETENTION_DAYS`, as on their topics: see
`apply_retention`, which the server runs at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from leadflow import steps
from leadflow.dead_letters import dead_letter_for_record
from leadflow.errors import RetriableError
from leadflow.metrics import Metrics
from leadflow.settings import Settings
from leadflow.suppression import (
    SUPPRESSED,
    SuppressionList,
    event_id_of,
    identifier_hash,
    identifiers_in_body,
    suppressed_dead_letter,
)
from leadflow.topics import Topics
from schemas import (
    Assignment,
    AssignmentRow,
    DeadLetter,
    DeadLetterRow,
    LeadRow,
    LeadState,
    MergeRecord,
    MergeRow,
    StageTransition,
    TransitionRow,
)
from schemas.nurture import NurtureEvent
from schemas.rows import EvaluationRow, NurtureEventRow
from schemas.scoring import Evaluation
from sinks.clickhouse.client import ClickHouse

log = logging.getLogger(__name__)
STEP = steps.CLICKHOUSE_WRITER


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


def _assignment_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    assignment = Assignment.model_validate_json(message.value or b"")
    return AssignmentRow.from_assignment(assignment).as_row()


def _nurture_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    event = NurtureEvent.model_validate_json(message.value or b"")
    return NurtureEventRow.from_event(event).as_row()


def _evaluation_row(message: ConsumerRecord[bytes, bytes]) -> list[Any]:
    evaluation = Evaluation.model_validate_json(message.value or b"")
    return EvaluationRow.from_evaluation(evaluation).as_row()


def routes(topics: Topics) -> dict[str, Route]:
    table: dict[str, Route] = {
        topics.leads_identified: Route(LeadRow.table, LeadRow.column_names(), _lead_row, False),
        topics.lead_merges: Route(MergeRow.table, MergeRow.column_names(), _merge_row, False),
        topics.lead_transitions: Route(
            TransitionRow.table, TransitionRow.column_names(), _transition_row, False
        ),
        topics.leads_assigned: Route(
            AssignmentRow.table, AssignmentRow.column_names(), _assignment_row, False
        ),
        topics.nurture_events: Route(
            NurtureEventRow.table, NurtureEventRow.column_names(), _nurture_row, False
        ),
        topics.scoring_evaluations: Route(
            EvaluationRow.table, EvaluationRow.column_names(), _evaluation_row, False
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
# The tables keyed by lead id besides `leads` (pipeline_current is lead_transitions' view
# target): what a lead id's rows are deleted from. `privacy.erase` uses them too.
LEAD_ID_PREDICATES: dict[str, str] = {
    "lead_transitions": "lead_id IN {ids:Array(String)}",
    "pipeline_current": "lead_id IN {ids:Array(String)}",
    "lead_merges": "survivor_id IN {ids:Array(String)} OR merged_id IN {ids:Array(String)}",
    "assignments": "lead_id IN {ids:Array(String)}",
    "nurture_events": "lead_id IN {ids:Array(String)}",
    "scoring_evaluations": "lead_id IN {ids:Array(String)}",
}
# Tables that hold dead-letter bodies (personal data), with the column their age is read
# from: rows expire after the retention `apply_retention` sets.
RETAINED: dict[str, str] = {"dead_letters": "failed_at"}
_TTL = re.compile(r"TTL toDateTime\((?P<column>\w+)\) \+ toIntervalDay\((?P<days>\d+)\)")


async def apply_retention(clickhouse: ClickHouse, days: int) -> list[str]:
    """Make dead letters expire `days` after they failed (a ClickHouse TTL); idempotent.

    The tables whose TTL changed now; none when it already was `days`. Expired
    rows go at the next merge of their part (ClickHouse merges for TTL at least
    every 4 hours, `merge_with_ttl_timeout`).
    """
    if days < 1:
        raise ValueError("retention must be at least one day")
    layout = clickhouse.layout
    changed: list[str] = []
    for table, column in RETAINED.items():
        database, _, name = layout.local(table).partition(".")
        found = await clickhouse.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} "
            "AND name = {name:String}",
            {"db": database, "name": name},
        )
        current = _TTL.search(found[0]["engine_full"]) if found else None
        if current and current["column"] == column and int(current["days"]) == days:
            continue
        await clickhouse.command(
            f"ALTER TABLE {layout.local(table)} {layout.on_cluster} "
            f"MODIFY TTL toDateTime({column}) + INTERVAL {int(days)} DAY"
        )
        log.info("%s: rows now expire %d days after %s", table, days, column)
        changed.append(table)
    return changed


async def purge_lead_ids(clickhouse: ClickHouse, lead_ids: Iterable[str]) -> dict[str, int]:
    """Delete every row of these lead ids from the tables keyed by lead id (not `leads`);
    the rows each held. Mutations that rewrite the parts, waited for on every replica."""
    ids = sorted(set(lead_ids))
    deleted: dict[str, int] = {}
    if not ids:
        return deleted
    db, layout = clickhouse.database, clickhouse.layout
    for table, where in LEAD_ID_PREDICATES.items():
        found = await clickhouse.query(
            f"SELECT count() AS n FROM {db}.{table} WHERE {where}", {"ids": ids}
        )
        deleted[table] = int(found[0]["n"])
        if deleted[table]:
            await clickhouse.command(
                f"ALTER TABLE {layout.local(table)} {layout.on_cluster} DELETE WHERE {where}",
                settings={"mutations_sync": 2},
                parameters={"ids": ids},
            )
    return deleted


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
        self._suppressions = SuppressionList.none_loaded() if suppressions is None else suppressions
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
        refused_leads: set[str] = set()
        # Lead rows first: a lead refused for its email or phone refuses its lead id, so its
        # transitions and merges in this same poll are refused too.
        for tp in sorted(
            fetched,
            key=lambda tp: (self._routes[tp.topic].table != LeadRow.table, tp.topic, tp.partition),
        ):
            await self._rows_of(tp, fetched[tp], tables, refused_leads)
        for table, batch in tables.items():
            if batch.rows:
                await self._insert_with_retry(table, batch.rows, batch.columns, batch.token())
                self._metrics.rows_written.labels(table=table).inc(len(batch.rows))
        if refused_leads:
            # Their transitions (and so pipeline rows) or merges may have landed in an
            # earlier poll, before their lead row said who they are.
            purged = await purge_lead_ids(self._clickhouse, refused_leads)
            if any(purged.values()):
                log.info(
                    "deleted the rows of %d suppressed lead(s): %s", len(refused_leads), purged
                )
        await self._consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in fetched.items()})

    async def _rows_of(
        self,
        tp: TopicPartition,
        messages: list[ConsumerRecord[bytes, bytes]],
        tables: dict[str, _Batch],
        refused_leads: set[str],
    ) -> None:
        """Add the rows of one topic-partition's messages to the poll's batches."""
        route = self._routes[tp.topic]
        batch = tables.setdefault(route.table, _Batch(route.table, route.columns))
        batch.ranges.append(f"{tp.topic}:{tp.partition}:{messages[0].offset}-{messages[-1].offset}")
        identifying = [i for i, c in enumerate(route.columns) if c in _IDENTIFYING]
        for message in messages:
            try:
                if route.is_dead_letter_topic and len(self._suppressions):
                    letter = self._redacted(DeadLetter.model_validate_json(message.value or b""))
                    batch.rows.append(DeadLetterRow.from_dead_letter(letter).as_row())
                    continue
                row = route.to_row(message)
                if self._suppressed(row, identifying):
                    self._metrics.suppressed.labels(table=route.table).inc()
                    if route.table == LeadRow.table:
                        await self._suppress_lead(row, route.columns, refused_leads)
                    continue
                batch.rows.append(row)
            except ValueError as exc:
                letter = dead_letter_for_record(exc, message, stage=STEP)
                self._metrics.dead_letters.labels(stage=STEP).inc()
                if route.is_dead_letter_topic:
                    # Republishing would feed this very loop; store it as it is instead.
                    batch.rows.append(DeadLetterRow.from_dead_letter(letter).as_row())
                else:
                    key, value = letter.record()
                    await self._producer.send_and_wait(self._topics.dlq(STEP), value, key=key)

    async def _suppress_lead(
        self, row: list[Any], columns: list[str], refused_leads: set[str]
    ) -> None:
        """A lead refused for who it is: its lead ids are suppressed from now on."""
        ids = [row[columns.index("lead_id")], *row[columns.index("merged_from")]]
        for lead_id in ids:
            if not lead_id:
                continue
            refused_leads.add(lead_id)
            digest = identifier_hash(lead_id)
            if not self._suppressions.hits([lead_id]):
                self._suppressions.add(digest)
                value = orjson.dumps(
                    {"erased_at": datetime.now(UTC).isoformat(), "by": STEP, "why": "lead"}
                )
                await self._producer.send_and_wait(
                    self._topics.privacy_suppressions, value, key=digest.encode()
                )

    def _redacted(self, letter: DeadLetter) -> DeadLetter:
        """The letter, or when its body names an erased person, its `suppressed` form: the
        matching hashes and event id instead of the body, the message and the problems."""
        if letter.reason == SUPPRESSED:
            return letter
        original = letter.original
        region = self._settings.normalize.default_phone_region
        values = [*identifiers_in_body(original, region), letter.original_key]
        hashes = self._suppressions.matching(values)
        if not hashes:
            return letter
        self._metrics.suppressed.labels(table=DeadLetterRow.table).inc()
        redacted = suppressed_dead_letter(
            hashes, stage=letter.stage, event_id=event_id_of(original), detail=None
        )
        return letter.model_copy(
            update={
                "reason": redacted.reason,
                "error_class": redacted.error_class,
                "message": redacted.message,
                "problems": [],
                "original_b64": redacted.original_b64,
                "original_key": redacted.original_key,
            }
        )

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
