"""The nurture mailer: a consumer of `nurture.sends` that delivers each email once.

Input: `nurture.sends` (key: lead id), `NurtureEmail` records, read by group
`leadflow.mailer`. Output:
- the email, over SMTP or posted to an email provider's JSON endpoint
  (`NURTURE_WEBHOOK_URL`, with `Idempotency-Key: <send id>`); its links are
  signed click links, it carries an open pixel, an unsubscribe line and the
  RFC 8058 one-click `List-Unsubscribe` headers (leadflow/tracking.py);
- `nurture.events` (key: lead id): `sent`, `bounced` or `skipped`, with event
  id `<send id>:<kind>`, so a repeated event replaces itself downstream;
- `nurture.suppressions` (key: identifier hash): a hard bounce's address, so
  no later email goes to it;
- `dlq.mailer`: a record that is no `NurtureEmail`, a `to` that is no email
  address (`bad_address`), and an email that still failed after
  `NURTURE_MAX_ATTEMPTS` (`delivery_failed`).

Nobody suppressed is mailed: the mailer follows `privacy.suppressions`
(erasure) and `nurture.suppressions` (unsubscribes, bounces) and sends
nothing until both are read to their end.

Idempotency key: the send id. It is written to the compacted topic
`mailer.delivered` after the outcome (sent, bounced, skipped, dead-lettered)
and before the offset is committed, and read back whenever partitions are
assigned. A rebalance waits for the email in flight, so the next owner of
the partition sees its outcome. A crash between the provider's answer and
that write can still repeat one email; it repeats with the same
`Message-ID: <send id@leadflow>` (and the same idempotency key), so the
receiving side can drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiohttp
import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError

from leadflow import steps
from leadflow.dead_letters import dead_letter_for_record
from leadflow.errors import BadRecordError, LeadflowError, RetriableError
from leadflow.kafka_clients import make_consumer, replay_topic
from leadflow.metrics import Metrics
from leadflow.normalize import normalize_email
from leadflow.settings import NurtureSettings, Settings
from leadflow.suppression import SuppressionList, identifier_hash
from leadflow.topics import Topics
from leadflow.tracking import LinkKind, TrackingClaims, link_url, tracking_secret
from schemas.nurture import NurtureEmail, NurtureEvent, NurtureEventKind

log = logging.getLogger(__name__)
STEP = steps.MAILER
MAX_BATCH = 200  # records handled between two commits (each outcome is marked before)
UNSUBSCRIBE = {"en": "Unsubscribe", "zh": "退订"}
# Webhook answers that speak of us (credentials, URL, size) or ask for patience:
# never a reason to stop mailing the recipient.
_NOT_THE_RECIPIENT = frozenset({401, 403, 404, 405, 407, 408, 409, 413, 415, 429})
# What may not follow a URL in text: it would make it a longer, different URL. Other
# text (Chinese right after a link, a closing bracket, a full stop) ends it.
_URL_END = r"(?![A-Za-z0-9_/#?&=%~+@-]|[.,;:!][A-Za-z0-9_])"


class RecipientRefused(LeadflowError):
    """The provider refused the recipient or the message for good (a 5xx, a webhook 4xx).

    Not retried: recorded as a `bounced` event with the provider's reply, and the
    address goes to `nurture.suppressions`, so nothing more is sent to it.
    """

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class Rendered:
    """One email as sent: the same content goes to SMTP or to the provider's endpoint."""

    send_id: str
    sender: str
    to: str
    subject: str
    text: str
    html: str
    headers: Mapping[str, str]


def claims_for(email: NurtureEmail, kind: LinkKind, link: int | None = None) -> TrackingClaims:
    return TrackingClaims(
        kind=kind,
        send_id=email.send_id,
        lead_id=email.lead_id,
        sequence=email.sequence,
        step=email.step,
        template=email.template,
        link=link,
    )


def click_links(email: NurtureEmail, public_url: str, secret: bytes) -> dict[str, str]:
    """Each template URL → its signed click link; a URL listed twice keeps its first index."""
    clicks: dict[str, str] = {}
    for index, url in enumerate(email.links):
        if url not in clicks:
            clicks[url] = link_url(public_url, secret, claims_for(email, "click", index))
    return clicks


