"""The one Kafka publisher every adapter shares.

`publish` returns only once Kafka acknowledged the write with acks=all on an
idempotent producer. A dependency failure raises `RetriableError`, which the
HTTP layer turns into 503 so the sender retries with the same idempotency
key. A record Kafka can never take (larger than `max_message_bytes` once
encoded, or refused by Kafka as too large) raises `TooLargeError` instead,
before anything is sent: a retry could never succeed, so it is a refusal
(413 with a dead letter), never a 503.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from leadflow.errors import RetriableError, TooLargeError
from leadflow.metrics import Metrics

# aiokafka's default max_request_size, which it checks each record against; the
# broker's default message.max.bytes (1,048,588) is just above it. Set both the
# producer's max_request_size and this to raise it, never above the broker's and
# the topics' max.message.bytes.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576

_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


def record_size(key: bytes | None, value: bytes) -> int:
    """The size aiokafka gives a record alone in a batch, headers and overhead included.

    The same upper-bound estimate the producer compares with max_request_size.
    """
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
    return size


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        timeout_s: float,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be above 0")
        self._producer = producer
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._max_message_bytes = max_message_bytes

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    @property
    def max_message_bytes(self) -> int:
        """The largest record (as `record_size` counts it) this publisher sends."""
        return self._max_message_bytes

    async def publish(self, topic: str, key: str | None, value: bytes) -> tuple[int, int]:
        """Write one message; return (partition, offset) once Kafka acknowledged it.

        TooLargeError (never sent) when it cannot fit; RetriableError when Kafka
        did not acknowledge it.
        """
        key_bytes = key.encode() if key else None
        size = record_size(key_bytes, value)
        if size > self._max_message_bytes:
            raise TooLargeError(
                f"the message for {topic} is {size} bytes once encoded; Kafka takes at most "
                f"{self._max_message_bytes}",
                size=size,
                limit=self._max_message_bytes,
            )
        started = time.perf_counter()
        try:
            metadata = await asyncio.wait_for(
                self._producer.send_and_wait(topic, value, key=key_bytes), self._timeout_s
            )
        except _TOO_LARGE as exc:  # the producer's or the broker's own limit is lower
            raise TooLargeError(
                f"Kafka refused the message for {topic} as too large ({size} bytes once "
                f"encoded): {type(exc).__name__}",
                size=size,
                limit=self._max_message_bytes,
            ) from exc
        except (KafkaError, TimeoutError) as exc:
            raise RetriableError(
                f"Kafka did not acknowledge the write to {topic}: {type(exc).__name__} {exc}"
            ) from exc
        self._metrics.publish_seconds.labels(topic=topic).observe(time.perf_counter() - started)
        return metadata.partition, metadata.offset
