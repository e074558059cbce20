"""The stream core's re-keying protocol, run in memory under random interleavings.

Whatever order independent partitions are processed in, the leads that come
out must be exactly the people the matching rules define (the oracle), each
with every one of its events, and every lead must get an owner.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from leadflow.samples.generate import generate
from schemas import RawLead
from streams.identity import match_keys as topology_keys
from streams.lead_agent import GATHER
from streams.normalize import normalize_lead
from streams.rules import Rules, load_rules
from tests.topology import Topology, expected_people, expected_survivors


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_distinct_leads_match_the_oracle_in_any_interleaving(rules: Rules, seed: int) -> None:
    sample = generate(120, duplicate_share=0.4, seed=seed)
    expected = expected_survivors(sample.envelopes, rules)
    topology = Topology(rules, partitions=4, seed=seed * 31)
    for envelope in sample.envelopes:
        topology.publish_lead(normalize_lead(envelope, default_region="CN"))
    topology.run()

    got = sorted(sorted(lead.event_ids) for lead in topology.people())
    assert got == sorted(sorted(group) for group in expected.values())
    # The lead that entered first survives, whichever partition ran first.
    assert {lead.lead_id: set(lead.event_ids) for lead in topology.people()} == expected
    for lead in topology.people():
        assert lead.owner, f"{lead.lead_id} has no owner"
        team = rules.routing.teams[lead.team or ""]
        assert lead.owner in {rep.id for rep in team.reps} | {f"queue:{lead.team}"}
    # Every current lead entered the funnel once; every other lead that entered left it merged.
    entered = [t["lead_id"] for t in topology.transitions if t["to_stage"] == "new"]
    merged = {t["lead_id"] for t in topology.transitions if t["to_stage"] == "merged"}
    current = {lead.lead_id for lead in topology.people()}
    assert sorted(lead for lead in entered if lead in current) == sorted(current)
    assert set(entered) - current <= merged
    # Every merge names a survivor that is a current lead or was merged on.
    survivors = {m["survivor_id"] for m in topology.merges}
    assert survivors <= set(topology.states)
    # Every lead's identity answers were all gathered: none waits for more.
    assert not [key for key, value in topology.lead_table.items() if GATHER in value]


def test_the_oracle_finds_real_duplicates(rules: Rules) -> None:
    sample = generate(120, duplicate_share=0.4, seed=1)
    groups = expected_people(sample.envelopes, rules)
    assert len(groups) < len(sample.envelopes)  # the sample really has duplicates
    for group in groups:  # and the rules never join two different generated people
        assert len({sample.person_of_event[e] for e in group}) == 1


_NAMES = ["Anna Schmidt", "Anne Schmidt", "Anna Schmitt", "Klaus Berger", "Klaus Bergér", None]
_COMPANIES = ["Contoso GmbH", "Contoso", "Fabrikam", None]
_EMAILS = [
    "anna@contoso-de.com",
    "anne@contoso-de.com",
    "a.schmidt@contoso-de.com",
    "klaus@contoso-de.com",
    "anna@gmail.com",
    None,
    None,
]
_PHONES = ["+49 89 1234-0 ext 12", "+49 89 1234-0 ext 34", "+49 89 12340", "+49 30 1234567", None]


def _colleagues(seed: int) -> list[RawLead]:
    """One office's worth of look-alikes: similar names, shared mailboxes and switchboards."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    envelopes = []
    for i in range(rng.randint(3, 14)):
        fields = {
            name: value
            for name, pool in (
                ("name", _NAMES),
                ("company", _COMPANIES),
                ("email", _EMAILS),
                ("phone", _PHONES),
            )
            if (value := rng.choice(pool))
        }
        if "email" not in fields and "phone" not in fields:
            fields["email"] = f"p{i}@contoso-de.com"
        envelopes.append(
            RawLead(
                event_id=f"e{seed}-{i}",
                channel="web",
                source_system="web_form",
                received_at=start + timedelta(minutes=rng.randint(0, 5)),  # ties happen
                fields=fields,
            )
        )
    return envelopes


@pytest.mark.parametrize("seed", range(0, 200, 5))
def test_look_alike_colleagues_match_the_oracle_in_any_interleaving(
    rules: Rules, seed: int
) -> None:
    envelopes = _colleagues(seed)
    expected = expected_survivors(envelopes, rules)
    for interleaving in range(2):
        topology = Topology(rules, partitions=1 + seed % 4, seed=interleaving)
        for envelope in envelopes:
            topology.publish_lead(normalize_lead(envelope, default_region="DE"))
        topology.run()
        assert {lead.lead_id: set(lead.event_ids) for lead in topology.people()} == expected


