"""Integration fixtures: the real Kafka broker (one per session) and real leadflow processes.

Set KAFKA_BOOTSTRAP to run against an existing cluster; otherwise the
project's own broker is started on free ports in a temporary folder and is
always stopped at the end of the session. Each test gets its own topic
prefix (and so its own topics and consumer groups) and its own ClickHouse
database or data directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from leadflow_tools.broker.local import LocalKafka, free_port
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.migrations import migrate
from tests.integration.processes import Stack, start_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port()
    )
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        # A throwaway broker with thousands of the tests' partitions takes ~18 s to shut
        # down cleanly; nothing of it is read again, so it gets a few seconds, then SIGKILL.
        broker.stop(timeout_s=3)


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to one test: its own topics and consumer groups."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def stack(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """A worker and a server as real child processes, on this test's topics and data dir."""
    running = start_stack(kafka_bootstrap, topic_prefix, tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded engine opens one data directory per process: one for this whole session."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
async def clickhouse(chdb_path: Path) -> AsyncIterator[ClickHouse]:
    """This test's own database in the embedded engine, with the schema migrated."""
    client = ClickHouse(f"chdb://{chdb_path}", f"test_{uuid.uuid4().hex[:12]}")
    await migrate(client)
    try:
        yield client
    finally:
        await client.command(f"DROP DATABASE IF EXISTS {client.database}")
        await client.close()
