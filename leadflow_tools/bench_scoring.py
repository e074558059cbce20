"""`leadflow bench scoring`: does the learned score find what sells, and at what cost.

Generated history with a planted truth: the chance that a lead is won is
driven by its industry together with its company size, by one named tool,
and by noise. The rules (config/scoring.yaml) know about size and industry
but not about the tool, nor that one industry buys only when large. Every
outcome goes through the learner as on the stream (predicted, then learned:
progressive validation), so the model's AUC and the rules' AUC are measured
on the same outcomes, beside the AUC of the truth itself (the best any score
could do with that noise).

Also printed: the cost of one training step (`streams.learning.learn`) and of
scoring one lead (`streams.features.features` + `streams.learning.probability`).
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from leadflow.rules import Rules, load_rules
from leadflow_tools.bench_pipeline import save_figures
from schemas import LeadState
from schemas.scoring import Outcome
from streams import learning
from streams.features import features
from streams.scoring import score_lead

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
INDUSTRIES = ("software", "retail", "finance", "manufacturing", "mining", "education")
SIZES = (20, 120, 500, 3000)
TOOLS = ("Salesforce", "Excel", "HubSpot", "")
TITLES = ("Head of Sales", "Sales Manager", "CEO", "Analyst", "销售总监")


def truth_logit(industry: str, size: int, tool: str, rng: random.Random) -> float:
    logit = -1.2
    if industry in ("software", "finance") and size >= 500:
        logit += 1.6  # buys when large
    if industry == "education":
        logit -= 1.0
    if tool == "Salesforce":
        logit += 1.7  # the named tool: invisible to the rules
    elif tool == "Excel":
        logit -= 0.7
    return logit + rng.gauss(0, 0.3)


def history(n: int, seed: int) -> list[tuple[LeadState, float, bool]]:
    """(lead, truth's probability, won) for `n` leads."""
    rng = random.Random(seed)  # noqa: S311 - generated data
    out = []
    for i in range(n):
        industry, size, tool = rng.choice(INDUSTRIES), rng.choice(SIZES), rng.choice(TOOLS)
        at = T0 + timedelta(minutes=7 * i)
        lead = LeadState(
            lead_id=f"h{i}",
            first_seen=at,
            updated_at=at,
            email=f"p{i}@{industry}{i % 97}.example.com",
            company_size=size,
            industry=industry,
            country=rng.choice(["CN", "US", "DE", "SG"]),
            title=rng.choice(TITLES),
            attributes={"tools": tool} if tool else {},
        )
        truth = 1 / (1 + math.exp(-truth_logit(industry, size, tool, rng)))
        out.append((lead, truth, rng.random() < truth))
    return out


def as_outcome(n: int, lead: LeadState, won: bool, rules: Rules) -> Outcome:
    """Lead `n` of the history as the lead step hands it to the learner."""
    free = rules.identity.free_mail_domains
    return Outcome(
        event_id=f"o{n}",
        lead_id=lead.lead_id,
        label=won,
        features=features(lead, rules.scoring.model.tool_fields, free),
        rule_score=score_lead(lead, rules.scoring, free).score,
        at=lead.updated_at,
    )


def outcome_values(count: int, seed: int = 21) -> list[bytes]:
    """`count` outcomes of the history, as published on `scoring.outcomes`."""
    rules = load_rules()
    return [
        as_outcome(n, lead, won, rules).model_dump_json().encode()
        for n, (lead, _, won) in enumerate(history(count, seed))
    ]


def bench_scoring(
    outcomes: int, out: Path | None, console: Console, seed: int = 21
) -> dict[str, Any]:
    rules = load_rules()
    model_rules = rules.scoring.model.model_copy(update={"publish_every": 100})
    free = rules.identity.free_mail_domains
    data = history(outcomes, seed)
    state = learning.empty_state()
    rows: list[tuple[float, float, float, bool]] = []  # model p, rules score, truth, label
    learn_s = 0.0
    for n, (lead, truth, won) in enumerate(data):
        outcome = as_outcome(n, lead, won, rules)
        rule_score = outcome.rule_score
        started = time.perf_counter()
        learned = learning.learn(state, outcome, model_rules, lead.updated_at)
        learn_s += time.perf_counter() - started
        assert learned.evaluation is not None
        rows.append((learned.evaluation.probability, rule_score, truth, won))
    snapshot = learning.snapshot_of(state, datetime.now(UTC))
    started = time.perf_counter()
    for lead, _, _ in data:
        learning.probability(snapshot, features(lead, model_rules.tool_fields, free))
    score_s = time.perf_counter() - started
    warm = min(1000, outcomes // 5)
    segments: list[dict[str, str | float]] = []
    step = max(1, (outcomes - warm) // 4)
    for start in range(warm, outcomes, step):
        part = rows[start : start + step]
        labels = [r[3] for r in part]
        segments.append(
            {
                "outcomes": f"{start + 1}-{start + len(part)}",
                "model_auc": round(learning.auc([r[0] for r in part], labels), 4),
                "rules_auc": round(learning.auc([r[1] for r in part], labels), 4),
                "truth_auc": round(learning.auc([r[2] for r in part], labels), 4),
            }
        )
    after = rows[warm:]
    labels = [r[3] for r in after]
    report: dict[str, Any] = {
        "outcomes": outcomes,
        "won_share": round(sum(r[3] for r in rows) / len(rows), 3),
        "measured_after": warm,
        "model_auc": round(learning.auc([r[0] for r in after], labels), 4),
        "rules_auc": round(learning.auc([r[1] for r in after], labels), 4),
        "truth_auc": round(learning.auc([r[2] for r in after], labels), 4),
        "segments": segments,
        "train_step_us": round(1e6 * learn_s / outcomes, 1),
        "score_lead_us": round(1e6 * score_s / outcomes, 1),
        "features_in_model": len(snapshot.weights),
    }
    table = Table(title=f"learned score vs rules, {outcomes:,} outcomes (progressive)")
    for column in ("outcomes", "model AUC", "rules AUC", "truth AUC"):
        table.add_column(column, justify="right")
    for seg in segments:
        table.add_row(*(str(seg[k]) for k in ("outcomes", "model_auc", "rules_auc", "truth_auc")))
    table.add_row(
        f"all after {warm}",
        str(report["model_auc"]),
        str(report["rules_auc"]),
        str(report["truth_auc"]),
        style="bold",
    )
    console.print(table)
    console.print(
        f"one training step {report['train_step_us']} µs; scoring one lead "
        f"(features + probability) {report['score_lead_us']} µs; "
        f"{report['features_in_model']} features in the model"
    )
    save_figures(report, out, console)
    return report
