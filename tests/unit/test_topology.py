"""The stream core's re-keying protocol, run in memory under random interleavings.

Whatever order independent partitions are processed in, the leads that come
out must be exactly the people the matching rules define (the oracle), each
with every one of its events, and every lead must get an owner.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from leadflow.normalize import normalize_lead
from leadflow.rules import Rules, load_rules
from leadflow_tools.samples.generate import generate
from schemas import RawLead
from streams.identity import match_keys as topology_keys
from streams.lead_agent import GATHER
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


_FIRST = [
    "Anna",
    "Bernd",
    "Chen",
    "Dmitri",
    "Elif",
    "Fatima",
    "Goran",
    "Hana",
    "Ines",
    "Jonas",
    "Kaito",
    "Lena",
    "Marco",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tariq",
]
_LAST = [
    "Schmidt",
    "Weber",
    "Novak",
    "Okafor",
    "Petrov",
    "Quispe",
    "Rossi",
    "Suzuki",
    "Tanaka",
    "Ulrich",
    "Varga",
    "Wagner",
    "Xu",
    "Yilmaz",
    "Zielinski",
    "Moreau",
    "Lindqvist",
    "Kim",
]


def _one_big_company(people: int, seed: int) -> list[RawLead]:
    """Many colleagues at one company, each first with an email, then again with a
    new phone and their name typed a little differently: only the fuzzy rule joins them."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    envelopes = []
    for i in range(people):
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        at = start + timedelta(minutes=rng.randint(0, 600))
        envelopes.append(
            _raw(f"p{i}", at, name=name, email=f"p{i}@contoso-de.com", company="Contoso GmbH")
        )
        if rng.random() < 0.6:
            cut = rng.randrange(2, len(name))  # a letter lost past each word's start
            again = name[:cut] + name[cut + 1 :] if name[cut] != " " else name
            envelopes.append(
                _raw(
                    f"p{i}-again",
                    at + timedelta(days=1),
                    name=again,
                    phone=f"+49 89 555 {i:04d}",
                    company="Contoso",
                )
            )
    return envelopes


@pytest.mark.parametrize("seed", [1, 2])
def test_a_company_with_more_names_than_a_block_holds_matches_the_oracle(
    rules: Rules, seed: int
) -> None:
    """Names are filed by block (the first letters of each word), and the bound on names
    applies per block: a company of many more names than that bound still gives the
    oracle's people in any interleaving (a bound on the whole key made it order-dependent)."""
    small = rules.model_copy(
        update={"identity": rules.identity.model_copy(update={"max_names_per_key": 80})}
    )
    envelopes = _one_big_company(300, seed)
    expected = expected_survivors(envelopes, small)
    assert len(expected) < 300  # the re-arrivals really joined their first lead
    for partitions, interleaving in ((1, 0), (2, 1), (4, 2)):
        topology = Topology(small, partitions=partitions, seed=interleaving)
        for envelope in envelopes:
            topology.publish_lead(normalize_lead(envelope, default_region="DE"))
        topology.run()
        assert {lead.lead_id: set(lead.event_ids) for lead in topology.people()} == expected
        filed = [v for k, v in topology.identity.items() if k.startswith("company:contoso|")]
        assert max(len(entry["names"]) for entry in filed) < 80  # no block overflowed
        assert sum(len(entry["names"]) for entry in filed) > 4 * 80  # the key did, many times


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