def _url_pattern(urls: Mapping[str, str]) -> re.Pattern[str] | None:
    # Longest first, so a URL that extends another is never cut at the shorter one.
    if not urls:
        return None
    ordered = sorted(urls, key=len, reverse=True)
    return re.compile("(?:" + "|".join(re.escape(u) for u in ordered) + ")" + _URL_END)


def text_body(text: str, clicks: Mapping[str, str], unsubscribe: str, label: str) -> str:
    """The plain text with every template URL replaced by its click link, then the opt-out."""
    pattern = _url_pattern(clicks)
    tracked = pattern.sub(lambda m: clicks[m.group(0)], text) if pattern else text
    return f"{tracked.rstrip()}\n\n{label}: {unsubscribe}\n"


def html_body(
    text: str, clicks: Mapping[str, str], unsubscribe: str, opened: str, label: str, locale: str
) -> str:
    """The same text as HTML: escaped, each template URL an <a> to its click link, a pixel."""
    pattern = _url_pattern(clicks)
    parts: list[str] = []
    start = 0
    for match in pattern.finditer(text) if pattern else ():
        parts.append(html.escape(text[start : match.start()]))
        href = html.escape(clicks[match.group(0)])
        parts.append(f'<a href="{href}">{html.escape(match.group(0))}</a>')
        start = match.end()
    parts.append(html.escape(text[start:].rstrip()))
    body = "".join(parts).replace("\n", "<br>\n")
    return (
        f'<!doctype html>\n<html lang="{html.escape(locale)}"><body>\n<div>{body}</div>\n'
        f'<p><a href="{html.escape(unsubscribe)}">{html.escape(label)}</a></p>\n'
        f'<img src="{html.escape(opened)}" width="1" height="1" alt="" style="border:0">\n'
        "</body></html>\n"
    )


