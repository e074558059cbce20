"""A small async face over clickhouse-connect, and the one place errors are classified.

chdb runs inside this process and blocks while it works, and a server call
blocks too, so every call runs on one dedicated thread: the event loop (HTTP
adapters, the Kafka consumer's heartbeats) stays responsive, and chdb only
ever sees one caller at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from leadflow.errors import FatalError, RetriableError
from sinks.clickhouse.layout import Layout

# ClickHouse error codes that mean "the server is busy or unreachable, try again".
# Anything else from the server (bad SQL, unknown table, type mismatch) is a bug
# or a broken schema: retrying cannot help, so the writer stops.
TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


def classify(exc: BaseException) -> RetriableError | FatalError:
    """Sort a failure into retry-later or stop-now, by error class and code only."""
    if isinstance(exc, RetriableError | FatalError):
        return exc
    if isinstance(exc, OperationalError | OSError | TimeoutError):
        return RetriableError(f"ClickHouse unreachable: {exc}")
    code = getattr(exc, "code", None)
    if isinstance(exc, ClickHouseError) and code in TRANSIENT_CODES:
        return RetriableError(f"ClickHouse busy (code {code}): {exc}")
    return FatalError(f"ClickHouse refused the statement (code {code}): {exc}")


class ClickHouse:
    """One connection, used from one thread; `database` prefixes every table name."""

    def __init__(
        self,
        dsn: str,
        database: str,
        layout: Layout | None = None,
        ca_cert: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.database = database
        self.layout = layout or Layout(database)
        self.ca_cert = ca_cert
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Any = None

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    def _connect(self) -> Any:
        if self._client is None:
            dsn, _, query = self.dsn.partition("?")
            if self.embedded and query:
                # Engine options such as config-file=… (clusters, macros) go to chdb itself.
                options = dict(parse_qsl(query))
                self._client = clickhouse_connect.get_client(dsn=dsn, chdb_options=options)
            else:
                self._client = clickhouse_connect.get_client(**self.server_options())
        return self._client

    def server_options(self) -> dict[str, Any]:
        """How to reach a server: the DSN, and over HTTPS the CA that signed its certificate."""
        options: dict[str, Any] = {"dsn": self.dsn}
        if self.dsn.startswith("https://"):
            options["verify"] = True
            if self.ca_cert:
                options["ca_cert"] = self.ca_cert
        return options

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()

        def call() -> Any:
            return fn(self._connect(), *args, **kwargs)

        try:
            return await loop.run_in_executor(self._executor, call)
        except (ClickHouseError, OSError, TimeoutError) as exc:
            raise classify(exc) from exc

    async def command(
        self,
        sql: str,
        settings: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        return await self._run(
            lambda c: c.command(
                sql, parameters=dict(parameters or {}) or None, settings=dict(settings or {})
            )
        )

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""

        # On a cluster, a JOIN against a Distributed dimension table (stage_definitions)
        # reads it once on the node that asked and ships it to the shards.
        settings = {"distributed_product_mode": "global"} if self.layout.clustered else {}

        def run(client: Any) -> list[dict[str, Any]]:
            result = client.query(sql, parameters=dict(parameters or {}), settings=settings)
            names = result.column_names
            return [dict(zip(names, row, strict=True)) for row in result.result_rows]

        rows: list[dict[str, Any]] = await self._run(run)
        return rows

    async def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        column_names: list[str],
        dedup_token: str | None = None,
    ) -> None:
        # Foreground: on a cluster the rows are on their shards when this returns.
        settings: dict[str, Any] = {"distributed_foreground_insert": 1}
        if dedup_token:
            settings |= {
                "insert_deduplication_token": dedup_token,
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            }
        await self._run(
            lambda c: c.insert(
                f"{self.database}.{table}", list(rows), column_names=column_names, settings=settings
            )
        )

    async def close(self) -> None:
        def shutdown(client: Any) -> None:
            client.close()

        if self._client is not None:
            await self._run(shutdown)
            self._client = None
        self._executor.shutdown(wait=True)
