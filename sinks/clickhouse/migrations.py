"""Ordered, idempotent schema migrations, applied at start by every process that writes.

Each file `migrations/NNNN_name.sql` holds statements separated by `;` on a
line end. `{db}` and `{on_cluster}` are filled in from settings,
then the layout (sinks/clickhouse/layout.py) turns each statement into what
one node or a cluster needs. An applied
version is recorded in `schema_migrations` and never run again; every
statement is also written to be harmless when repeated (IF NOT EXISTS), so a
crash between a statement and its record cannot wedge a start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from leadflow.errors import FatalError, RetriableError
from sinks.clickhouse.client import ClickHouse

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations() -> list[Migration]:
    folder = resources.files("sinks.clickhouse").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        text = entry.read_text("utf-8")
        statements = tuple(_without_comments(s) for s in re.split(r";\s*\n", text) if _has_sql(s))
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise FatalError(f"two migrations share a version: {versions}")
    return found


def _without_comments(chunk: str) -> str:
    """The statement without its whole-line `--` comments."""
    lines = [line for line in chunk.splitlines() if not line.strip().startswith("--")]
    return "\n".join(lines).strip()


def _has_sql(chunk: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in chunk.splitlines())


async def migrate(clickhouse: ClickHouse) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    db = clickhouse.database
    layout = clickhouse.layout
    on_cluster = layout.on_cluster
    try:
        await clickhouse.command(f"CREATE DATABASE IF NOT EXISTS {db} {on_cluster}")
        for statement in layout.render(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations {on_cluster} "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY version"
        ):
            await clickhouse.command(statement)
        done = {
            row["version"]
            for row in await clickhouse.query(f"SELECT version FROM {db}.schema_migrations FINAL")
        }
    except RetriableError:
        raise
    except FatalError as exc:
        raise FatalError(f"cannot prepare the ClickHouse schema: {exc}") from exc
    applied = []
    for migration in load_migrations():
        if migration.version in done:
            continue
        for template in migration.statements:
            try:
                for statement in layout.render(template.format(db=db, on_cluster=on_cluster)):
                    await clickhouse.command(statement)
            except FatalError as exc:
                raise FatalError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
        await clickhouse.insert(
            "schema_migrations", [[migration.version, migration.name]], ["version", "name"]
        )
        applied.append(f"{migration.version:04d}_{migration.name}")
    return applied
