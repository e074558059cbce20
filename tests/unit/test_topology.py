"""The stream core's re-keying protocol, run in memory under random interleavings.

Whatever order independent partitions are processed in, the leads that come
out must be exactly the people the matching rules define (the oracle), each
with every one of its events, and every lead must get an owner.
"""

from __future__ import annotations

import pytest

from leadflow.samples.generate import generate
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


def test_the_oracle_finds_real_duplicates(rules: Rules) -> None:
    sample = generate(120, duplicate_share=0.4, seed=1)
    groups = expected_people(sample.envelopes, rules)
    assert len(groups) < len(sample.envelopes)  # the sample really has duplicates
    for group in groups:  # and the rules never join two different generated people
        assert len({sample.person_of_event[e] for e in group}) == 1
