"""Learned scoring: features, the learner (river), versions, and scores through the very
step functions the agents run (tests/topology.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from leadflow.normalize import normalize_lead
from leadflow.rules import ModelRules, Rules, load_rules
from leadflow.topics import Topics
from schemas import CrmEvent, LeadState, RawLead
from schemas.scoring import Evaluation, ModelSnapshot, Outcome
from streams import learning
from streams.events import crm_update
from streams.features import features, seniority, size_band
from streams.learning_agent import ModelFollower, learn_step
from tests.topology import Topology

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TOPICS = Topics()


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


def test_features_are_categories_with_unknown_of_their_own(rules: Rules) -> None:
    lead = LeadState(
        lead_id="l1",
        first_seen=T0,
        updated_at=T0,
        email="wang@fabrikam.cn",
        company_size=350,
        industry="Manufacturing",
        country="cn",
        title="销售总监",
        attributes={"tools": "Salesforce, HubSpot", "当前CRM": "纷享销客"},
    )
    tokens = features(lead, rules.scoring.model.tool_fields, frozenset({"qq.com"}))
    assert {
        "size:200-999",
        "industry:manufacturing",
        "country:CN",
        "region:apac",
        "seniority:director",
        "channel:unknown",
        "email:corporate",
        "tool:salesforce",
        "tool:hubspot",
        "tool:纷享销客",
        "touches:0",
    } <= set(tokens)
    assert tokens == sorted(tokens)
    bare = LeadState(lead_id="l2", first_seen=T0, updated_at=T0)
    assert "industry:unknown" in features(bare)
    assert "seniority:unknown" in features(bare)
    assert size_band(None) == "unknown"
    assert seniority("Software engineer") == "staff"
    assert seniority("Chief Revenue Officer") == "c_level"
    assert seniority("学生") == "student"


class Learner:
    """The learner's step over a dict table, recording what it sends."""

    def __init__(self, rules: ModelRules) -> None:
        self.rules = rules
        self.table: dict[str, Any] = {}
        self.evaluations: list[Evaluation] = []
        self.snapshots: list[ModelSnapshot] = []
        self.dead: list[Exception] = []

    def add(self, topic: str, key: str | bytes, value: bytes) -> None:
        if topic == TOPICS.scoring_evaluations:
            self.evaluations.append(Evaluation.model_validate_json(value))
        else:
            self.snapshots.append(ModelSnapshot.model_validate_json(value))

    def dead_letter(self, dlq: str, step: str, event: Any, error: Exception) -> None:
        self.dead.append(error)

    def learn(self, value: bytes) -> None:
        record = SimpleNamespace(value=value, message=SimpleNamespace(topic="", partition=0))
        learn_step(record, self.table, self, topics=TOPICS, rules=self.rules, now=T0)


