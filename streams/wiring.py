"""Shared plumbing of the thin agents: raw-bytes topics, batches, dead-lettering.

An agent never raises for a bad record (Faust would acknowledge and lose it):
it sends a dead letter carrying the record's coordinates, then moves on.

Every agent works in batches (`run_batches`), in this order:

1. compute each event's outputs against a `StagedTable`, which reads through
   to the Faust table but keeps the batch's writes in memory;
2. send every output and wait until Kafka acknowledged all of them (acks=all);
3. only then write the table (the store and its changelog), and acknowledge
   the batch's events.

Faust commits the batch's offsets after that. A worker killed at any point
therefore either replays the batch from the old state, sending the same
outputs again (every consumer is idempotent), or finds its state written
with every output already delivered. Writing the state first, as a plain
Faust agent does (its sends wait for the commit), let a kill between the two
keep the state and lose the outputs: a replay then saw nothing new to send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import faust
import faust.streams
from aiokafka.errors import KafkaError

from leadflow.dead_letters import dead_letter_for_record
from leadflow.settings import Settings
from leadflow.topics import Topics
from streams.frames import FrameBuilder, partition_for, records_of

log = logging.getLogger(__name__)
EXIT_STAGE_FAILED = 70  # EX_SOFTWARE


def raw_topic(app: faust.App, name: str) -> Any:
    """A topic whose keys and values are bytes: leadflow does its own (de)serialization."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def json_table(app: faust.App, name: str, settings: Settings) -> Any:
    """A partition-owned table of JSON values with text keys, backed by a changelog topic.

    Faust's default JSON serializers keep keys as text through a changelog
    recovery, so a restarted worker finds the same keys. Each partition's store
    is its own RocksDB: its write buffers and block cache are sized here, not
    left at Faust's defaults (64 MB buffers, up to 3 of them, and a 2 GB cache, per
    store: a worker holds one store per table and partition).
    """
    worker = settings.worker
    return app.Table(
        name,
        default=None,
        partitions=settings.kafka.partitions,
        options={
            "write_buffer_size": worker.rocksdb_write_buffer_mb * 1024 * 1024,
            "max_write_buffer_number": 2,
            "block_cache_size": worker.rocksdb_block_cache_mb * 1024 * 1024,
        },
    )


class Framing:
    """Which topics carry frames (`streams.frames`), their partition count, and how
    large a frame may grow. `max_bytes` 0 sends every record alone."""

    def __init__(self, topics: frozenset[str], partitions: int, max_bytes: int) -> None:
        self.topics = topics if max_bytes > 0 else frozenset()
        self.partitions = partitions
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, settings: Settings) -> Framing:
        """The stream core's own topics; Faust refuses to start when one of them has
        another partition count than its table, so `KAFKA_PARTITIONS` is theirs."""
        topics = Topics(settings.kafka.topic_prefix)
        return cls(
            frozenset((topics.identity_keys, topics.lead_updates, topics.routing_requests)),
            settings.kafka.partitions,
            settings.worker.frame_max_bytes,
        )


