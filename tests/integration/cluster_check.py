"""Run the funnel fixture through one ClickHouse layout and print every answer as JSON.

Started as its own process by test_cluster_layout.py: the embedded engine
opens one data directory, with one configuration, per process.

    python -m tests.integration.cluster_check DATA_DIR single|cluster
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from leadflow.rules import load_rules
from schemas import TransitionRow
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.funnel import (
    activity_funnel,
    cohort_funnel,
    pipeline,
    stagnant,
    sync_stage_definitions,
)
from sinks.clickhouse.layout import Layout
from sinks.clickhouse.migrations import migrate
from tests.integration.test_funnel import at, rows

CLUSTER = "leadflow_test"
# One shard whose only replica is this process: Distributed tables route to it
# without a network hop, which is all an embedded engine can offer.
CONFIG = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <macros><shard>01</shard><replica>r1</replica></macros>
  <remote_servers>
    <{CLUSTER}><shard><replica><host>localhost</host><port>9000</port></replica></shard></{CLUSTER}>
  </remote_servers>
</clickhouse>
"""


async def answers(data_dir: Path, mode: str) -> dict[str, Any]:
    if mode == "cluster":
        config = data_dir / "config.xml"
        config.write_text(CONFIG)
        dsn = f"chdb://{data_dir / 'data'}?config-file={config}"
        # A sharded cluster without replicas, migrated node by node: the embedded
        # engine has neither Keeper nor a distributed DDL queue.
        layout = Layout("leadflow", CLUSTER, replicated=False, ddl_on_cluster=False)
    else:
        dsn, layout = f"chdb://{data_dir / 'data'}", Layout("leadflow")
    clickhouse = ClickHouse(dsn, "leadflow", layout)
    try:
        await migrate(clickhouse)
        await sync_stage_definitions(clickhouse, load_rules().stages)
        columns = TransitionRow.column_names()
        for token in ("fixture-1", "fixture-1"):  # a retried batch
            await clickhouse.insert("lead_transitions", rows(), columns, dedup_token=token)
        await clickhouse.insert("lead_transitions", rows()[:5], columns, dedup_token="fixture-2")
        march, may = at("2026-03-01 00:00"), at("2026-05-01 00:00")
        result: dict[str, Any] = {
            "cohort_any": await cohort_funnel(clickhouse, march, may),
            "cohort_strict": await cohort_funnel(clickhouse, march, may, mode="strict"),
            "cohort_by_source": await cohort_funnel(clickhouse, march, may, by="source"),
            "activity": await activity_funnel(clickhouse, march, may),
            "pipeline_now": await pipeline(clickhouse),
            "pipeline_march": await pipeline(clickhouse, as_of=at("2026-03-31 23:59")),
            "pipeline_by_owner": await pipeline(clickhouse, by="owner"),
            "stagnant": await stagnant(clickhouse, days=14, now=at("2026-04-30 00:00")),
        }
        result["engines"] = await clickhouse.query(
            "SELECT name, engine FROM system.tables WHERE database = 'leadflow' ORDER BY name"
        )
        return result
    finally:
        await clickhouse.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(answers(Path(sys.argv[1]), sys.argv[2])), default=str))