def render(email: NurtureEmail, sender: str, public_url: str, secret: bytes) -> Rendered:
    """The email as the recipient gets it: tracked links, opt-out line and headers, pixel."""
    clicks = click_links(email, public_url, secret)
    unsubscribe = link_url(public_url, secret, claims_for(email, "unsubscribe"))
    opened = link_url(public_url, secret, claims_for(email, "open"))
    label = UNSUBSCRIBE.get(email.locale, UNSUBSCRIBE["en"])
    return Rendered(
        send_id=email.send_id,
        sender=sender,
        to=email.to.strip(),
        # A header holds one line; a line break from a lead's field must not start another.
        subject=" ".join(email.subject.split()),
        text=text_body(email.text, clicks, unsubscribe, label),
        html=html_body(email.text, clicks, unsubscribe, opened, label, email.locale),
        headers={
            "Message-ID": f"<{email.send_id}@leadflow>",
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def to_message(rendered: Rendered) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = rendered.sender
    mail["To"] = rendered.to
    mail["Subject"] = rendered.subject
    for name, value in rendered.headers.items():
        mail[name] = value
    mail.set_content(rendered.text)
    mail.add_alternative(rendered.html, subtype="html")
    return mail


def webhook_body(rendered: Rendered) -> dict[str, Any]:
    return {
        "send_id": rendered.send_id,
        "to": rendered.to,
        "from": rendered.sender,
        "subject": rendered.subject,
        "text": rendered.text,
        "html": rendered.html,
        "headers": dict(rendered.headers),
    }


def checked_address(to: str) -> str:
    """The recipient's address, normalized; a bad record when it is none."""
    try:
        return normalize_email(to)
    except ValueError as exc:
        raise BadRecordError("bad_address", f"`to` is not an email address: {exc}") from exc


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {text}".strip()


def smtp_failure(exc: smtplib.SMTPException | OSError) -> RecipientRefused | RetriableError:
    """A bounce only when the server refused the recipient or the message with a 5xx.

    A 5xx about us (sender refused, authentication) is not the recipient's doing:
    it is retried and then dead-lettered, never turned into a suppression.
    """
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        answers = list(exc.recipients.values())
        replies = "; ".join(_reply(code, message) for code, message in answers)
        if answers and all(code >= 500 for code, _ in answers):
            return RecipientRefused(replies)
        return RetriableError(f"recipient deferred: {replies}")
    if isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code >= 500:
        return RecipientRefused(_reply(exc.smtp_code, exc.smtp_error))
    return RetriableError(f"SMTP: {exc}")


def webhook_failure(status: int, text: str) -> RecipientRefused | RetriableError | None:
    """None when the provider took the email; a 4xx about the email itself is a bounce."""
    if status < 300:
        return None
    if 400 <= status < 500 and status not in _NOT_THE_RECIPIENT:
        return RecipientRefused(f"{status} {text[:500]}".strip())
    return RetriableError(f"email provider answered {status}: {text[:200]}")


def poll_interval_ms(nurture: NurtureSettings) -> int:
    """Longer than one email can take with every attempt timing out (7 SMTP round trips)."""
    backoffs = nurture.backoff_s * (2 ** (nurture.max_attempts - 1) - 1)
    worst_s = nurture.max_attempts * 7 * nurture.timeout_s + backoffs + 60
    return max(300_000, int(worst_s * 1000))


def mailer_consumer(settings: Settings, bootstrap: str) -> AIOKafkaConsumer:
    """The mailer's consumer, unsubscribed: `Mailer.start` subscribes it with its listener."""
    return make_consumer(
        settings.kafka,
        bootstrap,
        group_id=Topics(settings.kafka.topic_prefix).group("mailer"),
        max_poll_interval_ms=poll_interval_ms(settings.nurture),
    )


class _Handover(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._mailer.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._mailer.take(assigned)


class Mailer:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        session: aiohttp.ClientSession,
    ) -> None:
        self._settings = settings
        self._nurture = settings.nurture
        self._topics = topics
        self._consumer = consumer
        self._producer = producer
        self._metrics = metrics
        self._session = session
        self._kind = "nurture_webhook" if self._nurture.webhook_url else "nurture_smtp"
        self._bootstrap = ""
        self._secret = b""
        self._stopping = asyncio.Event()
        # Held while one record is handled and committed, and while partitions change hands.
        self._busy = asyncio.Lock()
        self._owned: set[TopicPartition] = set()
        self._handover_failure: Exception | None = None
        self.erased = SuppressionList()
        self.unsubscribed = SuppressionList()
        self.delivered: set[str] = set()
        self._smtp: smtplib.SMTP | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def start(self, bootstrap: str) -> None:
        """Subscribe and join the group; `delivered` is read as partitions are assigned."""
        self._bootstrap = bootstrap
        self._secret = tracking_secret(self._settings)
        self._consumer.subscribe([self._topics.nurture_sends], listener=_Handover(self))
        await self._consumer.start()

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Give partitions up only once the email in flight has its outcome committed."""
        async with self._busy:
            self._owned -= set(revoked)

    async def take(self, assigned: set[TopicPartition]) -> None:
        """Re-read `mailer.delivered`: the previous owner of a partition wrote its outcomes."""
        async with self._busy:
            try:
                await replay_topic(
                    self._settings.kafka,
                    self._bootstrap,
                    self._topics.mailer_delivered,
                    lambda record: self.delivered.add((record.key or b"").decode()),
                )
            except Exception as exc:
                # aiokafka only logs a listener's failure; `run` raises it instead.
                self._handover_failure = exc
                raise
            self._owned = set(assigned)
        log.info("%d nurture emails on record as done", len(self.delivered))

    async def run(self) -> None:
        followers = [
            asyncio.create_task(
                suppressions.follow(self._settings.kafka, self._bootstrap, topic),
                name=f"mailer-follows-{topic}",
            )
            for suppressions, topic in (
                (self.erased, self._topics.privacy_suppressions),
                (self.unsubscribed, self._topics.nurture_suppressions),
            )
        ]
        try:
            while not (self.erased.loaded and self.unsubscribed.loaded):
                self._check(followers)
                if self._stopping.is_set():
                    return
                await asyncio.sleep(0.05)
            while not self._stopping.is_set():
                self._check(followers)
                batch = await self._consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
                for tp, messages in batch.items():
                    if not await self._settle(tp, messages):
                        await asyncio.sleep(0.05)
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            await asyncio.to_thread(self._close_smtp)

    def _check(self, followers: list[asyncio.Task[None]]) -> None:
        """Stop the mailer when it can no longer tell who is suppressed or what was sent."""
        if self._handover_failure is not None:
            raise self._handover_failure
        for task in followers:
            if task.done():
                task.result()
                raise RetriableError(f"{task.get_name()} stopped")

    async def _settle(
        self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]
    ) -> bool:
        """Handle a partition's records in order and commit past those handled; False when
        some are left for later. Each email's outcome is on `mailer.delivered` before the
        next is handled, so a crash before the commit replays only emails already marked
        done: committing once per batch costs no second copy."""
        async with self._busy:
            done: int | None = None
            left: int | None = None
            for message in messages:
                if self._stopping.is_set() or tp not in self._owned:
                    # Stopping, or fetched while partitions change hands: read it again
                    # if the partition stays ours.
                    left = message.offset
                    break
                if not await self._handle(message):
                    left = message.offset
                    break
                done = message.offset
            if left is not None:
                with contextlib.suppress(IllegalStateError):
                    self._consumer.seek(tp, left)
            if done is not None:
                try:
                    await self._consumer.commit({tp: done + 1})
                except (CommitFailedError, IllegalStateError) as exc:
                    # The partition went to another mailer, which reads the outcomes written.
                    log.warning("commit of %s at %d failed: %s", tp, done, exc)
            return left is None

    async def _handle(self, message: ConsumerRecord[bytes, bytes]) -> bool:
        """Record one email's outcome; False when stopping cut its retries short."""
        try:
            email = NurtureEmail.model_validate_json(message.value or b"")
        except ValidationError as exc:
            await self._dead_letter(message, exc)
            return True
        if email.send_id in self.delivered:
            return True
        try:
            address = checked_address(email.to)
        except BadRecordError as exc:
            await self._dead_letter(message, exc)
            await self._mark(email.send_id, "dead_lettered")
            return True
        why = self._suppressed(email, address)
        if why:
            self._count("skipped")
            await self._publish_event(email, "skipped", f"suppressed: {why}")
            await self._mark(email.send_id, "skipped")
            return True
        rendered = render(email, self._nurture.smtp_from, self._nurture.public_url, self._secret)
        return await self._send(message, email, rendered, address)

    def _suppressed(self, email: NurtureEmail, address: str) -> str:
        """Why the recipient may not be mailed, or "" (an erasure also lists the lead id)."""
        if self.erased.hits((email.to, address, email.lead_id)):
            return "erased"
        # An unsubscribe link names the lead (its token holds no address); the nurture
        # stage adds the person's addresses when it sees the unsubscribe.
        if self.unsubscribed.hits((email.to, address, email.lead_id)):
            return "unsubscribed or bounced"
        return ""

    async def _send(
        self,
        message: ConsumerRecord[bytes, bytes],
        email: NurtureEmail,
        rendered: Rendered,
        address: str,
    ) -> bool:
        last_error: Exception | None = None
        delay = self._nurture.backoff_s
        for attempt in range(1, self._nurture.max_attempts + 1):
            try:
                await self.deliver(rendered)
            except RecipientRefused as exc:
                await self._bounced(email, address, exc.reply)
                return True
            except RetriableError as exc:
                last_error = exc
                log.warning("nurture email %s (attempt %d): %s", email.send_id, attempt, exc)
                if attempt < self._nurture.max_attempts:
                    if await self._interrupted(delay):
                        return False
                    delay *= 2
                continue
            self._count("sent")
            # Both before the commit; side by side, one round trip to the broker.
            await asyncio.gather(
                self._publish_event(email, "sent"), self._mark(email.send_id, "sent")
            )
            return True
        self._count("failed")
        error = BadRecordError(
            "delivery_failed", f"gave up after {self._nurture.max_attempts} attempts: {last_error}"
        )
        await self._dead_letter(message, error)
        await self._mark(email.send_id, "dead_lettered")
        return True

    async def _interrupted(self, delay: float) -> bool:
        """Wait `delay` before the next attempt; True when the mailer is stopping meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return self._stopping.is_set()

    async def deliver(self, rendered: Rendered) -> None:
        """One attempt; RetriableError for a temporary failure, RecipientRefused for a bounce."""
        if self._nurture.webhook_url:
            await self._post(self._nurture.webhook_url, rendered)
        else:
            await asyncio.to_thread(self._send_mail, rendered)

    async def _post(self, url: str, rendered: Rendered) -> None:
        try:
            async with self._session.post(
                url,
                json=webhook_body(rendered),
                headers={"Idempotency-Key": rendered.send_id},
                timeout=aiohttp.ClientTimeout(total=self._nurture.timeout_s),
            ) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetriableError(f"email provider unreachable: {exc}") from exc
        failure = webhook_failure(status, text)
        if failure is not None:
            raise failure

    def _send_mail(self, rendered: Rendered) -> None:
        """Send over the open SMTP session (opened at need, kept between emails: a session
        per email cost a connection, EHLO and QUIT each); a session the server dropped
        is opened again once for the same email."""
        message = to_message(rendered)
        for fresh in (False, True):
            try:
                if self._smtp is None or fresh:
                    self._close_smtp()
                    self._smtp = self._open_smtp()
                    fresh = True
                self._smtp.send_message(message)
                return
            except smtplib.SMTPServerDisconnected as exc:
                self._close_smtp()
                if fresh:
                    raise smtp_failure(exc) from exc
            except smtplib.SMTPRecipientsRefused as exc:
                # The session is fine: reset it for the next email.
                if self._smtp is not None:
                    with contextlib.suppress(smtplib.SMTPException, OSError):
                        self._smtp.rset()
                raise smtp_failure(exc) from exc
            except (smtplib.SMTPException, OSError) as exc:
                self._close_smtp()
                raise smtp_failure(exc) from exc

    def _open_smtp(self) -> smtplib.SMTP:
        nurture = self._nurture
        smtp = smtplib.SMTP(nurture.smtp_host, nurture.smtp_port, timeout=nurture.timeout_s)
        try:
            if nurture.smtp_starttls:
                smtp.starttls()
            if nurture.smtp_username and nurture.smtp_password:
                smtp.login(nurture.smtp_username, nurture.smtp_password.get_secret_value())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _close_smtp(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp.close()
            self._smtp = None

    async def _bounced(self, email: NurtureEmail, address: str, reply: str) -> None:
        """Suppress the address first: a crash after it leaves at worst a missing event."""
        self._count("bounced")
        digest = identifier_hash(address)
        self.unsubscribed.add(digest)
        record = orjson.dumps({"reason": "hard_bounce", "at": datetime.now(UTC).isoformat()})
        await self._producer.send_and_wait(
            self._topics.nurture_suppressions, record, key=digest.encode()
        )
        await self._publish_event(email, "bounced", reply)
        await self._mark(email.send_id, "bounced")

    async def _publish_event(
        self, email: NurtureEmail, kind: NurtureEventKind, detail: str = ""
    ) -> None:
        event = NurtureEvent(
            event_id=f"{email.send_id}:{kind}",
            lead_id=email.lead_id,
            sequence=email.sequence,
            step=email.step,
            kind=kind,
            at=datetime.now(UTC),
            send_id=email.send_id,
            detail=detail[:1000],
        )
        await self._producer.send_and_wait(
            self._topics.nurture_events,
            event.model_dump_json().encode(),
            key=email.lead_id.encode(),
        )

    async def _mark(self, send_id: str, outcome: str) -> None:
        self.delivered.add(send_id)
        await self._producer.send_and_wait(
            self._topics.mailer_delivered, outcome.encode(), key=send_id.encode()
        )

    def _count(self, outcome: str) -> None:
        self._metrics.notifications.labels(kind=self._kind, outcome=outcome).inc()

    async def _dead_letter(self, message: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        letter = dead_letter_for_record(error, message, stage=STEP)
        self._metrics.dead_letters.labels(stage=STEP).inc()
        key, value = letter.record()
        await self._producer.send_and_wait(self._topics.dlq(STEP), value, key=key)