def planted(n: int, seed: int) -> list[tuple[Outcome, float]]:
    """Outcomes whose win probability is driven by industry x size x one tool, plus
    noise; the rules' score is blind to the tool. With each, the truth's own probability."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        industry = rng.choice(["software", "retail", "finance", "mining"])
        size = rng.choice(["1-49", "50-199", "200-999", "1000+"])
        tool = rng.choice(["salesforce", "excel", "none"])
        logit = -1.0
        logit += 1.5 if industry == "software" and size in ("200-999", "1000+") else 0.0
        logit += 1.8 if tool == "salesforce" else -0.8 if tool == "excel" else 0.0
        logit += -1.2 if industry == "mining" else 0.0
        truth = 1 / (1 + pow(2.718281828, -logit))
        tokens = sorted([f"industry:{industry}", f"size:{size}", f"tool:{tool}", "region:apac"])
        rule_score = 10.0 * (size in ("200-999", "1000+")) + 10.0 * (industry != "mining")
        label = rng.random() < truth
        out.append(
            (
                Outcome(
                    event_id=f"o{i}",
                    lead_id=f"l{i}",
                    label=label,
                    features=tokens,
                    rule_score=rule_score + rng.random(),
                    at=T0 + timedelta(minutes=i),
                ),
                truth,
            )
        )
    return out


def auc(scores: list[float], labels: list[bool]) -> float:
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_the_model_learns_the_planted_truth_and_beats_the_rules() -> None:
    learner = Learner(ModelRules(publish_every=100))
    data = planted(3000, seed=5)
    for outcome, _ in data:
        learner.learn(outcome.model_dump_json().encode())
    later = learner.evaluations[1000:]  # progressive: each predicted before it was learned
    labels = [e.label for e in later]
    model_auc = auc([e.probability for e in later], labels)
    rules_auc = auc([e.rule_score for e in later], labels)
    truth_auc = auc([truth for _, truth in data[1000:]], labels)
    assert model_auc > rules_auc + 0.05
    assert model_auc > truth_auc - 0.03
    assert [s.version for s in learner.snapshots] == list(range(1, 31))
    last = learner.snapshots[-1]
    assert last.outcomes == 3000
    assert last.weights["tool:salesforce"] > 0 > last.weights["tool:excel"]


def test_a_replay_gives_the_same_model_and_an_outcome_counts_once() -> None:
    data = [o.model_dump_json().encode() for o, _ in planted(300, seed=9)]
    first, second = Learner(ModelRules(publish_every=50)), Learner(ModelRules(publish_every=50))
    for value in data:
        first.learn(value)
    for value in data:
        second.learn(value)
        second.learn(value)  # the lead step sent it again (a replayed CRM event)
    assert first.table["model"] == second.table["model"]
    assert first.snapshots == second.snapshots
    assert len(second.evaluations) == 300
    second.learn(b'{"type": "outcome", "label": "maybe"}')
    assert len(second.dead) == 1


def test_a_follower_keeps_the_last_good_snapshot() -> None:
    follower = ModelFollower()
    good = learning.snapshot_of(
        {"version": 3, "outcomes": 60, "positives": 20, "intercept": 0.1, "weights": {"a": 1.0}},
        T0,
    )
    follower.take(good.model_dump_json().encode())
    follower.take(b"not a model")
    follower.take(good.model_copy(update={"version": 2}).model_dump_json().encode())
    assert follower.snapshot == good


def test_won_leads_teach_the_model_and_a_lookalike_outranks_a_lost_one(
    make_raw_lead: Callable[..., RawLead],
) -> None:
    base = load_rules()
    learned = base.scoring.model.model_copy(update={"min_outcomes": 20, "publish_every": 5})
    rules = base.model_copy(update={"scoring": base.scoring.model_copy(update={"model": learned})})
    topology = Topology(rules, partitions=2, seed=3)

    def lead(n: int, industry: str, tool: str) -> str:
        raw = make_raw_lead(
            {
                "name": f"Person {n}",
                "email": f"p{n}@{industry}-co{n}.com",
                "company": f"{industry} co {n}",
                "industry": industry,
                "tools": tool,
            },
            received_at=T0 + timedelta(minutes=n),
        )
        topology.publish_lead(normalize_lead(raw, default_region="CN"))
        topology.run()
        return next(s.lead_id for s in topology.people() if s.email == f"p{n}@{industry}-co{n}.com")

    for n in range(30):
        won = n % 2 == 0
        lead_id = lead(n, "biotech" if won else "mining", "salesforce" if won else "excel")
        event = CrmEvent(
            event_id=f"crm-{n}",
            lead_id=lead_id,
            action="won" if won else "lost",
            reason=None if won else "chose another vendor",
            occurred_at=T0 + timedelta(hours=1, minutes=n),
        )
        topology.publish_update(crm_update(event))
        topology.run()
    assert topology.model is not None
    assert topology.model.outcomes == 30
    assert len(topology.evaluations) == 30
    like_won = lead(100, "biotech", "salesforce")
    like_lost = lead(101, "mining", "excel")
    states = {s.lead_id: s for s in topology.people()}
    good, bad = states[like_won], states[like_lost]
    assert good.model_version == topology.model.version == bad.model_version
    assert good.fit_probability is not None
    assert bad.fit_probability is not None
    assert good.fit_probability > 0.5 > bad.fit_probability
    assert good.score > bad.score
    assert good.rule_score == bad.rule_score  # the rules alone could not tell them apart
    assert any(name == "tool:salesforce" and w > 0 for name, w in good.fit_factors)


def test_the_scoring_bench_measures_model_rules_and_truth_on_the_same_outcomes() -> None:
    import io

    from rich.console import Console

    from leadflow_tools.bench_scoring import bench_scoring

    report = bench_scoring(4000, None, Console(file=io.StringIO()))
    assert report["rules_auc"] < report["model_auc"] < report["truth_auc"] + 0.02
    assert report["train_step_us"] > 0
    assert report["score_lead_us"] > 0


def test_a_backtest_learns_nothing_from_after_its_period() -> None:
    from leadflow_app.scoring_backtest import judge

    data = [outcome for outcome, _ in planted(2000, seed=13)]  # one per minute from T0
    start, end = T0 + timedelta(minutes=1000), T0 + timedelta(minutes=1500)
    rules = ModelRules(min_outcomes=50)
    report = judge(data, start, end, rules)
    assert report["judged"] == 500
    assert report["learned_before_end"] == 1500
    assert report["model_auc"] > report["rules_auc"]
    # Later outcomes, even shuffled in before, change nothing about the period.
    later = data[1500:]
    shuffled = later[:250] + data[:1500] + later[250:]
    assert judge(shuffled, start, end, rules) == report
    assert judge(data + data[:10], start, end, rules) == report  # a repeat counts once


def test_an_outcome_teaches_the_lead_as_it_was_then_and_once_per_label(rules: Rules) -> None:
    from schemas import Engagement, Touch
    from streams.lead_agent import outcome_of

    late = T0 + timedelta(days=90)
    lead = LeadState(
        lead_id="l5",
        first_seen=T0,
        updated_at=late,
        email="ana@fabrikam.com",
        touches=[Touch(event_id="t1", channel="web", source="google", medium="cpc", at=T0)],
        engagements=[
            Engagement(event_id="e1", kind="demo_requested", at=T0 + timedelta(days=1)),
            Engagement(event_id="e2", kind="email_click", at=late),  # after the outcome
        ],
    )
    won = CrmEvent(
        event_id="crm-won", lead_id="l5", action="won", occurred_at=T0 + timedelta(days=30)
    )
    outcome = outcome_of(won, lead, rules)
    assert outcome is not None
    assert outcome.label is True
    assert "engaged:demo_requested:1" in outcome.features
    assert not any(f.startswith("engaged:email_click") for f in outcome.features)
    learner = Learner(ModelRules())
    converted = outcome.model_copy(update={"event_id": "crm-convert"})
    learner.learn(converted.model_dump_json().encode())
    learner.learn(outcome.model_dump_json().encode())  # converted, then won: one lesson
    assert learner.table["model"]["outcomes"] == 1
    lost = outcome.model_copy(update={"event_id": "crm-lost", "label": False})
    learner.learn(lost.model_dump_json().encode())  # a different lesson: learned
    assert learner.table["model"]["outcomes"] == 2


def test_the_model_keeps_at_most_its_bound_of_weights() -> None:
    learner = Learner(ModelRules(publish_every=1000))
    for n in range(learning.MAX_WEIGHTS + 300):
        outcome = Outcome(
            event_id=f"o{n}",
            lead_id=f"l{n}",
            label=n % 10 != 0,
            features=[f"campaign:c{n}", "region:apac"],
            rule_score=1.0,
            at=T0,
        )
        learner.learn(outcome.model_dump_json().encode())
    assert len(learner.table["model"]["weights"]) == learning.MAX_WEIGHTS
    assert "region:apac" in learner.table["model"]["weights"]


def test_a_new_model_version_rescores_an_open_lead_once_and_leaves_closed_ones(
    rules: Rules,
) -> None:
    from schemas.messages import RescoreLead
    from streams.lead_agent import handle_update

    model = learning.snapshot_of(
        {
            "version": 7,
            "outcomes": 80,
            "positives": 30,
            "intercept": -0.2,
            "weights": {"tool:salesforce": 2.5, "industry:biotech": 1.0},
        },
        T0,
    )
    lead = LeadState(
        lead_id="l6",
        first_seen=T0,
        updated_at=T0,
        version=3,
        stage="assigned",
        industry="biotech",
        attributes={"tools": "Salesforce"},
        email="x@bio.example.com",
    )
    ask = RescoreLead(lead_id="l6", version=7)
    with learning.scoring_with(model):
        first = handle_update(ask, lead, TOPICS, rules, T0 + timedelta(days=1))
        assert first.state is not None
        assert first.state.model_version == 7
        assert first.state.version == 4
        assert first.state.score > lead.score
        again = handle_update(ask, first.state, TOPICS, rules, T0 + timedelta(days=1))
        assert again.state is None
        assert again.sends == []
        won = lead.model_copy(update={"stage": "won"})
        assert handle_update(ask, won, TOPICS, rules, T0).sends == []
        assert handle_update(ask, None, TOPICS, rules, T0).sends == []


def test_a_version_is_acted_on_only_when_a_weight_moved_enough() -> None:
    before = {"a": 1.0, "~intercept": 0.0}
    small = learning.snapshot_of(
        {"version": 2, "outcomes": 9, "positives": 3, "intercept": 0.05, "weights": {"a": 1.05}},
        T0,
    )
    large = small.model_copy(update={"weights": {"a": 1.05, "b": -0.3}})
    assert learning.moved(None, small, 0.1)
    assert not learning.moved(before, small, 0.1)
    assert learning.moved(before, large, 0.1)


async def test_a_newer_version_mid_pass_goes_on_and_asks_every_open_lead_once() -> None:
    """Versions come every few outcomes: a pass that started over at each would ask the
    first leads of the store again and again and never reach the last ones."""
    from schemas.messages import RescoreLead
    from streams.learning_agent import Rescorer

    def version(n: int, weight: float) -> bytes:
        state = {
            "version": n,
            "outcomes": 100 + n,
            "positives": 40,
            "intercept": -0.8,
            "weights": {"industry:biotech": weight},
        }
        return learning.snapshot_of(state, T0).model_dump_json().encode()

    follower = ModelFollower()
    follower.take(version(1, 1.0))
    store = {f"l{n}": {"lead_id": f"l{n}", "stage": "assigned"} for n in range(6)}
    store["won"] = {"lead_id": "won", "stage": "won"}
    store["gone"] = {"lead_id": "gone", "stage": "assigned", "merged_into": "l0"}
    asked: list[RescoreLead] = []

    class Updates:
        async def send(self, key: bytes, value: bytes) -> None:
            asked.append(RescoreLead.model_validate_json(value))
            if len(asked) == 2:  # the learner publishes a version that moved a lot
                follower.take(version(2, 3.0))

    rules = ModelRules(min_outcomes=10, rescore_per_s=10_000)
    rescorer = Rescorer(follower, store, Updates(), rules, frozenset({"won", "lost"}))
    first = rescorer.due()
    assert first is not None
    assert first.version == 1
    assert await rescorer.rescore(first) == 6
    assert [a.lead_id for a in asked] == [f"l{n}" for n in range(6)]
    assert [a.version for a in asked] == [1, 1, 2, 2, 2, 2]
    rescorer.acted_on = {**first.weights, learning.INTERCEPT: first.intercept}
    # Version 2 moved a weight by 2 since the version the pass began with: one more pass.
    again = rescorer.due()
    assert again is not None
    assert again.version == 2
    rescorer.acted_on = {**again.weights, learning.INTERCEPT: again.intercept}
    # Acted on, a version is not due again (its intercept is not a weight that moved).
    assert rescorer.due() is None