class Table(Protocol):
    """What a step may do with its state: a `StagedTable` in the worker, a dict in tests."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __contains__(self, key: object) -> bool: ...

    def __setitem__(self, key: str, value: Any) -> None: ...

    def pop(self, key: str, default: Any = None) -> Any: ...


class Outputs(Protocol):
    """Where a step puts what it sends: (topic name, key, value) and dead letters.
    The worker's `Outbox` sends them to Kafka; the tests' topology to its own queues."""

    def add(self, topic: str, key: str | bytes, value: bytes) -> None: ...

    def dead_letter(self, dlq: str, step: str, event: Any, error: Exception) -> None: ...


class Outbox:
    """The messages one batch sends, in the order its events asked for them, through
    the app's producer.

    Records for a framed topic are gathered per partition into frames; a frame
    that would pass `max_bytes` is closed and the next one opened behind it."""

    def __init__(self, app: Any, framing: Framing | None = None) -> None:
        self.sends: list[tuple[str, bytes, bytes]] = []
        self.frames: list[FrameBuilder] = []
        self._app = app
        self._framing = framing
        self._open: dict[tuple[str, int], FrameBuilder] = {}

    def add(self, topic: str, key: str | bytes, value: bytes) -> None:
        key = key.encode() if isinstance(key, str) else key
        framing = self._framing
        if framing is not None and topic in framing.topics:
            partition = partition_for(key, framing.partitions)
            frame = self._open.get((topic, partition))
            if frame is None or not frame.fits(key, value, framing.max_bytes):
                frame = FrameBuilder(topic, partition)
                self._open[(topic, partition)] = frame
                self.frames.append(frame)
            frame.add(key, value)
            return
        self.sends.append((topic, key, value))

    def __len__(self) -> int:
        return len(self.sends) + sum(frame.count for frame in self.frames)

    def dead_letter(self, dlq: str, step: str, event: Any, error: Exception) -> None:
        """The event's dead letter; Faust's message carries the raw key and value."""
        log_dead_letter(step, event, error)
        key, value = dead_letter_for_record(error, event.message, stage=step).record()
        self.add(dlq, key, value)

    async def deliver(self) -> None:
        """Send everything and return once Kafka acknowledged every message."""
        # Straight to the app's producer: not attached to the source offset (Faust would
        # hold attached messages until its next commit, after the table writes), and
        # without the per-message layers of Topic.send; sent now, in order.
        producer = self._app.producer
        pending = []
        for topic, key, value in self.sends:
            pending.append(await producer.send(topic, key, value, None, None, None))
        for frame in self.frames:
            key, value = frame.message()
            pending.append(
                await producer.send(frame.topic, key, value, frame.partition, None, None)
            )
        await asyncio.gather(*pending)


def log_dead_letter(step: str, event: Any, error: Exception) -> None:
    message = event.message
    log.warning(
        "dead-lettered %s@%s/%s in %s: %s",
        message.topic,
        message.partition,
        message.offset,
        step,
        error,
    )


_DELETED = object()


class StagedTable:
    """A batch's view of a Faust table: reads see the batch's own writes first, and the
    writes reach the table only in `apply`, once the batch's outputs are delivered.

    Set `event` to the event being handled: a write goes to that event's partition
    of the store and changelog, as it would inside a plain agent.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._writes: dict[str, tuple[Any, Any]] = {}
        # What the batch read from the table, decoded once: a routing team's counters or a
        # company key are read by many records of one batch. Steps never change a value
        # they read in place (they build a new one and write it).
        self._reads: dict[str, Any] = {}
        self.event: Any = None

    def _read(self, key: str) -> Any:
        try:
            return self._reads[key]
        except KeyError:
            value = self._reads[key] = self._table.get(key, _DELETED)
            return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._writes[key][1] if key in self._writes else self._read(key)
        return default if value is _DELETED else value

    def __contains__(self, key: object) -> bool:
        if key in self._writes:
            return self._writes[key][1] is not _DELETED
        return isinstance(key, str) and self._read(key) is not _DELETED

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._writes[key] = (self.event, value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._writes[key] = (self.event, _DELETED)

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        if key in self:
            self._writes[key] = (self.event, _DELETED)
        return value

    def apply(self) -> None:
        """Write the batch's changes to the table, each under the event that made it."""
        for key, (event, value) in self._writes.items():
            token = faust.streams._current_event.set(weakref.ref(event))
            try:
                if value is not _DELETED:
                    self._table[key] = value
                elif key in self._table:
                    del self._table[key]
            finally:
                faust.streams._current_event.reset(token)
        self._writes.clear()
        self._reads.clear()


async def run_batches(
    app: Any,
    stream: Any,
    settings: Settings,
    step: Callable[[Any, StagedTable | None, Outbox], None],
    table: Any = None,
) -> None:
    """The body of a batched agent: `step(record, staged_table, outbox)` for each record
    (each event, or each record of a frame), then deliver the outbox, then write the
    table (see the module's docstring)."""
    worker = settings.worker
    framing = Framing.of(settings)
    # noack_take: Faust's take_events acknowledges a batch when its generator closes,
    # even if the agent was cancelled (a SIGTERM, a rebalance) halfway through sending;
    # here a batch is acknowledged only below, once its outputs and state are in.
    async for events in stream.noack_take(worker.batch_size, worker.batch_within_s):
        staged = StagedTable(table) if table is not None else None
        outbox = Outbox(app, framing)
        try:
            for event in events:
                if staged is not None:
                    # Every record of a frame belongs to the frame's partition.
                    staged.event = event
                if event.message.topic in framing.topics:
                    for record in records_of(event):
                        step(record, staged, outbox)
                else:
                    step(event, staged, outbox)
        except Exception:
            # A bug, not bad input (steps dead-letter that). Faust would acknowledge the
            # batch and commit past it; dying like a kill -9 leaves it uncommitted, and
            # the next start replays it (the fault drill proves a kill -9 loses nothing).
            log.critical("a step failed on a batch; stopping the worker uncommitted", exc_info=True)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(EXIT_STAGE_FAILED)
        await deliver_until_acknowledged(outbox)
        if staged is not None:
            staged.apply()
        for event in events:
            await stream.ack(event)


async def deliver_until_acknowledged(outbox: Outbox, backoff_max_s: float = 10.0) -> None:
    """Deliver the outbox, sending all of it again after a failure, until Kafka takes it.

    Nothing of the batch is committed meanwhile; consumers of the outputs are
    idempotent, so messages that made it the first time do no harm twice.
    """
    backoff = 0.5
    while True:
        try:
            await outbox.deliver()
            return
        except KafkaError as exc:
            log.warning(
                "sending a batch's %d outputs failed (%r); again in %.1fs",
                len(outbox),
                exc,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, backoff_max_s)
