"""Erasure support shared by every process: identifier hashes and the suppression list.

When a person is erased (GDPR Art. 17, PIPL Art. 47), each of their
identifiers (email, phone, lead id) is recorded on the compacted topic
`privacy.suppressions` as a salted SHA-256, never in clear. Every process
that writes (the normalize stage, the ClickHouse writer) follows that topic
and refuses records carrying a suppressed identifier, so a replay of the raw
topics cannot bring the person back. A tombstone on a key lifts it (for a
person who asks to be known again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import unicodedata
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from leadflow.kafka_clients import make_consumer
from leadflow.settings import KafkaSettings

log = logging.getLogger(__name__)
SALT = b"leadflow-suppression-v1|"


def identifier_hash(value: str) -> str:
    """The key an identifier is suppressed under: SHA-256 of its folded text."""
    folded = unicodedata.normalize("NFKC", value).strip().lower()
    return hashlib.sha256(SALT + folded.encode("utf-8")).hexdigest()


class SuppressionList:
    """The set of suppressed identifier hashes, kept current by following the topic."""

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self._hashes: set[str] = set(hashes)
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def mark_loaded(self) -> None:
        self._loaded = True

    async def wait_loaded(self) -> None:
        # A flag polled, not an asyncio.Event: in the Faust worker the follower and the
        # agents may run on different threads' loops, and an Event set from another
        # loop does not wake its waiter.
        while not self._loaded:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, digest: str) -> None:
        self._hashes.add(digest)

    def discard(self, digest: str) -> None:
        self._hashes.discard(digest)

    def hits(self, values: Iterable[str | None]) -> bool:
        """True when any of `values` (emails, phones, lead ids) is suppressed."""
        return bool(self._hashes) and any(
            identifier_hash(value) in self._hashes for value in values if value
        )

    async def follow(self, kafka: KafkaSettings, bootstrap: str, topic: str) -> None:
        """Read the topic from the start, set `loaded` once caught up, then keep reading."""
        consumer: AIOKafkaConsumer = make_consumer(kafka, bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = await _all_partitions(consumer, topic)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        digest = (record.key or b"").decode()
                        if record.value is None:
                            self.discard(digest)
                        else:
                            self.add(digest)
                if not self.loaded and await _caught_up(consumer, ends):
                    log.info("suppression list loaded: %d identifiers", len(self))
                    self.mark_loaded()
        finally:
            await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _all_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(50):
        # aiokafka has no public call for a topic's partitions without subscribing.
        cluster = await consumer._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} does not exist; run leadflow once to declare it")
