"""Where tables live: one node, or shards behind Distributed tables on a cluster.

On one node every table is what the migrations say. With `CLICKHOUSE_CLUSTER`
set, each table `X` of the migrations becomes two:

- `X_local` on every node, with a `Replicated*MergeTree` engine (or the plain
  engine when `CLICKHOUSE_REPLICATED=false`, for a sharded cluster without
  replicas), holding that shard's rows;
- `X`, a `Distributed` table over the `X_local`s, sharded by the row's stable
  id (every row of one lead lands on one shard, so `FINAL`, `argMax` and the
  dedup of a retried block stay correct per shard).

Materialized views read and write the local tables of the node an insert
reached, so aggregates are built where the rows are and merged by the
Distributed table at query time. Queries and inserts keep using `X`, so no
query text changes between one node and a cluster; inserts run in the
foreground (`distributed_foreground_insert`), so "the rows are in" still holds
when the writer commits its offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from leadflow.errors import FatalError
from leadflow.settings import ClickHouseSettings

DEFAULT_KEEPER_PATH = "/clickhouse/tables/{shard}/{database}/{table}"

# The stable id each table is sharded by. Every table a migration creates must
# be listed: a random key would send a retried block to another shard, where
# its dedup token is unknown.
SHARDING_KEYS: dict[str, str] = {
    "leads": "cityHash64(lead_id)",
    "lead_transitions": "cityHash64(lead_id)",
    "pipeline_current": "cityHash64(lead_id)",
    "funnel_daily": "cityHash64(stage, day)",
    "funnel_monthly": "cityHash64(stage, month)",
    "lead_merges": "cityHash64(survivor_id)",
    "assignments": "cityHash64(lead_id)",
    "nurture_events": "cityHash64(lead_id)",
    "scoring_evaluations": "cityHash64(event_id)",
    "dead_letters": "cityHash64(dead_letter_id)",
    "stage_definitions": "cityHash64(stage)",
    "audit_log": "cityHash64(audit_id)",
}
# Bookkeeping that stays per node: each node records what it has applied.
NODE_LOCAL = frozenset({"schema_migrations"})

_CREATE_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<db>\w+)\.(?P<table>\w+)\s+(?P<on>ON CLUSTER \S+\s+)?"
    r"\((?P<columns>.*)\)\s*ENGINE\s*=\s*(?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?"
    r"(?P<rest>.*)$",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(r"^CREATE MATERIALIZED VIEW ", re.IGNORECASE)
_DROP_TABLE = re.compile(
    r"^DROP TABLE IF EXISTS (?P<db>\w+)\.(?P<table>\w+)(?P<rest>.*)$", re.DOTALL
)
_ALTER_TABLE = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<table>\w+)(?P<rest>\s.*)$", re.DOTALL)


@dataclass(frozen=True)
class Layout:
    database: str
    cluster: str | None = None
    replicated: bool = True
    ddl_on_cluster: bool = True
    keeper_path: str = DEFAULT_KEEPER_PATH

    @classmethod
    def from_settings(cls, settings: ClickHouseSettings) -> Layout:
        return cls(
            database=settings.database,
            cluster=settings.cluster,
            replicated=settings.replicated,
            ddl_on_cluster=settings.ddl_on_cluster,
            keeper_path=settings.keeper_path,
        )

    @property
    def clustered(self) -> bool:
        return bool(self.cluster)

    @property
    def on_cluster(self) -> str:
        """The `ON CLUSTER` clause DDL carries, or nothing."""
        return f"ON CLUSTER {self.cluster}" if self.clustered and self.ddl_on_cluster else ""

    def local(self, table: str) -> str:
        """The qualified name of the table holding this node's rows of `table`."""
        if self.clustered and table not in NODE_LOCAL:
            return f"{self.database}.{table}_local"
        return f"{self.database}.{table}"

    def render(self, statement: str) -> list[str]:
        """The statements that apply one migration statement (already formatted) here."""
        if not self.clustered:
            return [statement]
        if match := _CREATE_TABLE.match(statement):
            return self._create_table(match)
        if _CREATE_VIEW.match(statement):
            return [self._view_on_locals(statement)]
        if (match := _DROP_TABLE.match(statement)) and match["table"] in SHARDING_KEYS:
            return [statement, f"DROP TABLE IF EXISTS {self.local(match['table'])}{match['rest']}"]
        if match := _ALTER_TABLE.match(statement):
            table, rest = match["table"], match["rest"]
            if table in NODE_LOCAL:
                return [statement]
            return [f"ALTER TABLE {self.local(table)}{rest}", statement]
        return [statement]

    def _engine(self, table: str, engine: str, args: str | None) -> str:
        if not self.replicated:
            return f"{engine}({args})" if args else engine
        path = self.keeper_path.replace("'", "\\'")
        params = [f"'{path}'", "'{replica}'"] + ([args] if args else [])
        return f"Replicated{engine}({', '.join(params)})"

    def _create_table(self, match: re.Match[str]) -> list[str]:
        table = match["table"]
        on = f"{self.on_cluster} " if self.on_cluster else ""
        engine = self._engine(table, match["engine"], match["args"])
        local = (
            f"CREATE TABLE IF NOT EXISTS {self.local(table)} {on}"
            f"({match['columns']})\nENGINE = {engine}{match['rest']}"
        )
        if table in NODE_LOCAL:
            return [local]
        key = SHARDING_KEYS.get(table)
        if key is None:
            raise FatalError(
                f"table {table} has no sharding key; add it to SHARDING_KEYS in "
                "sinks/clickhouse/layout.py"
            )
        distributed = (
            f"CREATE TABLE IF NOT EXISTS {self.database}.{table} {on}AS {self.local(table)} "
            f"ENGINE = Distributed({self.cluster}, {self.database}, {table}_local, {key})"
        )
        return [local, distributed]

    def _view_on_locals(self, statement: str) -> str:
        """A view's target and source become the local tables of the same node."""
        db = re.escape(self.database)

        def to_local(match: re.Match[str]) -> str:
            return f"{match[1]} {self.local(match[2])}"

        return re.sub(rf"\b(TO|FROM|JOIN)\s+{db}\.(\w+)\b", to_local, statement)
