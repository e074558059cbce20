"""Learned scoring, the pure part: a logistic regression over the feature tokens of
streams/features.py, trained online (river) from won and lost outcomes.

One learner owns the model: every outcome is published under one key, so one
partition learns them all, in order, and a replay of the same outcomes gives
the same model (plain SGD holds no state beside the weights). Before learning
an outcome the learner predicts it (progressive validation): that prediction,
beside the rules' score, is how the model is judged honestly.

Every `publish_every` outcomes the learner publishes a `ModelSnapshot`
(weights as JSON, never a pickle) on a compacted topic; every worker reads it
and scores with `fit_probability`, so all partitions use one version, and
every score records the version that made it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from river import linear_model, optim, utils

from leadflow.errors import FatalError
from leadflow.rules import ModelRules
from schemas.scoring import Evaluation, ModelSnapshot, Outcome

# Weights kept (a snapshot of 5,000 is ~250 KB of JSON, within a Kafka message).
MAX_WEIGHTS = 5000

# The model the lead step scores with while it works on a batch (None: rules alone);
# set by its agent from the worker's ModelFollower (streams/learning_agent.py).
current_model: ContextVar[ModelSnapshot | None] = ContextVar("current_model", default=None)


@contextlib.contextmanager
def scoring_with(snapshot: ModelSnapshot | None) -> Iterator[None]:
    token = current_model.set(snapshot)
    try:
        yield
    finally:
        current_model.reset(token)


def require_river_internals() -> None:
    """The learner restores a model from its weights through river's `_weights` (a
    VectorDict) and `intercept`: refuse to start when the installed river lacks them."""
    model = linear_model.LogisticRegression()
    if not hasattr(model, "_weights") or not hasattr(model, "intercept"):
        raise FatalError(
            "the installed river has no LogisticRegression._weights/intercept; "
            "streams/learning.py needs them to restore a model (see docs/architecture.md)"
        )
    if not hasattr(utils, "VectorDict"):
        raise FatalError("the installed river has no utils.VectorDict")


def probability(snapshot: ModelSnapshot | dict[str, Any], tokens: list[str]) -> float:
    """The fit probability a model gives a lead's tokens (each worth 1)."""
    if isinstance(snapshot, ModelSnapshot):
        weights, intercept = snapshot.weights, snapshot.intercept
    else:
        weights, intercept = snapshot["weights"], snapshot["intercept"]
    z = intercept + sum(weights.get(token, 0.0) for token in tokens)
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def factors(snapshot: ModelSnapshot, tokens: list[str], shown: int) -> list[tuple[str, float]]:
    """The lead's tokens that weigh most in its fit probability, with their weights."""
    weighted = [(t, round(snapshot.weights[t], 4)) for t in tokens if t in snapshot.weights]
    return sorted(weighted, key=lambda tw: -abs(tw[1]))[:shown]


def in_use(snapshot: ModelSnapshot | None, rules: ModelRules) -> bool:
    """Whether the model has learned enough to count in scores."""
    return (
        rules.enabled
        and snapshot is not None
        and snapshot.outcomes >= rules.min_outcomes
        and 0 < snapshot.positives < snapshot.outcomes
    )


INTERCEPT = "~intercept"  # its key beside the weights in a version acted on


def moved(before: dict[str, float] | None, after: ModelSnapshot, threshold: float) -> bool:
    """Whether some weight (or the intercept) moved by `threshold` or more since `before`
    (None: no version was acted on yet)."""
    if before is None:
        return True
    names = (before.keys() - {INTERCEPT}) | after.weights.keys()
    shifts = [abs(after.weights.get(n, 0.0) - before.get(n, 0.0)) for n in names]
    shifts.append(abs(after.intercept - before.get(INTERCEPT, 0.0)))
    return max(shifts) >= threshold


def combined(rule_score: float, fit: float, rules: ModelRules) -> float:
    return round((1 - rules.weight) * rule_score + rules.weight * 100 * fit, 2)


@dataclass
class Learned:
    evaluation: Evaluation | None
    snapshot: ModelSnapshot | None  # a new version to publish, or None


def empty_state() -> dict[str, Any]:
    return {"version": 0, "outcomes": 0, "positives": 0, "intercept": 0.0, "weights": {}}


def _model(state: dict[str, Any], rules: ModelRules) -> linear_model.LogisticRegression:
    model = linear_model.LogisticRegression(
        optimizer=optim.SGD(rules.learning_rate), l2=rules.l2, intercept_lr=rules.learning_rate
    )
    model._weights = utils.VectorDict(dict(state["weights"]))
    model.intercept = float(state["intercept"])
    return model


def learn(state: dict[str, Any], outcome: Outcome, rules: ModelRules, now: datetime) -> Learned:
    """Predict the outcome with the model as it is, then learn from it. `state` (the
    learner's table value) is changed in place."""
    evaluation = Evaluation(
        event_id=outcome.event_id,
        lead_id=outcome.lead_id,
        version=state["version"],
        outcomes_before=state["outcomes"],
        probability=round(probability(state, outcome.features), 6),
        rule_score=outcome.rule_score,
        label=outcome.label,
        at=outcome.at,
    )
    model = _model(state, rules)
    model.learn_one(dict.fromkeys(outcome.features, 1.0), outcome.label)
    state["weights"] = _bounded({k: float(v) for k, v in model.weights.items() if v != 0.0})
    state["intercept"] = float(model.intercept)
    state["outcomes"] += 1
    state["positives"] += int(outcome.label)
    snapshot = None
    if state["outcomes"] % rules.publish_every == 0:
        state["version"] += 1
        snapshot = snapshot_of(state, now)
    return Learned(evaluation, snapshot)


def _bounded(weights: dict[str, float]) -> dict[str, float]:
    """At most MAX_WEIGHTS weights, the largest kept: free-text values (campaigns,
    sources, tools) would otherwise grow the model, and its snapshot, without end."""
    if len(weights) <= MAX_WEIGHTS:
        return weights
    kept = sorted(weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:MAX_WEIGHTS]
    return dict(sorted(kept))


def snapshot_of(state: dict[str, Any], now: datetime) -> ModelSnapshot:
    return ModelSnapshot(
        version=state["version"],
        outcomes=state["outcomes"],
        positives=state["positives"],
        intercept=state["intercept"],
        weights=state["weights"],
        published_at=now,
    )


def auc(scores: list[float], labels: list[bool]) -> float:
    """Mann-Whitney AUC with ties counted half, by ranks (n log n)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return float("nan")
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
