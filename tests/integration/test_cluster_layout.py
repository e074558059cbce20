"""The cluster layout gives the same answers as one node, through Distributed tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.cluster_check import CLUSTER


def run_check(tmp_path: Path, mode: str) -> dict[str, Any]:
    folder = tmp_path / mode
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.cluster_check", str(folder), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_cluster_layout_answers_like_one_node(tmp_path: Path) -> None:
    single = run_check(tmp_path, "single")
    cluster = run_check(tmp_path, "cluster")
    engines = {row["name"]: row["engine"] for row in cluster.pop("engines")}
    single_engines = {row["name"]: row["engine"] for row in single.pop("engines")}
    for table in ("leads", "lead_transitions", "funnel_daily", "pipeline_current", "dead_letters"):
        assert engines[table] == "Distributed"
        assert engines[f"{table}_local"] == single_engines[table]
    # The views fill the shard-local tables where the rows landed.
    assert engines["funnel_daily_mv"] == "MaterializedView"
    assert cluster == single
    # A real funnel came out, with the retried batches counted once.
    assert {r["stage"]: r["leads"] for r in single["pipeline_now"]["rows"]} == {
        "assigned": 1,
        "sql": 1,
        "won": 1,
        "lost": 1,
    }
    assert CLUSTER in (tmp_path / "cluster" / "config.xml").read_text()
