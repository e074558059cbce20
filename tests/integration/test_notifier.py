"""The rep notifier against the real broker, a local chat-webhook server and a local SMTP server.

Only the outside SaaS (Slack, WeCom, DingTalk, a mail provider) is stood in
for, by servers on 127.0.0.1 that record what they receive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller

from leadflow.kafka_clients import ensure_topics, make_consumer, make_producer
from leadflow.metrics import Metrics
from leadflow.rules import Notify, Rep, RoutingRules, Team
from leadflow.settings import KafkaSettings, NotifySettings
from leadflow.topics import Topics
from leadflow_tools.broker.local import free_port
from schemas import Assignment, DeadLetter
from sinks.notifier import Notifier
from tests.builders import make_assignment
from tests.integration.processes import read_topic


class Received:
    def __init__(self) -> None:
        self.posts: dict[str, list[dict[str, Any]]] = {}
        self.mails: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(envelope)
        return "250 OK"


@pytest.fixture
async def stand_ins() -> AsyncIterator[tuple[str, int, Received]]:
    received = Received()

    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        received.posts.setdefault(name, []).append(await request.json())
        if name == "broken":
            return web.Response(status=500, text="down")
        if name in ("wecom", "dingtalk"):
            return web.json_response({"errcode": 0, "errmsg": "ok"})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    smtp_port = free_port()
    smtp = Controller(received, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        yield f"http://127.0.0.1:{port}/hooks", smtp_port, received
    finally:
        smtp.stop()
        await runner.cleanup()


async def reset_group(bootstrap: str, topics: Topics) -> None:
    """Point the notifier's group back at the first offset of every partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topics.group("notifier"), enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topics.leads_assigned, p) for p in range(KafkaSettings().partitions)
        ]
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


def routing(base: str) -> RoutingRules:
    rep = Rep(id="wang.li", name="王丽", email="wang.li@example.com")
    teams = {
        name: Team(reps=[rep], notify=notify)
        for name, notify in {
            "slack_team": Notify(kind="slack", url=f"{base}/slack"),
            "wecom_team": Notify(kind="wecom", url=f"{base}/wecom"),
            "dingtalk_team": Notify(kind="dingtalk", url=f"{base}/dingtalk"),
            "mail_team": Notify(kind="email"),
            "broken_team": Notify(kind="slack", url=f"{base}/broken"),
        }.items()
    }
    return RoutingRules(rules=[{"name": "all", "team": "slack_team", "when": {}}], teams=teams)


async def run_notifier(
    bootstrap: str,
    topics: Topics,
    rules: RoutingRules,
    settings: NotifySettings,
    until: Any,
    max_wait_s: float = 20,
) -> Notifier:
    kafka = KafkaSettings(topic_prefix=topics.prefix)
    producer = make_producer(kafka, bootstrap)
    consumer = make_consumer(
        kafka, bootstrap, topics.leads_assigned, group_id=topics.group("notifier")
    )
    await producer.start()
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(settings, topics, rules, consumer, producer, Metrics(), session)
        await notifier.load_delivered(kafka, bootstrap)
        await consumer.start()
        task = asyncio.create_task(notifier.run())
        try:
            for _ in range(int(max_wait_s * 10)):
                if until():
                    break
                await asyncio.sleep(0.1)
        finally:
            notifier.stop()
            await task
            await consumer.stop()
            await producer.stop()
    return notifier


async def test_each_channel_gets_its_format_once_and_failures_dead_letter(
    kafka_bootstrap: str, topic_prefix: str, stand_ins: tuple[str, int, Received]
) -> None:
    base, smtp_port, received = stand_ins
    topics = Topics(topic_prefix)
    await ensure_topics(KafkaSettings(topic_prefix=topic_prefix), kafka_bootstrap)
    settings = NotifySettings(
        max_attempts=3, backoff_s=0.05, smtp_port=smtp_port, smtp_from="leads@example.com"
    )
    rules = routing(base)
    producer = make_producer(KafkaSettings(), kafka_bootstrap)
    await producer.start()
    teams = ["slack_team", "wecom_team", "dingtalk_team", "mail_team", "broken_team"]
    for team in teams:
        message = make_assignment(team, 1)
        # Routing may emit the same decision twice; the rep hears of it once.
        for _ in range(2):
            await producer.send_and_wait(
                topics.leads_assigned,
                message.model_dump_json().encode(),
                key=message.lead_id.encode(),
            )
    await producer.stop()

    def all_seen() -> bool:
        return (
            len(received.mails) == 1
            and len(received.posts.get("broken", [])) == 3
            and all(received.posts.get(kind) for kind in ("slack", "wecom", "dingtalk"))
        )

    await run_notifier(kafka_bootstrap, topics, rules, settings, all_seen)
    assert all_seen()
    assert len(received.posts["slack"]) == 1
    assert "王丽" in received.posts["slack"][0]["text"]
    assert received.posts["wecom"][0]["msgtype"] == "markdown"
    assert "王小明" in received.posts["wecom"][0]["markdown"]["content"]
    assert received.posts["dingtalk"][0]["markdown"]["title"].startswith("New lead for 王丽")
    assert received.mails[0].rcpt_tos == ["wang.li@example.com"]
    assert b"+8613800138000" in received.mails[0].content

    [letter] = [
        DeadLetter.model_validate_json(m.value or b"")
        for m in await read_topic(kafka_bootstrap, topics.dlq("notify"), 1)
    ]
    assert letter.reason == "delivery_failed"
    assert "3 attempts" in letter.message
    assert Assignment.model_validate_json(letter.original).team == "broken_team"

    # A restarted notifier, even with its group reset to the start, repeats nothing.
    await reset_group(kafka_bootstrap, topics)
    counts = {k: len(v) for k, v in received.posts.items()}
    restarted = await run_notifier(
        kafka_bootstrap, topics, rules, settings, lambda: False, max_wait_s=4
    )
    assert len(restarted.delivered) == len(teams)
    assert {k: len(v) for k, v in received.posts.items()} == counts
    assert len(received.mails) == 1
