"""A lead its owner does not accept within the team's SLA goes to another rep."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from leadflow.errors import BadRecordError
from leadflow.normalize import normalize_lead
from leadflow.rules import Rules, load_rules
from schemas import CrmEvent, LeadState, RawLead
from streams.events import crm_update
from streams.lead_agent import handle_update
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


def test_the_sla_clock_of_many_waiting_leads_never_rewrites_a_growing_value(
    rules: Rules,
) -> None:
    """600 leads (all the team's reps can hold between them) wait for acceptance: every
    table value stays small (one minute's shard at most), accepted leads leave, and a tick
    re-routes exactly the others."""
    from schemas.messages import AcceptedNotice, RouteRequest, RoutingSubject
    from streams.routing_agent import accept_lead, expire_pending, route_lead

    rule = next(r for r in rules.routing.rules if r.team == "global_inbound")
    sla = rules.routing.teams[rule.team].sla_minutes
    table: dict[str, object] = {}
    for n in range(600):
        lead = RoutingSubject(lead_id=f"lead-{n:04d}", country="US", last_touch_at=T0)
        request = RouteRequest(rule=rule.name, team=rule.team, lead=lead)
        route_lead(request, table, rules, T0 + timedelta(seconds=n * 0.2))  # two minutes
    largest = max(len(orjson.dumps(v)) for v in table.values())
    assert largest < 2_000, largest  # no index of every waiting lead
    assert len(table[f"{rule.team}|sla-minutes"]) <= 3  # type: ignore[arg-type]
    waiting = {k.rpartition("|")[2] for k in table if "|sla|" in k}
    assert len(waiting) == 600

    for n in range(0, 600, 2):
        accept_lead(AcceptedNotice(team=rule.team, lead_id=f"lead-{n:04d}"), table)
    moved = expire_pending(rule.team, table, rules, T0 + timedelta(minutes=sla, seconds=200))
    assert sorted(a.lead_id for a in moved) == [f"lead-{n:04d}" for n in range(1, 600, 2)]
    assert all(a.reason.startswith("re-routed:") for a in moved)
    # Re-routed leads wait again (for their new rep); accepted ones are gone for good.
    waiting_again = {a.lead_id for a in moved if not a.owner.startswith("queue:")}
    assert waiting_again  # some found another rep
    assert {k.rpartition("|")[2] for k in table if "|sla|" in k} == waiting_again
    assert not expire_pending(rule.team, table, rules, T0 + timedelta(minutes=sla, seconds=201))


def test_waiting_leads_of_an_older_worker_move_to_the_sla_keys(rules: Rules) -> None:
    from streams.routing_agent import expire_pending

    team = "global_inbound"
    state = LeadState(lead_id="old-1", first_seen=T0, updated_at=T0, country="US")
    table: dict[str, object] = {
        f"{team}|pending": {
            "old-1": {"owner": "sam.o", "rule": "global_inbound", "deadline": T0.isoformat()}
        },
        f"{team}|pending|old-1": state.model_dump(mode="json"),
    }
    [moved] = expire_pending(team, table, rules, T0 + timedelta(seconds=1))
    assert moved.lead_id == "old-1"
    assert moved.owner != "sam.o"
    assert f"{team}|pending" not in table
    assert f"{team}|pending|old-1" not in table
