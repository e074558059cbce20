"""What every channel's HTTP routes share: the publisher, the topics, and the dead
letter each refusal leaves with the original bytes."""

from __future__ import annotations

from ingest_adapters.publisher import Publisher
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.metrics import Metrics
from leadflow.settings import Settings
from leadflow.topics import Topics


class ChannelRoutes:
    """A channel's handlers: one publisher, and a dead letter for every refusal."""

    def __init__(self, settings: Settings, publisher: Publisher, metrics: Metrics) -> None:
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._topics = Topics(settings.kafka.topic_prefix)

    async def dead_letter(
        self, error: BadRecordError, body: bytes, stage: str, detail: str, key: str | None
    ) -> str:
        letter = dead_letter_for(
            error, body, stage=stage, detail=detail, key=key.encode() if key else None
        )
        key_bytes, value = letter.record()
        await self._publisher.publish(self._topics.dlq(stage), key_bytes.decode(), value)
        self._metrics.dead_letters.labels(stage=stage).inc()
        return letter.dead_letter_id
