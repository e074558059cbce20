"""The Faust app factory. Nothing registers at import time: `create_app` builds
the app from settings and asks each step module to wire its agent.

Delivery is at-least-once: Faust commits an offset only after the producer
flushed what the agent sent for it, and every downstream write is idempotent
(keys derived from event ids). `exactly_once` is not used.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import faust

from leadflow.kafka_clients import ensure_topics, security, wait_for_topics
from leadflow.rules import Rules, load_rules
from leadflow.settings import KafkaSettings, Settings
from leadflow.suppression import SuppressionList
from leadflow.topics import Topics
from schemas.limits import configure as configure_limits
from streams import (
    diagnostics,
    events_agent,
    identity_agent,
    lead_agent,
    learning_agent,
    normalize_agent,
    nurture_agent,
    routing_agent,
    stall_guard,
)
from streams.internals import leader_topic_name, require_stream_internals
from streams.learning_agent import ModelFollower

log = logging.getLogger(__name__)
CLEAN_STOP_MARK = ".stopped-cleanly"


def broker_url(bootstrap: str) -> str:
    """Faust's broker URL for a `host:port,host:port` bootstrap list."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def broker_credentials(kafka: KafkaSettings) -> Any:
    """Faust's credentials, made from the options the aiokafka clients get."""
    options = security(kafka)
    context = options.get("ssl_context")
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def create_app(settings: Settings, bootstrap: str, rules: Rules | None = None) -> faust.App:
    configure_limits(settings.limits)  # the input domains the steps check events against
    topics = Topics(settings.kafka.topic_prefix)
    options: dict[str, Any] = {
        "broker": broker_url(bootstrap),
        # Tables live in RocksDB (rocksdict) under the data dir and are rebuilt from their
        # changelog topics when a worker starts elsewhere.
        "store": "rocksdb://",
        "datadir": str((settings.data_dir / "worker-state").resolve()),
        "autodiscover": False,
        "topic_partitions": settings.kafka.partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        "topic_allow_declare": True,
        # Every setting below is the stack's default chosen on purpose, not left to chance.
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "broker_commit_interval": 1.0,
        # A worker killed outright holds its partitions until its session expires: keep
        # that short so another worker (or its own restart) takes over within seconds.
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 3.0,
        # Log (only log) a partition that is not fetched, processed or committed for
        # 30 s while it has work: a stalled partition names itself in the worker log.
        "stream_processing_timeout": 30.0,
        "broker_commit_livelock_soft_timeout": 30.0,
        "web_enabled": settings.worker.web_port > 0,
        "web_port": settings.worker.web_port or 6066,
        "web_host": "0.0.0.0" if settings.worker.web_port else "127.0.0.1",  # noqa: S104
    }
    credentials = broker_credentials(settings.kafka)
    if credentials is not None:
        options["broker_credentials"] = credentials
    app = faust.App(f"{settings.kafka.topic_prefix}{settings.worker.app_id}", **options)
    rules = rules or load_rules(settings.worker.rules_dir)
    suppressions = SuppressionList()

    async def follow_suppressions() -> None:
        await suppressions.follow(settings.kafka, bootstrap, topics.privacy_suppressions)

    app.task(follow_suppressions)

    stall_guard.install(app)
    normalize_agent.register(app, topics, settings, rules, suppressions)
    events_agent.register(app, topics, settings, rules, suppressions)
    model = ModelFollower()

    async def follow_model() -> None:
        await model.follow(settings.kafka, bootstrap, topics.scoring_models)

    app.task(follow_model)
    identity_agent.register(app, topics, settings, rules)
    lead_agent.register(app, topics, settings, rules, model)
    routing_agent.register(app, topics, settings, rules)
    if rules.scoring.model.enabled:
        learning_agent.register(app, topics, settings, rules.scoring.model)
    if rules.nurture.sequences:
        nurture_agent.register(app, topics, settings, rules.nurture)
    return app


def prepare_state_dir(state_dir: Path) -> None:
    """Keep the local table stores only if the last worker here stopped cleanly.

    A worker killed outright may have written a table's local store without its
    changelog record reaching Kafka; kept, that store would disagree with the
    changelog every other worker rebuilds from. Without the mark of a clean stop,
    the stores go and the tables are rebuilt from their changelogs.
    """
    mark = state_dir / CLEAN_STOP_MARK
    if state_dir.is_dir() and any(state_dir.iterdir()) and not mark.exists():
        log.warning("the last worker in %s did not stop cleanly: rebuilding its tables", state_dir)
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    mark.unlink(missing_ok=True)


def run_worker(settings: Settings, bootstrap: str, loglevel: str = "info") -> None:
    """Run the Faust worker in this process until SIGINT/SIGTERM.

    Refuses to start (FatalError) when the installed Faust, mode or aiokafka lacks an
    internal the worker relies on (`streams.internals`)."""
    require_stream_internals()
    state_dir = settings.data_dir / "worker-state"
    prepare_state_dir(state_dir)
    app = create_app(settings, bootstrap)
    # Declare every product topic, and the tables' changelogs, before Faust starts: Faust
    # declares its own lazily, and a write racing that declaration can stall a commit
    # for a minute on a broker that does not auto-create topics.
    changelogs = {
        table.changelog_topic.get_topic_name(): settings.kafka.partitions
        for table in app.tables.values()
    }
    changelogs[leader_topic_name(app.conf.id)] = 1
    topics = Topics(settings.kafka.topic_prefix)
    everything = {name: settings.kafka.partitions for name in topics.all()} | changelogs

    async def declare() -> None:
        await ensure_topics(settings.kafka, bootstrap, extra=changelogs)
        await wait_for_topics(settings.kafka, bootstrap, everything)

    asyncio.run(declare())
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, quiet=True)
    faust_dump = worker._on_sigusr1

    def on_sigusr1() -> None:  # kill -USR1: Faust's dump, then every coroutine's wait
        faust_dump()
        diagnostics.log_tasks(worker.loop)
        try:
            log.warning("consumer state:\n%s", diagnostics.describe_consumer(app))
        except Exception:  # a diagnostic must not take the worker down
            log.exception("could not describe the consumer")

    worker._on_sigusr1 = on_sigusr1  # type: ignore[method-assign]
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code in (0, None):  # stopped by SIGINT/SIGTERM: stores and changelogs agree
            (state_dir / CLEAN_STOP_MARK).touch()
        raise
