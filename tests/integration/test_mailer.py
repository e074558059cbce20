"""The nurture mailer against the real broker and a real SMTP server (aiosmtpd).

Only the outside world is stood in for: a mail server on 127.0.0.1 that
refuses or defers chosen recipients, and an email provider's JSON endpoint.
"""

from __future__ import annotations

import asyncio
import email
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from leadflow.kafka_clients import ensure_topics, make_producer
from leadflow.metrics import Metrics
from leadflow.settings import KafkaSettings, NurtureSettings, Settings
from leadflow.suppression import SuppressionList, identifier_hash
from leadflow.topics import Topics
from leadflow.tracking import tracking_secret, verify
from leadflow_tools.broker.local import free_port
from leadflow_tools.stack import spawn, wait_healthy
from schemas import DeadLetter
from schemas.nurture import NurtureEmail, NurtureEvent
from sinks.mailer import Mailer, mailer_consumer
from tests.integration.processes import read_topic
from tests.keys import env as keys_env

TOUR = "https://www.example.com/tour"
PRICING = "https://www.example.com/tour/pricing"
PUBLIC = "https://t.example.com"
GONE = "gone@example.com"


class Inbox:
    """An SMTP server's handler: refuses `gone`, defers each of `deferred` so many times."""

    def __init__(self) -> None:
        self.deferred: dict[str, int] = {}
        self.rcpt_attempts: Counter[str] = Counter()
        self.mails: list[EmailMessage] = []
        self.data_delay_s = 0.0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts[address] += 1
        if address == GONE:
            return "550 5.1.1 no such user"
        if self.deferred.get(address, 0) > 0:
            self.deferred[address] -= 1
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.data_delay_s)
        parsed = email.message_from_bytes(envelope.original_content, policy=default)
        assert isinstance(parsed, EmailMessage)
        self.mails.append(parsed)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails if m["To"] == address]


