"""Queries over `scoring_evaluations`: how the learned model does, honestly.

Every row is an outcome the model predicted before it learned from it
(progressive validation), beside the rules' score of the same lead, so both
are judged on the same outcomes. AUC (ClickHouse's `arrayAUC`) and log-loss
per model version and per week; an AUC is null while only one kind of
outcome (only won, only lost) is in a group.
"""

from __future__ import annotations

from typing import Any, Literal

from sinks.clickhouse.client import ClickHouse

_LOG_LOSS = (
    "avg(-(label * log(greatest(probability, 1e-9)) "
    "+ (1 - label) * log(greatest(1 - probability, 1e-9))))"
)


async def evaluation(
    clickhouse: ClickHouse, by: Literal["version", "week"] = "version"
) -> list[dict[str, Any]]:
    """Outcomes, won share, model AUC, rules AUC and model log-loss per version or week."""
    db = clickhouse.database
    group = "version" if by == "version" else "toStartOfWeek(at, 1)"
    return await clickhouse.query(
        f"""
        SELECT {group} AS {by}, count() AS outcomes, sum(label) AS won,
               arrayAUC(groupArray(probability), groupArray(label)) AS model_auc,
               arrayAUC(groupArray(toFloat64(rule_score)), groupArray(label)) AS rules_auc,
               {_LOG_LOSS} AS model_log_loss
        FROM {db}.scoring_evaluations FINAL
        GROUP BY {by}
        ORDER BY {by}"""
    )
