"""Kafka clients configured on purpose, and topic declaration.

aiokafka's defaults (acks=1, no idempotence, auto-commit, `latest`) suit none
of leadflow's roles, so every client is built here with each choice stated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from leadflow.errors import RetriableError
from leadflow.settings import KafkaSettings
from leadflow.topics import Topics

log = logging.getLogger(__name__)


def security(kafka: KafkaSettings) -> dict[str, Any]:
    """The one mapping of leadflow's Kafka security settings, as aiokafka options
    (`security_protocol`, `ssl_context`, `sasl_*`); the worker's Faust credentials are
    made from it too (`streams.app.broker_credentials`)."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return options


def make_producer(kafka: KafkaSettings, bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """A producer whose acknowledged write survives a broker failover, without duplicates."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        **security(kafka),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    kafka: KafkaSettings, bootstrap: str, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that commits only when told to and starts new groups at the beginning."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "request_timeout_ms": int(kafka.request_timeout_s * 1000) + 30_000,
        **security(kafka),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def topic_config(kafka: KafkaSettings, topics: Topics, name: str) -> dict[str, str]:
    """How a topic keeps its records.

    Dead-letter topics are keyed by dead-letter id and both compacted and
    time-limited: an erasure's tombstone removes a letter once its segment
    rolls (`KAFKA_DLQ_SEGMENT_MS`), and every letter goes after
    `KAFKA_DLQ_RETENTION_DAYS` anyway.
    """
    if name in topics.compacted():
        return {"cleanup.policy": "compact"}
    if name in topics.all_dlq():
        return {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(kafka.dlq_retention_days * 86_400_000),
            "segment.ms": str(kafka.dlq_segment_ms),
            "min.cleanable.dirty.ratio": "0.01",
        }
    return {}


async def ensure_topics(
    kafka: KafkaSettings,
    bootstrap: str,
    timeout_s: float = 60.0,
    extra: dict[str, int] | None = None,
) -> None:
    """Declare every product topic, and `extra` compacted ones with their partition counts.

    Already existing topics are left as they are.
    """
    topics = Topics(kafka.topic_prefix)
    extra = extra or {}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security(kafka))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    name,
                    kafka.partitions,
                    kafka.replication_factor,
                    topic_configs=topic_config(kafka, topics, name),
                )
                for name in topics.all()
                if name not in existing
            ]
            wanted += [
                NewTopic(
                    name,
                    partitions,
                    kafka.replication_factor,
                    topic_configs={"cleanup.policy": "compact"},
                )
                for name, partitions in extra.items()
                if name not in existing
            ]
            if wanted:
                # Another process may have declared them first.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(wanted)
        except KafkaConnectionError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RetriableError(f"Kafka at {bootstrap} is unreachable: {exc}") from exc
            await asyncio.sleep(0.5)
            continue
        finally:
            await admin.close()
        if wanted:
            # A write right after creation can wait seconds for a leader: wait here instead.
            await wait_for_topics(
                kafka, bootstrap, {t.name: t.num_partitions for t in wanted}, timeout_s
            )
        return


async def wait_for_topics(
    kafka: KafkaSettings, bootstrap: str, partitions: dict[str, int], timeout_s: float = 60.0
) -> None:
    """Return once the cluster's metadata shows every topic with its partitions led.

    Creating a topic returns before every broker serves it; a client that reads
    metadata in between caches "0 partitions" (Faust then refuses its tables).
    """
    consumer = make_consumer(kafka, bootstrap, group_id=None)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            # aiokafka has no public call for fresh metadata of unsubscribed topics.
            cluster = await consumer._client.fetch_all_metadata()
            missing = [
                name
                for name, count in partitions.items()
                if len(cluster.partitions_for_topic(name) or ()) < count
                or any(
                    cluster.leader_for_partition(TopicPartition(name, p)) in (None, -1)
                    for p in range(count)
                )
            ]
            if not missing:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RetriableError(f"topics not ready after {timeout_s:.0f}s: {missing}")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def consumer_lag(
    kafka: KafkaSettings, bootstrap: str, groups: dict[str, list[str]]
) -> dict[str, int]:
    """Messages each group has not committed past, by `group topic[partition]`; {} when none.

    A partition a group never committed on counts from its start.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security(kafka))
    reader = make_consumer(kafka, bootstrap, group_id=None)
    await admin.start()
    await reader.start()
    try:
        behind: dict[str, int] = {}
        for group, topics in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            parts = [TopicPartition(t, p) for t in topics for p in range(kafka.partitions)]
            ends = await reader.end_offsets(parts)
            for tp in parts:
                done = max(committed[tp].offset, 0) if tp in committed else 0
                if ends[tp] > done:
                    behind[f"{group} {tp.topic}[{tp.partition}]"] = ends[tp] - done
        return behind
    finally:
        await reader.stop()
        await admin.close()


async def replay_topic(
    kafka: KafkaSettings,
    bootstrap: str,
    topics: str | Sequence[str],
    on_record: Callable[[ConsumerRecord[bytes, bytes]], None],
) -> None:
    """Hand every record of `topics` (one name or several), from the start to the end each
    partition had when reading began, to `on_record`.

    Every partition is assigned by name (no group, no wait for an assignment), and
    empty ones are done at once; a topic that does not exist has nothing to replay.
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    reader = make_consumer(kafka, bootstrap, group_id=None)
    await reader.start()
    try:
        partitions = await topic_partitions(reader, names)
        if not partitions:
            return
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        while not await caught_up(reader, ends):
            batch = await reader.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.offset < ends[TopicPartition(record.topic, record.partition)]:
                        on_record(record)
    finally:
        await reader.stop()


async def caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def topic_partitions(consumer: AIOKafkaConsumer, names: list[str]) -> list[TopicPartition]:
    """Every partition of the named topics that exist, from one metadata request."""
    # aiokafka has no public call for a topic's partitions without subscribing.
    cluster = await consumer._client.fetch_all_metadata()
    return [
        TopicPartition(name, p)
        for name in names
        for p in sorted(cluster.partitions_for_topic(name) or ())
    ]


async def all_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(50):
        found = await topic_partitions(consumer, [topic])
        if found:
            return found
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} does not exist; run leadflow once to declare it")


async def follow_topic(
    kafka: KafkaSettings,
    bootstrap: str,
    topic: str,
    on_record: Callable[[ConsumerRecord[bytes, bytes]], None],
    on_caught_up: Callable[[], None],
) -> None:
    """Hand every record of every partition of `topic`, from the start, to `on_record`;
    call `on_caught_up` once the end it had when reading began is reached; then keep
    reading until cancelled. For compacted topics every process follows whole (the
    suppression lists, the learned model)."""
    consumer = make_consumer(kafka, bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = await all_partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        caught = False
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    on_record(record)
            if not caught and await caught_up(consumer, ends):
                caught = True
                on_caught_up()
    finally:
        await consumer.stop()
