"""The rep notifier: a routing consumer of `leads.assigned` that tells the owner.

Each team's `notify` in config/routing.yaml picks the channel: a Slack
incoming webhook, a WeCom or DingTalk group robot, email over SMTP, or the
log. Delivery is retried with exponential backoff; after the last attempt
the assignment goes to `dlq.notify` with the reason, and the partition moves
on. Delivered (and dead-lettered) assignment ids are written to the
compacted topic `notifier.delivered` before the offset is committed, and
read back at start, so a restarted notifier does not notify twice. (A crash
between a webhook's answer and that write can still repeat one message:
chat webhooks take no idempotency key.)
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from leadflow import steps
from leadflow.dead_letters import dead_letter_for_record
from leadflow.errors import BadRecordError, RetriableError
from leadflow.kafka_clients import replay_topic
from leadflow.metrics import Metrics
from leadflow.rules import Notify, RoutingRules
from leadflow.settings import KafkaSettings, NotifySettings
from leadflow.topics import Topics
from schemas import Assignment

log = logging.getLogger(__name__)
STEP = steps.NOTIFY


def headline(a: Assignment) -> str:
    who = a.full_name or a.email or a.phone or a.lead_id
    company = f" ({a.company})" if a.company else ""
    return f"New lead for {a.owner_name}: {who}{company}, grade {a.grade} ({a.score:g})"


def details(a: Assignment) -> list[str]:
    lines = [f"Source: {a.source or 'unknown'}", f"Why: {a.rule} / {a.reason}"]
    if a.email:
        lines.append(f"Email: {a.email}")
    if a.phone:
        lines.append(f"Phone: {a.phone}")
    lines.append(f"Lead: {a.lead_id}")
    return lines


def webhook_body(kind: str, a: Assignment) -> dict[str, Any]:
    """The JSON each chat tool's incoming webhook / group robot expects."""
    title = headline(a)
    body = "\n".join(details(a))
    if kind == "slack":
        return {
            "text": f"{title}\n{body}",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{body}"}}
            ],
        }
    if kind == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": f"**{title}**\n{body}"}}
    if kind == "dingtalk":
        return {
            "msgtype": "markdown",
            "markdown": {"title": title, "text": f"#### {title}\n\n" + "\n\n".join(details(a))},
        }
    raise ValueError(f"no webhook format for {kind}")


class Notifier:
    def __init__(
        self,
        settings: NotifySettings,
        topics: Topics,
        routing: RoutingRules,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        session: aiohttp.ClientSession,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._routing = routing
        self._consumer = consumer
        self._producer = producer
        self._metrics = metrics
        self._session = session
        self._stopping = asyncio.Event()
        self.delivered: set[str] = set()

    def stop(self) -> None:
        self._stopping.set()

    async def load_delivered(self, kafka: KafkaSettings, bootstrap: str) -> None:
        """Read `notifier.delivered` from the start into memory."""
        await replay_topic(
            kafka,
            bootstrap,
            self._topics.notifier_delivered,
            lambda record: self.delivered.add((record.key or b"").decode()),
        )
        log.info("%d delivered notifications on record", len(self.delivered))

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=500, max_records=200)
            for tp, messages in batch.items():
                for message in messages:
                    await self._handle(message)
                await self._consumer.commit({tp: messages[-1].offset + 1})

    async def _handle(self, message: ConsumerRecord[bytes, bytes]) -> None:
        try:
            assignment = Assignment.model_validate_json(message.value or b"")
            team = self._routing.teams.get(assignment.team)
            if team is None:
                raise BadRecordError("unknown_team", f"no team {assignment.team} in routing.yaml")
        except (ValidationError, BadRecordError) as exc:
            await self._dead_letter(message, exc)
            return
        if assignment.assignment_id in self.delivered:
            return
        last_error: Exception | None = None
        delay = self._settings.backoff_s
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                await self.deliver(team.notify, assignment)
                self._metrics.notifications.labels(kind=team.notify.kind, outcome="delivered").inc()
                await self._mark_delivered(assignment.assignment_id, "delivered")
                return
            except RetriableError as exc:
                last_error = exc
                log.warning("notifying %s (attempt %d) failed: %s", assignment.owner, attempt, exc)
                if attempt < self._settings.max_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
        self._metrics.notifications.labels(kind=team.notify.kind, outcome="failed").inc()
        error = BadRecordError(
            "delivery_failed", f"gave up after {self._settings.max_attempts} attempts: {last_error}"
        )
        await self._dead_letter(message, error)
        await self._mark_delivered(assignment.assignment_id, "dead_lettered")

    async def deliver(self, notify: Notify, assignment: Assignment) -> None:
        """One delivery attempt; RetriableError when the channel did not take it."""
        if notify.kind == "log":
            log.info("%s | %s", headline(assignment), " | ".join(details(assignment)))
            return
        if notify.kind == "email":
            to = notify.email_to or assignment.owner_email
            if not to:
                raise RetriableError("no address: set notify.email_to or the rep's email")
            await asyncio.to_thread(self._send_mail, to, assignment)
            return
        assert notify.url is not None
        try:
            async with self._session.post(
                notify.url,
                json=webhook_body(notify.kind, assignment),
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
            ) as response:
                text = await response.text()
                if response.status >= 300:
                    raise RetriableError(f"{notify.kind} answered {response.status}: {text[:200]}")
                if notify.kind in ("wecom", "dingtalk"):
                    # Group robots answer 200 with an error code in the body.
                    payload = await response.json(content_type=None)
                    if payload.get("errcode", 0) != 0:
                        raise RetriableError(f"{notify.kind} refused: {payload}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RetriableError(f"{notify.kind} unreachable: {exc}") from exc

    def _send_mail(self, to: str, assignment: Assignment) -> None:
        mail = EmailMessage()
        mail["From"] = self._settings.smtp_from
        mail["To"] = to
        mail["Subject"] = headline(assignment)
        mail.set_content("\n".join(details(assignment)))
        try:
            with smtplib.SMTP(
                self._settings.smtp_host, self._settings.smtp_port, timeout=self._settings.timeout_s
            ) as smtp:
                if self._settings.smtp_starttls:
                    smtp.starttls()
                if self._settings.smtp_username and self._settings.smtp_password:
                    smtp.login(
                        self._settings.smtp_username,
                        self._settings.smtp_password.get_secret_value(),
                    )
                smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as exc:
            raise RetriableError(f"SMTP {self._settings.smtp_host}: {exc}") from exc

    async def _mark_delivered(self, assignment_id: str, outcome: str) -> None:
        self.delivered.add(assignment_id)
        await self._producer.send_and_wait(
            self._topics.notifier_delivered, outcome.encode(), key=assignment_id.encode()
        )

    async def _dead_letter(self, message: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        letter = dead_letter_for_record(error, message, stage=STEP)
        self._metrics.dead_letters.labels(stage=STEP).inc()
        key, value = letter.record()
        await self._producer.send_and_wait(self._topics.dlq(STEP), value, key=key)
