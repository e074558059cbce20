"""`leadflow serve`: HTTP adapters, ClickHouse writer, query API and rep notifier.

Roles can be split across processes in production (adapters scale out; one
writer per partition set), but with the embedded engine the writer and the
query API must share a process, since chdb opens a data directory once.

Shutdown order on SIGINT/SIGTERM: stop taking HTTP requests, let the writer
insert and commit what it consumed, then close Kafka and ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer

from ingest_adapters.http_app import (
    MAX_BODY_KEY,
    METRICS_KEY,
    TIMEOUT_KEY,
    IngestRoutes,
    json_errors,
)
from ingest_adapters.publisher import Publisher
from ingest_adapters.social.fetcher import SocialFetcher
from ingest_adapters.social.service import SocialLeadService
from leadflow import __version__
from leadflow.kafka_clients import ensure_topics, make_consumer, make_producer
from leadflow.metrics import Metrics
from leadflow.rules import Rules, load_rules
from leadflow.settings import Settings
from leadflow.suppression import SuppressionList
from leadflow.topics import Topics
from leadflow_app import access, openapi
from leadflow_app.duplicates import DuplicateRoutes
from privacy.erase import PrivacyRoutes
from schemas.limits import configure as configure_limits
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.funnel import sync_stage_definitions
from sinks.clickhouse.layout import Layout
from sinks.clickhouse.migrations import migrate
from sinks.clickhouse.query_api import QueryRoutes
from sinks.clickhouse.writer import ClickHouseWriter, apply_retention, routes
from sinks.mailer import Mailer, mailer_consumer
from sinks.notifier import Notifier

log = logging.getLogger(__name__)

ROLES = ("adapters", "sink", "query", "notifier")
READY_PREFIX = "leadflow serving on"


@dataclass(frozen=True)
class Roles:
    adapters: bool
    sink: bool
    query: bool
    notifier: bool

    @classmethod
    def parse(cls, names: Iterable[str]) -> Roles:
        chosen = {n.strip() for n in names if n.strip()}
        unknown = chosen - set(ROLES)
        if unknown or not chosen:
            raise ValueError(f"roles must be some of {', '.join(ROLES)}; got {sorted(chosen)}")
        return cls(**{name: name in chosen for name in ROLES})

    def names(self) -> list[str]:
        return [name for name in ROLES if getattr(self, name)]


def build_app(
    settings: Settings,
    metrics: Metrics,
    roles: Roles,
    publisher: Publisher | None,
    clickhouse: ClickHouse | None,
    bootstrap: str | None = None,
    rules: Rules | None = None,
) -> web.Application:
    """The HTTP application of these roles. `rules`: the server's, loaded once at start
    (read from WORKER_RULES_DIR here when not given)."""
    configure_limits(settings.limits)  # the input domains every schema checks
    rules = rules or load_rules(settings.worker.rules_dir)
    app = web.Application(
        client_max_size=settings.http.max_body_bytes,
        middlewares=[json_errors, access.access_control],
    )
    app[METRICS_KEY] = metrics
    app[MAX_BODY_KEY] = settings.http.max_body_bytes
    app[TIMEOUT_KEY] = settings.http.request_timeout_s

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__, "roles": roles.names()})

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain")

    spec = openapi.document(__version__)

    async def openapi_page(_: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/openapi.json", openapi_page)
    ingest = None
    if publisher is not None:
        ingest = IngestRoutes(settings, rules, publisher, metrics, bootstrap)
        ingest.add_to(app)
    if clickhouse is not None and roles.query:
        QueryRoutes(clickhouse).add_to(app)
        DuplicateRoutes(clickhouse, publisher, Topics(settings.kafka.topic_prefix)).add_to(app)
        if publisher is not None and bootstrap is not None:
            PrivacyRoutes(settings, bootstrap, clickhouse, publisher.producer).add_to(app)
    access.install(app, settings, ingest.dead_letter if ingest is not None else None)
    access.check_routes(app)
    access.check_exposure(settings, access.control_of(app).keys)
    return app


@dataclass
class Background:
    """A consuming service run beside the HTTP app: its task, how to stop it, what to close."""

    name: str
    task: asyncio.Task[None]
    stop: Callable[[], None]
    closers: list[Callable[[], Awaitable[object]]]


async def _start_writer(
    settings: Settings,
    bootstrap: str,
    topics: Topics,
    clickhouse: ClickHouse,
    producer: AIOKafkaProducer,
    metrics: Metrics,
) -> Background:
    consumer = make_consumer(
        settings.kafka, bootstrap, *routes(topics), group_id=topics.group("clickhouse-writer")
    )
    await consumer.start()
    suppressions = SuppressionList()
    follower = asyncio.create_task(
        suppressions.follow(settings.kafka, bootstrap, topics.privacy_suppressions),
        name="suppression-list",
    )
    writer = ClickHouseWriter(settings, clickhouse, consumer, producer, metrics, suppressions)

    async def run() -> None:
        try:
            # The list must be loaded before the first insert; its failure stops the writer.
            ready = asyncio.ensure_future(suppressions.wait_loaded())
            await asyncio.wait({ready, follower}, return_when=asyncio.FIRST_COMPLETED)
            if follower.done():
                ready.cancel()
                follower.result()
            await writer.run()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    task = asyncio.create_task(run(), name="clickhouse-writer")
    return Background("the ClickHouse writer", task, writer.stop, [consumer.stop])


async def _start_notifier(
    settings: Settings,
    rules: Rules,
    bootstrap: str,
    topics: Topics,
    producer: AIOKafkaProducer,
    metrics: Metrics,
) -> Background:
    consumer = make_consumer(
        settings.kafka, bootstrap, topics.leads_assigned, group_id=topics.group("notifier")
    )
    session = aiohttp.ClientSession()
    notifier = Notifier(
        settings.notify, topics, rules.routing, consumer, producer, metrics, session
    )
    await notifier.load_delivered(settings.kafka, bootstrap)
    await consumer.start()
    task = asyncio.create_task(notifier.run(), name="notifier")
    return Background("the rep notifier", task, notifier.stop, [consumer.stop, session.close])


async def _start_mailer(
    settings: Settings, bootstrap: str, topics: Topics, producer: AIOKafkaProducer, metrics: Metrics
) -> Background:
    consumer = mailer_consumer(settings, bootstrap)
    session = aiohttp.ClientSession()
    mailer = Mailer(settings, topics, consumer, producer, metrics, session)
    await mailer.start(bootstrap)
    task = asyncio.create_task(mailer.run(), name="mailer")
    return Background("the nurture mailer", task, mailer.stop, [consumer.stop, session.close])


async def _start_social_fetcher(
    settings: Settings, bootstrap: str, topics: Topics, producer: AIOKafkaProducer, metrics: Metrics
) -> Background:
    consumer = make_consumer(
        settings.kafka,
        bootstrap,
        topics.social_notifications,
        group_id=topics.group("social-fetcher"),
    )
    fetcher = SocialFetcher(settings.social)
    service = SocialLeadService(topics, consumer, producer, fetcher, metrics)
    await consumer.start()
    task = asyncio.create_task(service.run(), name="social-fetcher")
    return Background("the social lead fetcher", task, service.stop, [consumer.stop, fetcher.close])


async def serve(settings: Settings, bootstrap: str, roles: Roles) -> None:
    """Run until SIGINT/SIGTERM or until a background service fails; re-raise its failure."""
    metrics = Metrics()
    topics = Topics(settings.kafka.topic_prefix)
    rules = load_rules(settings.worker.rules_dir)  # once: every role below gets these
    await ensure_topics(settings.kafka, bootstrap)
    producer = make_producer(settings.kafka, bootstrap)
    await producer.start()
    clickhouse: ClickHouse | None = None
    services: list[Background] = []
    runner: web.AppRunner | None = None
    try:
        if roles.sink or roles.query:
            clickhouse = ClickHouse(
                settings.clickhouse_dsn,
                settings.clickhouse.database,
                Layout.from_settings(settings.clickhouse),
                settings.clickhouse.ca_cert,
            )
            applied = await migrate(clickhouse)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            await sync_stage_definitions(clickhouse, rules.stages)
            await apply_retention(clickhouse, settings.kafka.dlq_retention_days)
        if roles.sink:
            assert clickhouse is not None
            services.append(
                await _start_writer(settings, bootstrap, topics, clickhouse, producer, metrics)
            )
        if roles.notifier:
            services.append(
                await _start_notifier(settings, rules, bootstrap, topics, producer, metrics)
            )
            services.append(await _start_mailer(settings, bootstrap, topics, producer, metrics))
        publisher = None
        if roles.adapters:
            publisher = Publisher(producer, metrics, settings.http.publish_timeout_s)
            services.append(
                await _start_social_fetcher(settings, bootstrap, topics, producer, metrics)
            )
        app = build_app(settings, metrics, roles, publisher, clickhouse, bootstrap, rules)
        # Head deadline, keep-alive timeout, connection caps, rate-limited noisy logs.
        from leadflow_app.connections import start_site

        runner, _site = await start_site(app, settings, metrics)
        print(
            f"{READY_PREFIX} http://{settings.http.host}:{settings.http.port} "
            f"(roles: {', '.join(roles.names())})",
            flush=True,
        )
        await _wait_for_stop(services)
    finally:
        if runner is not None:
            await runner.cleanup()
        for service in services:
            service.stop()
            await asyncio.gather(service.task, return_exceptions=True)
            for close in service.closers:
                await close()
        await producer.stop()
        if clickhouse is not None:
            await clickhouse.close()
        log.info("stopped")
    for service in services:
        if service.task.done() and not service.task.cancelled() and service.task.exception():
            raise service.task.exception()  # type: ignore[misc]


async def _wait_for_stop(services: list[Background]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {stopper, *(s.task for s in services)}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for service in services:
        if service.task.done() and service.task.exception():
            log.error("%s stopped: %s", service.name, service.task.exception())
    stopper.cancel()
