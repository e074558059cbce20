"""A lead its owner does not accept within the team's SLA goes to another rep."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from leadflow.errors import BadRecordError
from schemas import CrmEvent, LeadState, RawLead
from streams.events import crm_update
from streams.lead_agent import handle_update
from streams.normalize import normalize_lead
from streams.rules import Rules, load_rules
from tests.topology import Topology

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture
def routed(make_raw_lead: Callable[..., RawLead], rules: Rules) -> Topology:
    topology = Topology(rules)
    topology.now = T0
    topology.publish_lead(
        normalize_lead(
            make_raw_lead(
                {"name": "Ada", "email": "ada@example.com", "country": "US"},
                event_id="e1",
                received_at=T0,
            ),
            default_region="CN",
        )
    )
    topology.run()
    return topology


def person(topology: Topology) -> LeadState:
    [lead] = topology.people()
    return lead


def tick(topology: Topology, team: str, at: datetime) -> None:
    topology.now = at
    topology.send(
        topology.topics.routing_requests, team, orjson.dumps({"type": "tick", "team": team})
    )
    topology.run()


def accept(topology: Topology, lead: LeadState, rep: str | None, at: datetime) -> None:
    event = CrmEvent(
        event_id=f"acc-{at}", lead_id=lead.lead_id, action="accept", rep_id=rep, occurred_at=at
    )
    topology.publish_update(crm_update(event))
    topology.run()


def test_unaccepted_lead_moves_to_another_rep_after_the_sla(routed: Topology) -> None:
    first = person(routed)
    assert first.team == "global_inbound"
    tick(routed, "global_inbound", T0 + timedelta(minutes=59))
    assert person(routed).owner == first.owner  # not yet
    tick(routed, "global_inbound", T0 + timedelta(minutes=61))
    moved = person(routed)
    assert moved.owner not in (first.owner, None)
    assert moved.assignment_reason is not None
    assert moved.assignment_reason.startswith(f"re-routed: {first.owner} did not accept")
    # The new owner's clock starts at the re-route.
    tick(routed, "global_inbound", T0 + timedelta(minutes=100))
    assert person(routed).owner == moved.owner


def test_accepted_lead_stays(routed: Topology) -> None:
    lead = person(routed)
    accept(routed, lead, lead.owner, T0 + timedelta(minutes=10))
    accepted = person(routed)
    assert accepted.accepted_at == T0 + timedelta(minutes=10)
    tick(routed, "global_inbound", T0 + timedelta(hours=5))
    assert person(routed).owner == lead.owner


def test_only_the_owner_can_accept(routed: Topology, rules: Rules) -> None:
    lead = person(routed)
    wrong = crm_update(
        CrmEvent(
            event_id="x",
            lead_id=lead.lead_id,
            action="accept",
            rep_id="somebody.else",
            occurred_at=T0,
        )
    )
    with pytest.raises(BadRecordError, match="does not own"):
        handle_update(wrong, lead, routed.topics, rules, T0)
    with pytest.raises(BadRecordError, match="no lead"):
        handle_update(wrong.model_copy(update={"lead_id": "nope"}), None, routed.topics, rules, T0)
