"""The social lead-ads fetcher: announced leads in, whole leads on `leads.raw` out.

A Meta or LinkedIn webhook only says "lead N exists". The HTTP handler records
that on `social.notifications` at once (keyed by the provider's lead id) and
answers; this service reads the notifications, fetches each lead from the
provider (retries and backoff live in `SocialFetcher`), publishes the
envelope to `leads.raw` under the same event id a redelivery or an export
backfill gets, and only then commits the notification's offset.

A lead that cannot be had after the last try goes to `dlq.social_ads` with
the notification as its original bytes, so `leadflow` can replay it. A
missing access token is not the lead's fault: the notification stays
uncommitted and the service says which setting to fill in, once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from ingest_adapters.social.common import STEP, LeadgenRef
from ingest_adapters.social.fetcher import SocialFetcher
from leadflow.dead_letters import dead_letter_for_record
from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.metrics import Metrics
from leadflow.topics import Topics

log = logging.getLogger(__name__)
CONFIG_WAIT_S = 60.0


class SocialLeadService:
    def __init__(
        self,
        topics: Topics,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        fetcher: SocialFetcher,
        metrics: Metrics,
    ) -> None:
        self._topics = topics
        self._consumer = consumer
        self._producer = producer
        self._fetcher = fetcher
        self._metrics = metrics
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=500, max_records=100)
            for tp, messages in batch.items():
                for message in messages:
                    if not await self._handle(message):
                        # Stopped while waiting for configuration: nothing past here is committed.
                        return
                await self._consumer.commit({tp: messages[-1].offset + 1})

    async def _handle(self, message: ConsumerRecord[bytes, bytes]) -> bool:
        """Publish the lead or its dead letter; False only when stopped before either."""
        warned_at = 0.0
        while not self._stopping.is_set():
            try:
                ref = LeadgenRef.model_validate_json(message.value or b"")
                lead = await self._fetcher.fetch(ref)
            except ValidationError as exc:
                await self._dead_letter(message, BadRecordError("invalid_notification", str(exc)))
                return True
            except BadRecordError as exc:
                await self._dead_letter(message, exc)
                return True
            except ConfigurationError as exc:
                if time.monotonic() - warned_at > CONFIG_WAIT_S:
                    log.error("social leads are waiting in %s: %s", message.topic, exc)
                    warned_at = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=5)
                continue
            await self._producer.send_and_wait(
                self._topics.leads_raw, lead.model_dump_json().encode(), key=lead.event_id.encode()
            )
            self._metrics.social_leads.labels(provider=ref.provider, outcome="published").inc()
            return True
        return False

    async def _dead_letter(self, message: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        letter = dead_letter_for_record(error, message, stage=STEP)
        key, value = letter.record()
        await self._producer.send_and_wait(self._topics.dlq(STEP), value, key=key)
        self._metrics.dead_letters.labels(stage=STEP).inc()
        self._metrics.social_leads.labels(
            provider=_provider(message), outcome="dead_lettered"
        ).inc()
        log.warning("social lead dead-lettered: %s", error)


def _provider(message: ConsumerRecord[bytes, bytes]) -> str:
    try:
        return LeadgenRef.model_validate_json(message.value or b"").provider
    except ValidationError:
        return "unknown"
