"""Engagement and call events land on the right person and move the score, not the touches."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from leadflow.errors import BadRecordError
from leadflow.normalize import normalize_lead
from leadflow.rules import Rules, load_rules
from schemas import CallEvent, EngagementEvent, Lead, LeadState, RawLead
from schemas.messages import EngagementUpdate
from streams.events import call_probe, engagement_update
from streams.lead_agent import handle_update
from tests.topology import NOW, Topology

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture
def known(make_raw_lead: Callable[..., RawLead], rules: Rules) -> tuple[Topology, Lead]:
    topology = Topology(rules)
    lead = normalize_lead(
        make_raw_lead(
            {
                "name": "Ada",
                "email": "ada@fabrikam.example",
                "phone": "13800138000",
                "title": "Engineer",
            },
            event_id="web-1",
            received_at=T0,
        ),
        default_region="CN",
    )
    topology.publish_lead(lead)
    topology.run()
    return topology, lead


def only_person(topology: Topology) -> LeadState:
    [person] = topology.people()
    return person


def engagement(kind: str, at: datetime, **who: str) -> EngagementEvent:
    return EngagementEvent(event_id=f"{kind}-{at.isoformat()}", kind=kind, occurred_at=at, **who)


def test_engagement_by_email_scores_without_a_touch(
    known: tuple[Topology, Lead], rules: Rules
) -> None:
    topology, _ = known
    before = only_person(topology)
    for kind, hours in (("pricing_page_visit", 1), ("webinar_attended", 2), ("demo_requested", 3)):
        probe = engagement_update(
            engagement(kind, T0 + timedelta(hours=hours), email="ADA@fabrikam.example"),
            rules.identity,
            "CN",
        )
        assert not isinstance(probe, dict)
        topology.publish_probe(probe)
    topology.run()
    after = only_person(topology)
    assert len(after.touches) == len(before.touches) == 1
    assert {e.kind for e in after.engagements} == {
        "pricing_page_visit",
        "webinar_attended",
        "demo_requested",
    }
    assert after.score > before.score
    assert after.score >= rules.scoring.mql_threshold
    stages = [t["to_stage"] for t in topology.transitions if t["lead_id"] == after.lead_id]
    assert stages == ["new", "assigned", "nurturing", "mql", "sql"]


def test_a_call_is_one_touch_and_connected_engagement(
    known: tuple[Topology, Lead], rules: Rules
) -> None:
    topology, _ = known
    for status, duration in (("ringing", 0), ("in-progress", 0), ("completed", 75)):
        call = CallEvent(
            event_id=f"CA1-{status}",
            call_id="CA1",
            direction="inbound",
            caller="+8613800138000",
            status=status,
            duration_s=duration,
            started_at=T0 + timedelta(days=1),
        )
        topology.publish_probe(call_probe(call, rules.identity, "CN"))
    topology.run()
    person = only_person(topology)
    assert [t.event_id for t in person.touches] == ["web-1", "call:CA1"]
    assert person.touches[1].channel == "call"
    assert [e.kind for e in person.engagements] == ["call_connected"]


def test_an_event_about_someone_new_starts_a_lead(rules: Rules) -> None:
    topology = Topology(rules)
    probe = engagement_update(
        engagement("email_click", T0, email="new@example.org"), rules.identity, "CN"
    )
    assert not isinstance(probe, dict)
    topology.publish_probe(probe)
    topology.run()
    person = only_person(topology)
    assert person.email == "new@example.org"
    assert person.touches == []


def test_lead_id_events_need_a_known_lead(known: tuple[Topology, Lead], rules: Rules) -> None:
    topology, _ = known
    person = only_person(topology)
    update = engagement_update(
        engagement("email_click", T0, lead_id=person.lead_id), rules.identity, "CN"
    )
    assert isinstance(update, EngagementUpdate)
    topology.publish_update(update)
    topology.run()
    assert [e.kind for e in only_person(topology).engagements] == ["email_click"]
    unknown = update.model_copy(update={"lead_id": "no-such-lead"})
    with pytest.raises(BadRecordError, match="no lead"):
        handle_update(unknown, None, topology.topics, rules, NOW)


def test_events_that_name_nobody_or_nonsense_are_refused(rules: Rules) -> None:
    with pytest.raises(ValueError, match="needs an email"):
        EngagementEvent(event_id="e", kind="email_click", occurred_at=T0)
    with pytest.raises(BadRecordError, match="email"):
        engagement_update(engagement("email_click", T0, email="not-an-email"), rules.identity, "CN")
    with pytest.raises(BadRecordError, match="phone"):
        call_probe(
            CallEvent(
                event_id="x",
                call_id="x",
                direction="inbound",
                caller="12",
                status="completed",
                started_at=T0,
            ),
            rules.identity,
            "CN",
        )


# --- input domains hold in the stream too: producers may write to the topics directly ---------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": 1e308}, "amount"),
        ({"amount": float("nan")}, "amount"),
        ({"occurred_at": "1900-01-01T00:00:00Z"}, "occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59Z"}, "occurred_at"),
        ({"stage": "x" * 900_000, "action": "set_stage"}, "stage"),
    ],
)
def test_a_forged_crm_update_is_refused_by_the_lead_stage(
    known: tuple[Topology, Lead], rules: Rules, changes: dict[str, Any], field: str
) -> None:
    topology, _ = known
    person = only_person(topology)
    event = {
        "event_id": "crm-forged",
        "lead_id": person.lead_id,
        "action": "convert",
        "occurred_at": T0.isoformat(),
        "amount": 100.0,
        "currency": "EUR",
        **changes,
    }
    update = {"type": "crm", "lead_id": person.lead_id, "event": event}
    with pytest.raises(ValidationError) as caught:
        handle_update(update, person, topology.topics, rules, NOW)
    assert [e["loc"][2] for e in caught.value.errors()] == [field]  # ("crm", "event", field)


@pytest.mark.parametrize("year", [1000, 1900, 2500, 9999])
def test_a_call_out_of_the_window_cannot_move_the_first_touch(year: int) -> None:
    body = (
        '{"event_id": "c", "call_id": "c", "direction": "inbound", "caller": "+8613800138000",'
        f' "status": "completed", "started_at": "{year:04d}-01-01T00:00:00Z"}}'
    )
    with pytest.raises(ValidationError, match="started_at"):
        CallEvent.model_validate_json(body)  # what the events step does with events.calls


@pytest.mark.parametrize("action", ["won", "lost", "convert", "disqualify"])
def test_a_redelivered_crm_action_changes_nothing(
    known: tuple[Topology, Lead], rules: Rules, action: str
) -> None:
    """A rebalance can hand the lead step a CRM action it applied but did not commit:
    the second time it is neither refused (no dead letter) nor applied again."""
    topology, _ = known
    person = only_person(topology)
    event = {
        "event_id": f"crm-{action}",
        "lead_id": person.lead_id,
        "action": action,
        "occurred_at": T0.isoformat(),
        **({"amount": 100.0, "currency": "EUR"} if action == "convert" else {}),
        **({"reason": "went with a rival"} if action in ("lost", "disqualify") else {}),
    }
    update = {"type": "crm", "lead_id": person.lead_id, "event": event}
    first = handle_update(update, person, topology.topics, rules, NOW)
    assert first.sends
    assert first.state is not None
    again = handle_update(update, first.state, topology.topics, rules, NOW + timedelta(seconds=5))
    assert again.sends == []
    # A different action of the same kind later is still refused: it is no forward move.
    later = {**event, "event_id": f"crm-{action}-2", "occurred_at": NOW.isoformat()}
    if action != "convert":
        with pytest.raises(BadRecordError, match="forward move"):
            handle_update({**update, "event": later}, first.state, topology.topics, rules, NOW)
