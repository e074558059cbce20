"""The stage engine: workflow rules and rep actions move a lead forward, one transition each."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from leadflow.errors import BadRecordError
from leadflow.normalize import normalize_lead
from leadflow.rules import Rules, load_rules
from schemas import CallEvent, CrmEvent, EngagementEvent, LeadState, RawLead
from streams.events import call_probe, crm_update, engagement_update
from streams.lead_agent import handle_update
from streams.stage_engine import allowed
from tests.topology import Topology

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


class Funnel:
    """One person driven through the in-memory topology."""

    def __init__(self, rules: Rules, make_raw_lead: Callable[..., RawLead]) -> None:
        self.rules = rules
        self.topology = Topology(rules)
        self.topology.now = T0
        self.make_raw_lead = make_raw_lead
        self.count = 0

    def form(self, at: datetime, **fields: str) -> None:
        self.count += 1
        raw = self.make_raw_lead(
            {
                "name": "Ada",
                "email": "ada@fabrikam.example",
                "phone": "+86 138 0013 8000",
                "country": "US",
                **fields,
            },
            event_id=f"form-{self.count}",
            received_at=at,
        )
        self.topology.publish_lead(normalize_lead(raw, default_region="CN"))
        self.topology.run()

    def call(self, at: datetime, seconds: int, outcome: str | None = None) -> None:
        self.count += 1
        event = CallEvent(
            event_id=f"call-{self.count}",
            call_id=f"CA{self.count}",
            direction="outbound",
            caller="+8613800138000",
            status="completed",
            duration_s=seconds,
            started_at=at,
            outcome=outcome,
        )
        self.topology.publish_probe(call_probe(event, self.rules.identity, "CN"))
        self.topology.run()

    def engage(self, at: datetime, kind: str) -> None:
        self.count += 1
        event = EngagementEvent(
            event_id=f"eng-{self.count}", kind=kind, occurred_at=at, email="ada@fabrikam.example"
        )
        probe = engagement_update(event, self.rules.identity, "CN")
        assert not isinstance(probe, dict)
        self.topology.publish_probe(probe)
        self.topology.run()

    def crm(self, at: datetime, action: str, **extra: object) -> None:
        self.count += 1
        event = CrmEvent(
            event_id=f"crm-{self.count}",
            lead_id=self.person().lead_id,
            action=action,
            occurred_at=at,
            **extra,
        )  # type: ignore[arg-type]
        self.topology.publish_update(crm_update(event))
        self.topology.run()

    def person(self) -> LeadState:
        [lead] = self.topology.people()
        return lead

    def stages(self) -> list[str]:
        return [t["to_stage"] for t in self.topology.transitions]


@pytest.fixture
def funnel(rules: Rules, make_raw_lead: Callable[..., RawLead]) -> Funnel:
    return Funnel(rules, make_raw_lead)


def test_a_lead_walks_the_funnel_to_won(funnel: Funnel) -> None:
    funnel.form(T0)
    funnel.call(T0 + timedelta(hours=1), seconds=30)  # too short to count as contact
    funnel.call(T0 + timedelta(hours=2), seconds=240, outcome="interested")
    funnel.engage(T0 + timedelta(days=1), "demo_requested")
    funnel.crm(T0 + timedelta(days=3), "convert", amount=120_000.0, currency="CNY")
    funnel.crm(T0 + timedelta(days=5), "set_stage", stage="demo")
    funnel.crm(T0 + timedelta(days=20), "won")
    assert funnel.stages() == [
        "new", "assigned", "contacted", "nurturing", "mql", "sql", "converted",
        "qualification", "demo", "won",
    ]  # fmt: skip
    person = funnel.person()
    assert (person.stage, person.amount, person.currency) == ("won", 120_000.0, "CNY")
    transitions = funnel.topology.transitions
    assert len({t["transition_id"] for t in transitions}) == len(transitions)
    won = transitions[-1]
    assert won["event_time"].startswith("2026-03-22")  # placed at its own event time
    assert (won["from_stage"], won["deal_id"]) == ("demo", person.deal_id)
    assert won["owner"] == person.owner


def test_no_move_backwards_except_to_lost(funnel: Funnel, rules: Rules) -> None:
    funnel.form(T0)
    funnel.engage(T0 + timedelta(hours=1), "demo_requested")
    before = funnel.stages()
    funnel.call(T0 + timedelta(hours=2), seconds=300)  # contacted < sql: ignored
    assert funnel.stages() == before
    backwards = crm_update(
        CrmEvent(
            event_id="x",
            lead_id=funnel.person().lead_id,
            action="set_stage",
            stage="nurturing",
            occurred_at=T0,
        )
    )
    with pytest.raises(BadRecordError, match="forward move"):
        handle_update(backwards, funnel.person(), funnel.topology.topics, rules, T0)
    funnel.crm(T0 + timedelta(days=1), "lost", reason="budget frozen")
    assert funnel.stages()[-1] == "lost"
    assert funnel.topology.transitions[-1]["reason"] == "budget frozen"


def test_a_lost_lead_that_comes_back_is_re_engaged_and_routed_again(funnel: Funnel) -> None:
    funnel.form(T0)
    first_owner = funnel.person().owner
    funnel.crm(T0 + timedelta(days=1), "lost", reason="no budget")
    funnel.form(T0 + timedelta(days=90), utm_source="baidu")
    assert funnel.stages() == ["new", "assigned", "lost", "re_engaged", "assigned"]
    person = funnel.person()
    assert person.stage == "assigned"
    assert person.owner is not None
    assert first_owner is not None
    re_engaged = funnel.topology.transitions[3]
    assert re_engaged["reason"] == "came back through web after lost"


def test_replayed_events_emit_the_same_transitions(funnel: Funnel) -> None:
    funnel.form(T0)
    funnel.engage(T0 + timedelta(hours=1), "webinar_attended")
    ids = [t["transition_id"] for t in funnel.topology.transitions]
    funnel.count -= 1  # the same engagement event again
    funnel.engage(T0 + timedelta(hours=1), "webinar_attended")
    assert [t["transition_id"] for t in funnel.topology.transitions] == ids


@pytest.mark.parametrize(
    ("current", "target", "ok"),
    [
        (None, "new", True),
        ("new", "mql", True),
        ("mql", "contacted", False),
        ("sql", "lost", True),
        ("lost", "won", False),
        ("lost", "re_engaged", True),
        ("re_engaged", "assigned", True),
        ("re_engaged", "new", False),
        ("won", "re_engaged", False),
        ("disqualified", "lost", False),
    ],
)
def test_allowed_moves(rules: Rules, current: str | None, target: str, ok: bool) -> None:
    assert allowed(current, target, rules.stages) is ok