def test_a_lead_that_loses_after_claiming_a_key_still_redirects_that_key(rules: Rules) -> None:
    """The second lead claims the shared mailbox, then loses to the first by phone; the
    third lead reaches the person through that mailbox's key, which names the loser."""
    start = datetime(2026, 3, 2, tzinfo=UTC)
    envelopes = [
        RawLead(
            event_id=event_id,
            channel="web",
            source_system="web_form",
            received_at=start + timedelta(minutes=minute),
            fields=fields,
        )
        for event_id, minute, fields in (
            ("desk", 2, {"company": "Contoso GmbH", "phone": "+49 89 12340"}),
            (
                "anne",
                3,
                {"name": "Anne Schmidt", "email": "anna@gmail.com", "phone": "+49 89 12340"},
            ),
            ("anna", 3, {"name": "Anna Schmidt", "email": "anna@gmail.com"}),
        )
    ]
    expected = expected_survivors(envelopes, rules)
    assert list(expected.values()) == [{"desk", "anne", "anna"}]
    for interleaving in range(6):
        topology = Topology(rules, partitions=2, seed=interleaving)
        for envelope in envelopes:
            topology.publish_lead(normalize_lead(envelope, default_region="DE"))
        topology.run()
        assert {lead.lead_id: set(lead.event_ids) for lead in topology.people()} == expected


def _raw(event_id: str, received_at: datetime, **fields: str) -> RawLead:
    return RawLead(
        event_id=event_id,
        channel="web",
        source_system="web_form",
        received_at=received_at,
        fields=fields,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_new_lead_is_a_row_in_three_hops_and_assigned_in_four_whatever_its_keys(
    rules: Rules, seed: int
) -> None:
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    topology = Topology(rules, partitions=4, seed=seed)
    lead = normalize_lead(
        _raw(
            "evt-four-keys",
            at,
            name="Grace Hopper",
            email="grace@contoso-de.com",
            phone="+49 89 1234-0 ext 12",
            company="Contoso GmbH",
            utm_campaign="spring-launch",
        ),
        default_region="DE",
    )
    assert {kind for kind, _, _ in topology_keys(lead, rules.identity)} == {
        "email",
        "phone",
        "company",
        "domain",
    }
    topology.publish_lead(lead)
    topology.run()

    t = topology.topics
    # leads.raw → identity.keys (1) → lead.updates (2) → leads.identified (3)
    assert topology.first_hop[(t.leads_identified, lead.lead_id)] == 3
    # … → routing.requests (3) → leads.assigned (4): the ClickHouse `assignments` row
    assert topology.first_hop[(t.leads_assigned, lead.lead_id)] == 4
    assert not [key for key, value in topology.lead_table.items() if GATHER in value]
    # The whole lead came through, not only what the keys are compared on.
    (person,) = topology.people()
    assert person.company == "Contoso GmbH"
    assert person.touches[0].campaign == "spring-launch"


def test_a_known_persons_new_lead_joins_it_in_four_hops(rules: Rules) -> None:
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    topology = Topology(rules, partitions=4, seed=9)
    first = normalize_lead(
        _raw("evt-first", at, name="Grace Hopper", email="grace@contoso-de.com"),
        default_region="DE",
    )
    topology.publish_lead(first)
    topology.run()
    again = normalize_lead(
        _raw(
            "evt-again",
            at + timedelta(days=1),
            name="Grace Hopper",
            email="grace@contoso-de.com",
            phone="+49 89 1234-0",
        ),
        default_region="DE",
    )
    topology.first_hop.clear()
    topology.publish_lead(again)
    topology.run()

    t = topology.topics
    (person,) = topology.people()
    assert person.lead_id == first.lead_id
    assert set(person.event_ids) == {"evt-first", "evt-again"}
    # identity.keys (1) → lead.updates to the new lead's id, its answers gathered (2) →
    # lead.updates to the person (3) → leads.identified (4)
    assert topology.first_hop[(t.leads_identified, first.lead_id)] == 4
    assert topology.first_hop[(t.lead_merges, first.lead_id)] == 4
    assert not [key for key, value in topology.lead_table.items() if GATHER in value]
