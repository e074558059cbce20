"""A new lead's identity answers, gathered in the lead step (`streams.lead_agent.gather`).

The probes of a lead's keys come back one by one, in any order, possibly with
other updates for the same lead in between; the lead is decided once all are
in, on the whole lead that part 0 carries.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from leadflow.normalize import normalize_lead
from leadflow.rules import Rules, load_rules
from schemas import Lead, LeadState, RawLead
from schemas.messages import AbsorbCommand
from streams.lead_agent import GATHER
from tests.topology import Topology

AT = datetime(2026, 3, 1, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


def drain(topology: Topology, topic: str) -> None:
    """Run every message queued on one topic (each partition in order), nothing else."""
    for (queued_topic, _), items in list(topology.queues.items()):
        if queued_topic != topic:
            continue
        while items:
            key, value, topology.hop = items.popleft()
            topology._dispatch(topic, key, value)


def take_answer(topology: Topology, lead_id: str, part: int) -> bytes:
    """Remove one identity answer for `lead_id` from `lead.updates`."""
    topic = topology.topics.lead_updates
    for (queued_topic, _), items in topology.queues.items():
        for item in list(items):
            key, value, _ = item
            message = orjson.loads(value)
            if (
                queued_topic == topic
                and key == lead_id
                and message["type"] == "lead"
                and message["probe"]["part"] == part
            ):
                items.remove(item)
                return value
    raise AssertionError(f"no answer {part} for {lead_id}")


def deliver(topology: Topology, key: str, value: bytes) -> None:
    topology._dispatch(topology.topics.lead_updates, key, value)


def answered(
    make_raw_lead: Callable[..., RawLead], rules: Rules, seed: int
) -> tuple[Topology, Lead]:
    """A new lead with two keys (email, phone), its answers back on `lead.updates`."""
    topology = Topology(rules, seed=seed)
    lead = normalize_lead(
        make_raw_lead(
            {"name": "Ada Lovelace", "email": "ada@gmail.com", "phone": "+8613800138000"},
            received_at=AT,
        ),
        default_region="CN",
    )
    topology.publish_lead(lead)
    drain(topology, topology.topics.identity_keys)
    return topology, lead


def test_answers_wait_in_the_leads_entry_until_all_are_in(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    topology, lead = answered(make_raw_lead, rules, seed=1)

    deliver(topology, lead.lead_id, take_answer(topology, lead.lead_id, 1))
    entry = topology.lead_table[lead.lead_id]
    assert set(entry) == {GATHER}
    assert not topology.queues_of(topology.topics.leads_identified)

    deliver(topology, lead.lead_id, take_answer(topology, lead.lead_id, 0))
    entry = topology.lead_table[lead.lead_id]
    assert GATHER not in entry
    assert LeadState.model_validate(entry).event_ids == [lead.event_id]
    topology.run()
    (person,) = topology.people()
    assert person.lead_id == lead.lead_id


def test_an_update_between_the_answers_keeps_them_and_the_lead_still_comes_in(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    """Another lead's merge can reach a new lead before its own answers are all in
    (it found a key the new lead had claimed): the state it brings and the answers
    waiting share the entry, and the new lead lands on that state."""
    topology, lead = answered(make_raw_lead, rules, seed=2)
    deliver(topology, lead.lead_id, take_answer(topology, lead.lead_id, 1))

    other = LeadState(
        lead_id="lead-other",
        first_seen=AT + timedelta(hours=1),
        updated_at=AT + timedelta(hours=1),
        email="ada@gmail.com",
        event_ids=["evt-other"],
    )
    absorb = AbsorbCommand(survivor=lead.lead_id, survivor_seen=AT, loser_state=other)
    deliver(topology, lead.lead_id, absorb.model_dump_json().encode())
    entry = topology.lead_table[lead.lead_id]
    assert GATHER in entry
    assert "evt-other" in entry["event_ids"]

    deliver(topology, lead.lead_id, take_answer(topology, lead.lead_id, 0))
    entry = topology.lead_table[lead.lead_id]
    assert GATHER not in entry
    assert set(LeadState.model_validate(entry).event_ids) == {"evt-other", lead.event_id}


def test_a_known_persons_lead_redirects_at_once_and_joins_the_person(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    topology = Topology(rules, seed=3)
    first = normalize_lead(
        make_raw_lead({"name": "Ada Lovelace", "email": "ada@gmail.com"}, received_at=AT),
        default_region="CN",
    )
    topology.publish_lead(first)
    topology.run()
    again = normalize_lead(
        make_raw_lead(
            {"name": "Ada Lovelace", "email": "ada@gmail.com", "phone": "+8613800138000"},
            received_at=AT + timedelta(days=2),
        ),
        default_region="CN",
    )
    topology.publish_lead(again)
    drain(topology, topology.topics.identity_keys)
    for part in (1, 0):
        deliver(topology, again.lead_id, take_answer(topology, again.lead_id, part))

    stub = LeadState.model_validate(topology.lead_table[again.lead_id])
    assert stub.merged_into == first.lead_id  # later leads reaching this id go on
    topology.run()
    (person,) = topology.people()
    assert person.lead_id == first.lead_id
    assert set(person.event_ids) == {first.event_id, again.event_id}
    assert person.phone == "+8613800138000"
    assert [(m["survivor_id"], m["merged_id"]) for m in topology.merges] == [
        (first.lead_id, again.lead_id)
    ]
