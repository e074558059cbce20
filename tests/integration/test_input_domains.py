"""Records Kafka can never take are refused as too large, never "retry", against a real broker.

A ~1.5 MB envelope is a TooLargeError (a BadRecordError), not a RetriableError:
before sending when it exceeds the publisher's limit, and also when only the
broker's own limit (message.max.bytes) refuses it. Its dead letter fits, and
carries the original's size and SHA-256.
"""

from __future__ import annotations

import hashlib

from ingest_adapters.publisher import DEFAULT_MAX_MESSAGE_BYTES, Publisher, record_size
from leadflow import steps
from leadflow.dead_letters import TRUNCATED_KEEP_BYTES, dead_letter_for
from leadflow.errors import BadRecordError, RetriableError, TooLargeError
from leadflow.kafka_clients import ensure_topics, make_producer
from leadflow.metrics import Metrics
from leadflow.settings import KafkaSettings
from leadflow.topics import Topics
from schemas import DeadLetter
from tests.integration.processes import read_topic

LARGE = b'{"fields": {"message": "' + b"\\u0001" * 250_000 + b'"}}'  # ~1.5 MB


async def test_a_large_envelope_is_too_large_and_its_dead_letter_fits(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    kafka = KafkaSettings(topic_prefix=topic_prefix)
    await ensure_topics(kafka, kafka_bootstrap)
    topics = Topics(topic_prefix)
    producer = make_producer(kafka, kafka_bootstrap, request_timeout_ms=5000)
    await producer.start()
    try:
        publisher = Publisher(producer, Metrics(), 10.0)
        assert 1_400_000 < len(LARGE) < 1_600_000
        try:
            await publisher.publish(topics.leads_raw, "evt-large", LARGE)
        except TooLargeError as exc:
            error = exc
        assert isinstance(error, BadRecordError)
        assert not isinstance(error, RetriableError)
        assert error.reason == "too_large"
        assert error.size == record_size(b"evt-large", LARGE)
        assert error.limit == DEFAULT_MAX_MESSAGE_BYTES

        letter = dead_letter_for(
            error, LARGE, stage=steps.WEB_FORM, detail="POST /v1/leads/web", key=b"idem-1"
        )
        key, value = letter.record()
        assert record_size(key, value) <= DEFAULT_MAX_MESSAGE_BYTES
        dlq = topics.dlq(steps.WEB_FORM)
        await publisher.publish(dlq, key.decode(), value)
        # The envelope never reached its topic; something small still does.
        await publisher.publish(topics.leads_raw, "evt-small", b"{}")
    finally:
        await producer.stop()

    [record] = await read_topic(kafka_bootstrap, dlq, 1)
    kept = DeadLetter.model_validate_json(record.value or b"")
    assert kept.original_truncated
    assert kept.original_bytes == len(LARGE)
    assert kept.original_sha256 == hashlib.sha256(LARGE).hexdigest()
    assert kept.original == LARGE[:TRUNCATED_KEEP_BYTES]
    assert (kept.reason, kept.error_class) == ("too_large", "TooLargeError")
    raw = await read_topic(kafka_bootstrap, topics.leads_raw, 1, timeout_s=5)
    assert [r.key for r in raw] == [b"evt-small"]


async def test_a_record_only_the_broker_refuses_is_too_large_too(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A producer allowed 5 MB still meets the broker's message.max.bytes (about 1 MiB)."""
    kafka = KafkaSettings(topic_prefix=topic_prefix)
    await ensure_topics(kafka, kafka_bootstrap)
    topics = Topics(topic_prefix)
    limit = 5 * 1024 * 1024
    producer = make_producer(
        kafka, kafka_bootstrap, request_timeout_ms=5000, max_request_size=limit
    )
    await producer.start()
    try:
        publisher = Publisher(producer, Metrics(), 10.0, max_message_bytes=limit)
        try:
            await publisher.publish(topics.events_crm, "lead-1", LARGE)
        except TooLargeError as exc:
            error = exc
        assert not isinstance(error, RetriableError)
        assert type(error.__cause__).__name__ == "MessageSizeTooLargeError"
        assert "too large" in error.message
        # The shared producer is still good for the next write.
        partition, offset = await publisher.publish(topics.events_crm, "lead-1", b"{}")
        assert offset >= 0
        assert partition >= 0
    finally:
        await producer.stop()