@pytest.fixture
def inbox() -> Iterator[tuple[int, Inbox]]:
    handler = Inbox()
    port = free_port()
    smtp = Controller(handler, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        yield port, handler
    finally:
        smtp.stop()


@pytest.fixture
async def settings(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, inbox: tuple[int, Inbox]
) -> Settings:
    kafka = KafkaSettings(topic_prefix=topic_prefix)
    await ensure_topics(kafka, kafka_bootstrap)
    return Settings(
        data_dir=tmp_path,
        kafka=kafka,
        nurture=NurtureSettings(
            smtp_port=inbox[0],
            smtp_from="Acme <news@acme.example>",
            public_url=PUBLIC,
            secret=SecretStr("integration-secret"),
            max_attempts=3,
            backoff_s=0.05,
            timeout_s=5,
        ),
    )


def make_email(n: int, **overrides: Any) -> NurtureEmail:
    values: dict[str, Any] = {
        "send_id": f"send-{n}",
        "lead_id": f"lead-{n}",
        "sequence": "welcome",
        "step": "1",
        "template": "welcome",
        "locale": "en",
        "to": f"person{n}@example.com",
        "subject": f"Welcome to Acme, person {n}",
        "text": f"Hello,\nour tour: {TOUR}\nprices: {PRICING}\nthe tour again: {TOUR}.\n",
        "links": [TOUR, PRICING],
        "due_at": datetime.now(UTC),
    }
    return NurtureEmail(**{**values, **overrides})


async def publish(bootstrap: str, topic: str, *records: NurtureEmail | bytes) -> None:
    producer = make_producer(KafkaSettings(), bootstrap)
    await producer.start()
    try:
        for record in records:
            if isinstance(record, NurtureEmail):
                value, key = record.model_dump_json().encode(), record.lead_id.encode()
            else:
                # Under the key of the first test email: on its partition and before it, so
                # a mailer that has done that email has read this record too.
                value, key = record, b"lead-1"
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def run_mailer(
    bootstrap: str,
    settings: Settings,
    until: Callable[[Mailer], bool],
    max_wait_s: float = 30,
    metrics: Metrics | None = None,
) -> Mailer:
    """A mailer as the server runs it, until `until(mailer)` holds (or `max_wait_s` passed)."""
    producer = make_producer(settings.kafka, bootstrap)
    consumer = mailer_consumer(settings, bootstrap)
    await producer.start()
    async with aiohttp.ClientSession() as session:
        topics = Topics(settings.kafka.topic_prefix)
        mailer = Mailer(settings, topics, consumer, producer, metrics or Metrics(), session)
        await mailer.start(bootstrap)
        task = asyncio.create_task(mailer.run())
        try:
            for _ in range(int(max_wait_s * 10)):
                if until(mailer) or task.done():
                    break
                await asyncio.sleep(0.1)
        finally:
            mailer.stop()
            await task
            await consumer.stop()
            await producer.stop()
    return mailer


async def events(bootstrap: str, topics: Topics, expected: int) -> list[NurtureEvent]:
    found = await read_topic(bootstrap, topics.nurture_events, expected)
    return [NurtureEvent.model_validate_json(m.value or b"") for m in found]


async def dead_letters(bootstrap: str, topics: Topics, expected: int) -> list[DeadLetter]:
    found = await read_topic(bootstrap, topics.dlq("mailer"), expected)
    return [DeadLetter.model_validate_json(m.value or b"") for m in found]


async def reset_group(bootstrap: str, topics: Topics, partitions: int) -> None:
    """Point the mailer's group back at the first offset of every partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topics.group("mailer"), enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topics.nurture_sends, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.commit(dict.fromkeys(parts, 0))
    finally:
        await consumer.stop()


def done(*send_ids: str) -> Callable[[Mailer], bool]:
    return lambda mailer: set(send_ids) <= mailer.delivered


def tracked(text: str, letter: str) -> list[str]:
    """The tokens of the tracking links of one kind (`o`, `c`, `u`) in `text`, in order."""
    return re.findall(re.escape(PUBLIC) + f"/v1/nurture/{letter}/([\\w-]+\\.[\\w-]+)", text)


async def test_an_email_arrives_with_signed_links_pixel_and_one_click_unsubscribe(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    await publish(kafka_bootstrap, topics.nurture_sends, make_email(1))
    metrics = Metrics()
    await run_mailer(kafka_bootstrap, settings, lambda _: bool(received.mails), metrics=metrics)

    [mail] = received.mails
    secret = tracking_secret(settings)
    assert mail["Message-ID"] == "<send-1@leadflow>"
    assert mail["From"] == "Acme <news@acme.example>"
    assert mail["To"] == "person1@example.com"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [unsubscribe] = tracked(mail["List-Unsubscribe"], "u")
    assert mail["List-Unsubscribe"] == f"<{PUBLIC}/v1/nurture/u/{unsubscribe}>"
    assert verify(secret, unsubscribe, "unsubscribe").send_id == "send-1"

    plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None
    assert html is not None
    text = plain.get_content()
    assert TOUR not in text
    clicks = [verify(secret, token, "click") for token in tracked(text, "c")]
    assert [c.link for c in clicks] == [0, 1, 0]
    assert {(c.send_id, c.lead_id, c.template) for c in clicks} == {("send-1", "lead-1", "welcome")}
    assert tracked(text, "u") == [unsubscribe]
    body = html.get_content()
    assert [verify(secret, t, "click").link for t in tracked(body, "c")] == [0, 1, 0]
    [pixel] = tracked(body, "o")
    assert f'<img src="{PUBLIC}/v1/nurture/o/{pixel}"' in body
    assert verify(secret, pixel, "open").lead_id == "lead-1"

    [event] = await events(kafka_bootstrap, topics, 1)
    assert (event.kind, event.event_id, event.lead_id) == ("sent", "send-1:sent", "lead-1")
    sample = metrics.registry.get_sample_value(
        "leadflow_notifications_total", {"kind": "nurture_smtp", "outcome": "sent"}
    )
    assert sample == 1


async def test_an_email_is_sent_once_across_repeats_and_a_restart(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    first = make_email(1)
    await publish(kafka_bootstrap, topics.nurture_sends, first, first)
    await run_mailer(kafka_bootstrap, settings, lambda _: len(received.mails) >= 1)

    # Published again, and the group sent back to the start: only the new email goes out.
    await publish(kafka_bootstrap, topics.nurture_sends, first, make_email(2))
    await reset_group(kafka_bootstrap, topics, settings.kafka.partitions)
    restarted = await run_mailer(
        kafka_bootstrap, settings, lambda _: len(received.to("person2@example.com")) >= 1
    )
    await asyncio.sleep(1)  # room for a wrong second copy to arrive
    assert Counter(m["Message-ID"] for m in received.mails) == {
        "<send-1@leadflow>": 1,
        "<send-2@leadflow>": 1,
    }
    assert {"send-1", "send-2"} <= restarted.delivered


async def test_a_hard_bounce_suppresses_the_address_for_later_emails(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    await publish(kafka_bootstrap, topics.nurture_sends, make_email(1, to=GONE), make_email(2))
    mailer = await run_mailer(kafka_bootstrap, settings, done("send-1", "send-2"))
    assert received.rcpt_attempts[GONE] == 1, "a 5xx is not retried"
    bounced = [e for e in await events(kafka_bootstrap, topics, 2) if e.kind == "bounced"]
    assert [(e.send_id, e.lead_id) for e in bounced] == [("send-1", "lead-1")]
    assert "550 5.1.1 no such user" in bounced[0].detail
    assert mailer.delivered == {"send-1", "send-2"}

    [record] = await read_topic(kafka_bootstrap, topics.nurture_suppressions, 1)
    assert record.key == identifier_hash(GONE).encode()
    assert orjson.loads(record.value or b"")["reason"] == "hard_bounce"
    # What the mailer wrote is what the suppression list reads.
    follower = SuppressionList()
    following = asyncio.create_task(
        follower.follow(settings.kafka, kafka_bootstrap, topics.nurture_suppressions)
    )
    await asyncio.wait_for(follower.wait_loaded(), 20)
    following.cancel()
    assert follower.hits([GONE.upper()])

    # A new mailer process learns of the bounce from the topic and mails the address no more.
    later = make_email(3, to=GONE, lead_id="lead-1", step="2")
    await publish(kafka_bootstrap, topics.nurture_sends, later)
    restarted = await run_mailer(kafka_bootstrap, settings, done("send-3"))
    assert "send-3" in restarted.delivered
    assert received.rcpt_attempts[GONE] == 1
    skipped = [e for e in await events(kafka_bootstrap, topics, 3) if e.kind == "skipped"]
    assert [(e.event_id, e.detail) for e in skipped] == [
        ("send-3:skipped", "suppressed: unsubscribed or bounced")
    ]


async def test_a_deferred_recipient_is_retried_until_it_takes_the_email(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    received.deferred["person1@example.com"] = 2
    await publish(kafka_bootstrap, topics.nurture_sends, make_email(1))
    await run_mailer(kafka_bootstrap, settings, lambda _: bool(received.mails))
    assert received.rcpt_attempts["person1@example.com"] == 3
    assert len(received.mails) == 1
    assert [e.kind for e in await events(kafka_bootstrap, topics, 1)] == ["sent"]


async def test_bad_records_and_lasting_failures_become_dead_letters(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    received.deferred["person2@example.com"] = 100
    good = make_email(3)
    await publish(
        kafka_bootstrap,
        topics.nurture_sends,
        b"\x00 not json",
        make_email(1, to="not-an-address"),
        make_email(2),
        good.model_copy(update={"lead_id": "lead-2"}),  # on the same partition as the failing one
    )
    mailer = await run_mailer(kafka_bootstrap, settings, done("send-1", "send-2", "send-3"))
    assert received_ids(received) == {"send-3"}
    assert received.rcpt_attempts["person2@example.com"] == 3
    letters = {d.reason: d for d in await dead_letters(kafka_bootstrap, topics, 3)}
    assert set(letters) == {"unreadable", "bad_address", "delivery_failed"}
    assert letters["unreadable"].original == b"\x00 not json"
    assert letters["unreadable"].stage == "mailer"
    assert "3 attempts" in letters["delivery_failed"].message
    assert NurtureEmail.model_validate_json(letters["bad_address"].original).send_id == "send-1"
    assert {"send-1", "send-2", "send-3"} <= mailer.delivered
    assert {e.kind for e in await events(kafka_bootstrap, topics, 1)} == {"sent"}


def received_ids(inbox: Inbox) -> set[str]:
    return {str(m["Message-ID"]).strip("<>").removesuffix("@leadflow") for m in inbox.mails}


async def test_an_erased_person_is_not_mailed(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    producer = make_producer(settings.kafka, kafka_bootstrap)
    await producer.start()
    digest = identifier_hash("person1@example.com")
    await producer.send_and_wait(topics.privacy_suppressions, b"{}", key=digest.encode())
    await producer.stop()
    await publish(kafka_bootstrap, topics.nurture_sends, make_email(1), make_email(2))
    mailer = await run_mailer(kafka_bootstrap, settings, done("send-1", "send-2"))
    assert received_ids(received) == {"send-2"}
    assert "send-1" in mailer.delivered
    skipped = [e for e in await events(kafka_bootstrap, topics, 2) if e.kind == "skipped"]
    assert [e.detail for e in skipped] == ["suppressed: erased"]


@pytest.fixture
async def provider() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """An email provider's endpoint: refuses `gone`, is down once for `flaky`."""
    posts: list[tuple[str, dict[str, Any]]] = []

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        posts.append((request.headers["Idempotency-Key"], body))
        if body["to"] == GONE:
            return web.json_response({"error": "recipient does not exist"}, status=422)
        if body["to"] == "flaky@example.com" and [b["to"] for _, b in posts].count(body["to"]) == 1:
            return web.Response(status=503, text="down")
        return web.json_response({"id": body["send_id"]})

    app = web.Application()
    app.router.add_post("/send", send)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/send", posts
    finally:
        await runner.cleanup()


async def test_the_provider_endpoint_gets_json_with_an_idempotency_key(
    kafka_bootstrap: str,
    settings: Settings,
    provider: tuple[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    url, posts = provider
    topics = Topics(settings.kafka.topic_prefix)
    settings = settings.model_copy(
        update={"nurture": settings.nurture.model_copy(update={"webhook_url": url})}
    )
    await publish(
        kafka_bootstrap,
        topics.nurture_sends,
        make_email(1),
        make_email(2, to=GONE),
        make_email(3, to="flaky@example.com"),
    )
    mailer = await run_mailer(kafka_bootstrap, settings, done("send-1", "send-2", "send-3"))
    assert [key for key, _ in posts].count("send-3") == 2, "a 503 is retried"
    assert [key for key, _ in posts].count("send-2") == 1, "a 422 is not"
    first = next(body for key, body in posts if key == "send-1")
    assert first["from"] == "Acme <news@acme.example>"
    assert first["headers"]["Message-ID"] == "<send-1@leadflow>"
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert tracked(first["text"], "c")
    assert tracked(first["html"], "o")
    found = {e.send_id: e for e in await events(kafka_bootstrap, topics, 3)}
    assert {k: e.kind for k, e in found.items()} == {
        "send-1": "sent",
        "send-2": "bounced",
        "send-3": "sent",
    }
    assert "recipient does not exist" in found["send-2"].detail
    assert mailer.unsubscribed.hits([GONE])


async def test_a_rebalance_hands_partitions_over_without_a_second_copy(
    kafka_bootstrap: str, settings: Settings, inbox: tuple[int, Inbox]
) -> None:
    _, received = inbox
    topics = Topics(settings.kafka.topic_prefix)
    # Each email is in flight longer than the next owner takes to start reading.
    received.data_delay_s = 1.5
    count = 10
    await publish(kafka_bootstrap, topics.nurture_sends, *(make_email(n) for n in range(count)))
    first_metrics, second_metrics = Metrics(), Metrics()

    first = asyncio.create_task(
        run_mailer(
            kafka_bootstrap, settings, lambda _: len(received.mails) >= count, 90, first_metrics
        )
    )
    for _ in range(600):
        if len(received.mails) >= 1:
            break
        await asyncio.sleep(0.05)
    # A second mailer joins the group mid-way (partitions move to it while emails are in
    # flight), then leaves before the end (they move back).
    await run_mailer(
        kafka_bootstrap, settings, lambda _: len(received.mails) >= count - 3, 90, second_metrics
    )
    await first
    await asyncio.sleep(1)
    ids = Counter(str(m["Message-ID"]) for m in received.mails)
    assert len(ids) == count
    assert set(ids.values()) == {1}
    sent = [
        metrics.registry.get_sample_value(
            "leadflow_notifications_total", {"kind": "nurture_smtp", "outcome": "sent"}
        )
        for metrics in (first_metrics, second_metrics)
    ]
    assert all(sent), f"both mailers sent some: {sent}"
    assert sum(s or 0 for s in sent) == count


def test_the_notifier_role_of_the_server_runs_the_mailer(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, inbox: tuple[int, Inbox]
) -> None:
    smtp_port, received = inbox
    port = free_port()
    env = {
        **os.environ,
        **keys_env(),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "LEADFLOW_DATA_DIR": str(tmp_path),
        "HTTP_PORT": str(port),
        "NURTURE_SMTP_PORT": str(smtp_port),
        "NURTURE_PUBLIC_URL": PUBLIC,
    }
    server = spawn("serve", ["serve", "--roles", "notifier"], env, tmp_path / "logs")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", [server], timeout_s=60)
        topics = Topics(topic_prefix)
        asyncio.run(publish(kafka_bootstrap, topics.nurture_sends, make_email(1)))
        for _ in range(300):
            if received.mails or server.process.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        server.stop()
    assert received_ids(received) == {"send-1"}, server.log_path.read_text(errors="replace")
    # The server made the tracking secret under its data dir; the links verify with it.
    secret = (tmp_path / "nurture-secret").read_bytes().strip()
    [mail] = received.mails
    [token] = tracked(mail["List-Unsubscribe"], "u")
    assert verify(secret, token, "unsubscribe").send_id == "send-1"


class Sessions(Inbox):
    """An inbox that also counts SMTP sessions (one EHLO each)."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses


async def test_one_session_carries_many_emails_and_a_dropped_one_is_opened_again(
    kafka_bootstrap: str, settings: Settings
) -> None:
    received = Sessions()
    topics = Topics(settings.kafka.topic_prefix)
    # A server of its own, on a port of its own, that counts sessions.
    own = settings.model_copy(
        update={"nurture": settings.nurture.model_copy(update={"smtp_port": free_port()})}
    )
    port = own.nurture.smtp_port
    server = Controller(received, hostname="127.0.0.1", port=port)
    server.start()
    try:
        await publish(kafka_bootstrap, topics.nurture_sends, *(make_email(n) for n in range(5)))
        producer = make_producer(own.kafka, kafka_bootstrap)
        consumer = mailer_consumer(own, kafka_bootstrap)
        await producer.start()
        async with aiohttp.ClientSession() as session:
            mailer = Mailer(own, topics, consumer, producer, Metrics(), session)
            await mailer.start(kafka_bootstrap)
            task = asyncio.create_task(mailer.run())
            try:
                for _ in range(300):
                    if len(received.mails) >= 5:
                        break
                    await asyncio.sleep(0.1)
                assert len(received.mails) == 5
                assert received.sessions == 1
                # The server goes away and comes back: the kept session is dead.
                server.stop()
                server = Controller(received, hostname="127.0.0.1", port=port)
                server.start()
                await publish(kafka_bootstrap, topics.nurture_sends, make_email(5))
                for _ in range(300):
                    if len(received.mails) >= 6:
                        break
                    await asyncio.sleep(0.1)
            finally:
                mailer.stop()
                await task
                await consumer.stop()
                await producer.stop()
        assert [m["Message-ID"] for m in received.mails][-1] == "<send-5@leadflow>"
        assert received.sessions == 2
    finally:
        server.stop()
