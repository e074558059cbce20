"""How migrations render on one node and on a replicated, sharded cluster."""

from __future__ import annotations

import pytest

from leadflow.errors import FatalError
from sinks.clickhouse.layout import SHARDING_KEYS, Layout
from sinks.clickhouse.migrations import load_migrations

CLUSTER = Layout("leadflow", "sales")


def rendered(layout: Layout) -> list[str]:
    return [
        statement
        for migration in load_migrations()
        for template in migration.statements
        for statement in layout.render(
            template.format(db=layout.database, on_cluster=layout.on_cluster)
        )
    ]


def test_one_node_renders_the_migrations_unchanged() -> None:
    single = Layout("leadflow")
    templates = [t for m in load_migrations() for t in m.statements]
    assert rendered(single) == [t.format(db="leadflow", on_cluster="") for t in templates]


def test_cluster_tables_are_replicated_shards_behind_distributed_ones() -> None:
    statements = rendered(CLUSTER)
    local = next(
        s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS leadflow.leads_local")
    )
    assert "ON CLUSTER sales" in local
    assert (
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)"
    ) in local
    distributed = next(s for s in statements if "leadflow.leads ON CLUSTER" in s and "AS" in s)
    assert distributed.endswith(
        "AS leadflow.leads_local "
        "ENGINE = Distributed(sales, leadflow, leads_local, cityHash64(lead_id))"
    )
    funnel = next(
        s
        for s in statements
        if s.startswith("CREATE TABLE IF NOT EXISTS leadflow.funnel_daily_local")
    )
    assert "ReplicatedAggregatingMergeTree(" in funnel


def test_cluster_views_read_and_write_local_tables() -> None:
    views = [s for s in rendered(CLUSTER) if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == 4  # funnel_daily (made twice), funnel_monthly, pipeline_current
    for view in views:
        assert "TO leadflow." in view
        assert "_local AS" in view
        assert "FROM leadflow.lead_transitions_local" in view


def test_cluster_alters_change_shards_and_the_distributed_table() -> None:
    alters = [s for s in rendered(CLUSTER) if s.startswith("ALTER TABLE leadflow.leads")]
    assert [a.split()[2] for a in alters[:2]] == ["leadflow.leads_local", "leadflow.leads"]


def test_every_table_has_a_stable_sharding_key() -> None:
    created = {
        s.split()[5].split(".")[1].removesuffix("_local")
        for s in rendered(CLUSTER)
        if s.startswith("CREATE TABLE")
    }
    assert created == set(SHARDING_KEYS)
    assert all("rand" not in key for key in SHARDING_KEYS.values())


def test_a_table_without_a_sharding_key_stops_the_migration() -> None:
    with pytest.raises(FatalError, match="no sharding key"):
        CLUSTER.render(
            "CREATE TABLE IF NOT EXISTS leadflow.mystery ON CLUSTER sales (a Int32) "
            "ENGINE = MergeTree ORDER BY a"
        )


def test_without_ddl_on_cluster_each_node_is_migrated_alone() -> None:
    layout = Layout("leadflow", "sales", replicated=False, ddl_on_cluster=False)
    assert not any("ON CLUSTER" in s for s in rendered(layout))
    assert layout.local("schema_migrations") == "leadflow.schema_migrations"
    assert layout.local("leads") == "leadflow.leads_local"


def test_month_split_cuts_ranges_into_days_and_whole_months() -> None:
    from datetime import date

    from sinks.clickhouse.funnel import month_split

    d = date
    assert month_split(d(2026, 3, 2), d(2026, 6, 3)) == (
        (d(2026, 3, 2), d(2026, 4, 1)),
        (d(2026, 4, 1), d(2026, 6, 1)),
        (d(2026, 6, 1), d(2026, 6, 3)),
    )
    assert month_split(d(2026, 3, 1), d(2026, 4, 1))[1] == (d(2026, 3, 1), d(2026, 4, 1))
    assert month_split(d(2026, 12, 5), d(2027, 2, 1))[1] == (d(2027, 1, 1), d(2027, 2, 1))
    inside = month_split(d(2026, 3, 2), d(2026, 3, 20))
    assert inside[0] == (d(2026, 3, 2), d(2026, 3, 20))
    assert inside[1][0] == inside[1][1]
    assert inside[2][0] == inside[2][1]
