"""`leadflow scoring backtest --from D --to D`: the learned score against the rules on
the outcomes of a period, replayed from `scoring.outcomes` with today's settings.

Every outcome ever recorded is read back in the order the learner took it.
Those that happened before the period's end are learned, each predicted first
(as the learner does), so nothing is learned from after the moment it is
judged on; those that happened inside the period are judged: AUC and
log-loss of the model, AUC of the rules' score, and of the score the lead
would have got (rules and model combined, once `min_outcomes` are learned).
Change `model:` in config/scoring.yaml (learning rate, weight, tools) and run
it again to compare, without touching the running learner.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from leadflow.kafka_clients import replay_topic
from leadflow.rules import ModelRules
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas.scoring import Outcome
from streams import learning
from streams.learning import auc


def judge(
    outcomes: list[Outcome], start: datetime, end: datetime, rules: ModelRules
) -> dict[str, Any]:
    """Replay `outcomes` (in the learner's order) and judge those in [start, end)."""
    state = learning.empty_state()
    seen: set[str] = set()
    judged: list[tuple[float, float, float, bool]] = []  # model, rules, combined, label
    for outcome in outcomes:
        if outcome.event_id in seen or outcome.at >= end:
            continue
        seen.add(outcome.event_id)
        ready = (
            state["outcomes"] >= rules.min_outcomes and 0 < state["positives"] < state["outcomes"]
        )
        learned = learning.learn(state, outcome, rules, outcome.at)
        assert learned.evaluation is not None
        if outcome.at >= start:
            p = learned.evaluation.probability
            score = learning.combined(outcome.rule_score, p, rules) if ready else outcome.rule_score
            judged.append((p, outcome.rule_score, score, outcome.label))
    labels = [row[3] for row in judged]
    log_loss = (
        -sum(math.log(max(p if y else 1 - p, 1e-9)) for p, _, _, y in judged) / len(judged)
        if judged
        else float("nan")
    )
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "learned_before_end": len(seen),
        "judged": len(judged),
        "won": sum(labels),
        "model_auc": round(auc([r[0] for r in judged], labels), 4) if judged else None,
        "rules_auc": round(auc([r[1] for r in judged], labels), 4) if judged else None,
        "combined_auc": round(auc([r[2] for r in judged], labels), 4) if judged else None,
        "model_log_loss": round(log_loss, 4) if judged else None,
    }


async def backtest(
    settings: Settings, bootstrap: str, start: datetime, end: datetime, rules: ModelRules
) -> dict[str, Any]:
    outcomes: list[Outcome] = []
    unreadable = 0

    def take(record: Any) -> None:
        nonlocal unreadable
        try:
            outcomes.append(Outcome.model_validate_json(record.value or b""))
        except (ValidationError, ValueError):
            unreadable += 1  # the learner dead-lettered it too

    topic = Topics(settings.kafka.topic_prefix).scoring_outcomes
    await replay_topic(settings.kafka, bootstrap, topic, take)
    return {**judge(outcomes, start, end, rules), "unreadable": unreadable}
