"""Fault drills: nothing lost, nothing doubled. The short drill runs in `make test`;
the full one (`make chaos`) repeats every fault of docs/reliability.md."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from leadflow_tools.drill import Drill, table


def check(rows: list[dict[str, Any]]) -> None:
    print("\n" + table(rows))  # the drill's report, shown with -s
    out = os.environ.get("CHAOS_REPORT")
    if out:
        # Written before the checks, so a failed drill still leaves its report.
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        assert row["lost"] == 0, row
        assert row["doubled"] == 0, row
        assert row["rejected_missing"] == 0, row
        assert row["backwards"] == 0, row
        assert row["answered_2xx_while_broker_down"] == 0, row
        assert row["unacknowledged"] == 0, row
        assert row["acknowledged"] > 0, row
        assert row["stalls"] == 0, row
        assert row["crm_lost"] == 0, row
        assert row["crm_doubled"] == 0, row
        assert row["recovery_s_max"] <= 60, row


def test_short_drill(tmp_path: Path) -> None:
    """The two crashes that matter most, in the default suite; `make chaos` repeats every fault."""
    with Drill(tmp_path, seed=20261126) as drill:
        # The writer first: its leads are there for the rep's actions during the worker kill.
        drill.run("writer (serve) kill -9 mid-batch", drill.writer_kill9)
        drill.run("worker kill -9 mid-batch", drill.worker_kill9)
        rows = drill.reconcile()
        check(rows)
        assert rows[1]["crm_acknowledged"] > 0, rows[1]


@pytest.mark.slow
@pytest.mark.chaos
def test_full_drill(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20261126"))
    with Drill(tmp_path, seed=seed) as drill:
        drill.run("worker kill -9 mid-batch", drill.worker_kill9, runs=10)
        drill.run("worker SIGTERM", drill.worker_sigterm, runs=2)
        drill.run("writer (serve) kill -9 mid-batch", drill.writer_kill9, runs=3)
        drill.run("broker kill -9 and restart", drill.broker_kill9, runs=2)
        drill.run("broker paused (SIGSTOP 8 s)", drill.broker_sigstop, runs=2)
        drill.run("ClickHouse inserts failing 60 s", drill.clickhouse_down(60))
        drill.run("poison messages on leads.raw", drill.poison_on_raw)
        drill.run("writer group reset to earliest", drill.writer_group_reset)
        drill.run("second worker joins and leaves", drill.rebalance, runs=2)
        check(drill.reconcile())
