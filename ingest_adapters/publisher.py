"""The one Kafka publisher every adapter shares.

`publish` returns only once Kafka acknowledged the write with acks=all on an
idempotent producer; otherwise it raises `RetriableError`, which the HTTP
layer turns into 503 so the sender retries with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from leadflow.errors import RetriableError
from leadflow.metrics import Metrics


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, metrics: Metrics, timeout_s: float) -> None:
        self._producer = producer
        self._metrics = metrics
        self._timeout_s = timeout_s

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def publish(self, topic: str, key: str | None, value: bytes) -> tuple[int, int]:
        """Write one message; return (partition, offset) once Kafka acknowledged it."""
        started = time.perf_counter()
        try:
            metadata = await asyncio.wait_for(
                self._producer.send_and_wait(topic, value, key=key.encode() if key else None),
                self._timeout_s,
            )
        except (KafkaError, TimeoutError) as exc:
            raise RetriableError(
                f"Kafka did not acknowledge the write to {topic}: {type(exc).__name__} {exc}"
            ) from exc
        self._metrics.publish_seconds.labels(topic=topic).observe(time.perf_counter() - started)
        return metadata.partition, metadata.offset
