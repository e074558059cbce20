"""Who is the same person, and which lead survives: the semantics of "Stream core v2".

- The lead that entered leadflow first survives a merge with its id, owner and
  assignment; an event (a call, an engagement) ranks by when leadflow took it,
  never by its own occurred_at, so it cannot take a lead away from its rep.
- A fuzzy rule never merges two leads whose email or phone disagree: the pair
  is a suggested duplicate on the lead instead.
- A phone's extension is part of its match key: two people behind one
  switchboard stay two people.
- Merge rows come from the event, not the wall clock: a replay writes the same
  row, never a second one.

Real-shaped inputs throughout, run through the pure stage functions and the
in-memory topology (tests/topology.py), whose oracle applies the same rules.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from rapidfuzz import fuzz

from leadflow.normalize import normalize_lead
from leadflow.rules import Rules, load_rules
from leadflow.topics import Topics
from schemas import CallEvent, EngagementEvent, IdentityProbe, Lead, LeadState, RawLead
from streams.events import call_probe, engagement_update
from streams.identity import name_blocks, name_key, start_probe, visit_key
from streams.lead_agent import handle_update
from tests.topology import Topology, expected_survivors

MARCH = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)  # the Meta lead arrives
TODAY = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)  # the trade-show scan, then the call


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture
def lead(make_raw_lead: Callable[..., RawLead]) -> Callable[..., Lead]:
    def make(fields: dict[str, str], **overrides: object) -> Lead:
        return normalize_lead(make_raw_lead(fields, **overrides), default_region="DE")

    return make


def meta_lead(make_raw_lead: Callable[..., RawLead]) -> RawLead:
    return make_raw_lead(
        {
            "full_name": "Anna Schmidt",
            "email": "anna.schmidt@contoso-de.com",
            "phone_number": "+49 89 2123 4567",
            "company_name": "Contoso GmbH",
            "country": "DE",
        },
        event_id="meta-1",
        channel="social",
        source_system="meta_lead_ads",
        received_at=MARCH,
    )


def tradeshow_scan(make_raw_lead: Callable[..., RawLead]) -> RawLead:
    return make_raw_lead(
        {
            "name": "Anna Schmidt",
            "company": "Contoso",
            "mobile": "089 2123 4567",
            "event": "Hannover Messe",
            "country": "DE",
        },
        event_id="scan-1",
        channel="tradeshow",
        source_system="badge_scan",
        received_at=TODAY,
    )


def call_from(number: str, started_at: datetime, call_id: str = "CA1") -> CallEvent:
    return CallEvent(
        event_id=f"call-{call_id}",
        call_id=call_id,
        direction="inbound",
        caller=number,
        status="completed",
        duration_s=240,
        started_at=started_at,
    )


def current(topology: Topology) -> LeadState:
    [person] = topology.people()
    return person


# 1. The lead that entered first keeps the person -----------------------------------


def test_a_call_dated_before_the_lead_does_not_take_the_lead_from_its_rep(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    topology = Topology(rules, seed=3)
    topology.now = MARCH
    topology.publish_lead(normalize_lead(meta_lead(make_raw_lead), default_region="DE"))
    topology.run()
    owned = current(topology)
    assert owned.owner
    assert not owned.owner.startswith("queue:")

    topology.now = TODAY
    topology.publish_lead(normalize_lead(tradeshow_scan(make_raw_lead), default_region="DE"))
    topology.run()
    # A call-center export, replayed today: the call itself is from before the Meta lead.
    call = call_probe(
        call_from("+4989 21234567", MARCH - timedelta(days=2)),
        rules.identity,
        "DE",
        now=TODAY + timedelta(minutes=5),
    )
    topology.publish_probe(call)
    topology.run()

    person = current(topology)
    assert person.lead_id == owned.lead_id
    assert (person.team, person.owner, person.assigned_at) == (
        owned.team,
        owned.owner,
        owned.assigned_at,
    )
    assert {a.lead_id for a in topology.assignments} == {owned.lead_id}
    assert len({a.owner for a in topology.assignments}) == 1  # routed once, never again
    # The call is folded in by its own time: the earliest touch of the person.
    assert [t.event_id for t in person.touches] == ["call:CA1", "meta-1", "scan-1"]
    assert person.first_seen == MARCH
    assert {m["survivor_id"] for m in topology.merges} == {owned.lead_id}


def test_a_call_probe_ranks_by_when_leadflow_took_it(rules: Rules) -> None:
    taken = TODAY + timedelta(minutes=5)
    probe = call_probe(
        call_from("+49 89 2123 4567", MARCH - timedelta(days=2)), rules.identity, "DE", now=taken
    )
    assert probe.first_seen == taken  # not the call's own start in March
    assert probe.event_only
    entry = {"lead_id": "meta-lead", "first_seen": MARCH.isoformat()}
    resolved, after = visit_key(probe, entry, rules.identity)
    assert resolved.lead_id == "meta-lead"
    assert resolved.absorbed == [(probe.lead_id, "phone_exact")]
    assert after == entry  # the key stays with the lead that came first


def test_an_engagement_probe_ranks_by_when_leadflow_took_it(rules: Rules) -> None:
    taken = TODAY + timedelta(minutes=1)
    event = EngagementEvent(
        event_id="webinar-1",
        kind="webinar_attended",
        occurred_at=MARCH - timedelta(days=30),
        email="Anna.Schmidt@contoso-de.com",
    )
    probe = engagement_update(event, rules.identity, "DE", now=taken)
    assert isinstance(probe, IdentityProbe)
    assert (probe.first_seen, probe.event_only, probe.creates_touch) == (taken, True, False)
    entry = {"lead_id": "meta-lead", "first_seen": MARCH.isoformat()}
    resolved, _ = visit_key(probe, entry, rules.identity)
    assert resolved.lead_id == "meta-lead"


def test_a_call_from_an_unknown_number_starts_a_lead_that_later_leads_join(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    topology = Topology(rules, seed=5)
    topology.now = MARCH
    call = call_probe(
        call_from("+49 89 2123 4567", MARCH - timedelta(hours=1)), rules.identity, "DE", now=MARCH
    )
    topology.publish_probe(call)
    topology.run()
    first = current(topology)
    assert first.lead_id == call.lead_id
    assert first.owner

    topology.now = TODAY
    topology.publish_lead(normalize_lead(tradeshow_scan(make_raw_lead), default_region="DE"))
    topology.run()
    person = current(topology)
    assert (person.lead_id, person.owner, person.assigned_at) == (
        first.lead_id,
        first.owner,
        first.assigned_at,
    )


def test_a_call_to_a_lost_lead_re_engages_it_but_keeps_its_rep(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    topics = Topics()
    first = lead({"name": "Anna Schmidt", "phone": "+49 89 2123 4567"}, received_at=MARCH)
    effects = handle_update(
        {"type": "lead", "probe": start_probe(first, rules.identity).model_dump(mode="json")},
        None,
        topics,
        rules,
        MARCH,
    )
    assert effects.state is not None
    lost = effects.state.model_copy(
        update={"owner": "alice.m", "team": "europe", "stage": "lost", "stage_at": MARCH}
    )
    call = call_probe(call_from("+49 89 2123 4567", TODAY), rules.identity, "DE", now=TODAY)
    call = call.model_copy(update={"lead_id": lost.lead_id, "first_seen": lost.first_seen})
    after = handle_update(
        {"type": "lead", "probe": call.model_dump(mode="json")}, lost, topics, rules, TODAY
    )
    assert after.state is not None
    assert after.state.stage == "re_engaged"
    assert after.state.owner == "alice.m"
    assert not [s for s in after.sends if s[0] == topics.routing_requests]


# 2. Fuzzy rules suggest, exact identifiers decide ----------------------------------


def test_colleagues_with_similar_names_and_different_emails_stay_two_people(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    anna = lead({"name": "Anna Schmidt", "email": "anna@contoso-de.com"}, event_id="anna")
    anne = lead(
        {"name": "Anne Schmidt", "email": "anne@contoso-de.com"},
        event_id="anne",
        received_at=MARCH + timedelta(days=1),
    )
    topology = Topology(rules, seed=1)
    topology.publish_lead(anna)
    topology.publish_lead(anne)
    topology.run()
    people = {p.lead_id: p for p in topology.people()}
    assert set(people) == {anna.lead_id, anne.lead_id}
    assert not topology.merges
    # The later lead, as `leads.identified` carries it, names the earlier as a suggestion.
    [(other, rule, score)] = topology.states[anne.lead_id].suggested_duplicates
    assert (other, rule) == (anna.lead_id, "name_domain_fuzzy")
    assert 90 <= score < 100


def test_a_similar_name_without_a_conflicting_identifier_still_merges(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    web = lead({"name": "Anna Schmidt", "email": "anna@contoso-de.com", "company": "Contoso"})
    scan = lead(
        {"name": "Anna Schmitt", "company": "Contoso GmbH", "phone": "+49 89 2123 4567"},
        event_id="scan",
        received_at=MARCH + timedelta(days=1),
    )
    topology = Topology(rules, seed=2)
    topology.publish_lead(web)
    topology.publish_lead(scan)
    topology.run()
    person = current(topology)
    assert person.lead_id == web.lead_id
    assert [m["rule"] for m in topology.merges] == ["name_company_fuzzy"]


def test_numbered_test_leads_with_their_own_emails_never_collapse(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    envelopes = [
        make_raw_lead(
            {
                "name": f"Durable A {n}",
                "email": f"durable.a.{n}@fabrikam.example",
                "company": "Fabrikam",
            },
            event_id=f"durable-{n}",
            received_at=MARCH + timedelta(seconds=n),
        )
        for n in range(1, 405)
    ]
    expected = expected_survivors(envelopes, rules)
    assert len(expected) == 404
    topology = Topology(rules, seed=4)
    for envelope in envelopes:
        topology.publish_lead(normalize_lead(envelope, default_region="DE"))
    topology.run()
    assert {p.lead_id: set(p.event_ids) for p in topology.people()} == expected
    assert not topology.merges
    assert all(len(p.suggested_duplicates) <= 20 for p in topology.people())
    assert max(len(p.suggested_duplicates) for p in topology.people()) == 20


# 3. Phone extensions ---------------------------------------------------------------


def test_two_people_behind_one_switchboard_stay_two_people(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    klaus = lead(
        {"name": "Klaus Berger", "phone": "+49 89 1234-0 ext 12", "company": "Fabrikam GmbH"},
        event_id="klaus",
    )
    maria = lead(
        {"name": "Maria Huber", "phone": "+49 89 1234-0 x34", "company": "Fabrikam"},
        event_id="maria",
        received_at=MARCH + timedelta(hours=1),
    )
    switchboard = lead(
        {"name": "Empfang", "phone": "+49 89 12340", "company": "Fabrikam"},
        event_id="desk",
        received_at=MARCH + timedelta(hours=2),
    )
    klaus_again = lead(
        {"name": "K. Berger", "phone": "089 1234-0 #12"},
        event_id="klaus-2",
        received_at=MARCH + timedelta(hours=3),
    )
    assert (klaus.phone, klaus.phone_extension) == ("+498912340", "12")
    topology = Topology(rules, seed=6)
    for each in (klaus, maria, switchboard, klaus_again):
        topology.publish_lead(each)
    topology.run()
    people = {p.lead_id: p for p in topology.people()}
    assert set(people) == {klaus.lead_id, maria.lead_id, switchboard.lead_id}
    assert people[klaus.lead_id].full_name == "Klaus Berger"
    assert set(people[klaus.lead_id].event_ids) == {"klaus", "klaus-2"}
    assert (people[maria.lead_id].full_name, people[maria.lead_id].phone_extension) == (
        "Maria Huber",
        "34",
    )
    assert people[switchboard.lead_id].phone_extension is None


# 4. Merge rows are the event's, not the clock's ------------------------------------


def test_a_replayed_merge_writes_the_same_row_once(lead: Callable[..., Lead], rules: Rules) -> None:
    topics = Topics()
    first = lead({"email": "anna@contoso-de.com"}, event_id="e1", received_at=MARCH)
    created = handle_update(
        {"type": "lead", "probe": start_probe(first, rules.identity).model_dump(mode="json")},
        None,
        topics,
        rules,
        MARCH,
    )
    again = lead({"email": "Anna@Contoso-DE.com"}, event_id="e2", received_at=TODAY)
    probe, _ = visit_key(
        start_probe(again, rules.identity),
        {"lead_id": first.lead_id, "first_seen": MARCH.isoformat()},
        rules.identity,
    )
    update = orjson.loads(orjson.dumps({"type": "lead", "probe": probe.model_dump(mode="json")}))
    effects = handle_update(update, created.state, topics, rules, TODAY + timedelta(seconds=1))
    [row] = [orjson.loads(v) for t, _, v in effects.sends if t == topics.lead_merges]
    assert row["merged_at"].startswith("2026-11-27T14:00:00")  # the event's, not the clock's
    replay = handle_update(update, effects.state, topics, rules, TODAY + timedelta(hours=5))
    assert not [s for s in replay.sends if s[0] == topics.lead_merges]

    merge = {
        "type": "merge",
        "loser": "l2",
        "survivor": first.lead_id,
        "survivor_seen": MARCH.isoformat(),
        "rule": "email_exact",
        "score": 100.0,
        "event_id": "e3",
        "at": TODAY.isoformat(),
    }
    rows = [
        [v for t, _, v in handle_update(merge, None, topics, rules, now).sends]
        for now in (TODAY, TODAY + timedelta(days=1))
    ]
    assert rows[0] == rows[1]
    assert orjson.loads(rows[0][0])["merged_at"].startswith("2026-11-27T14:00:00")


# 5. Attribution by when the person acted ------------------------------------------


def test_first_touch_is_the_meta_click_in_march_even_when_the_upload_arrives_first(
    make_raw_lead: Callable[..., RawLead], rules: Rules
) -> None:
    """The badge upload (scanned in October) arrives before the Meta backfill of a March lead:
    leadflow keeps the upload's lead (it entered first) and orders touches by when Anna acted."""
    scanned = datetime(2026, 10, 14, 9, 30, tzinfo=UTC)
    clicked = datetime(2026, 3, 3, 8, 12, tzinfo=UTC)
    upload = make_raw_lead(
        {
            "name": "Anna Schmidt",
            "company": "Contoso",
            "mobile": "089 2123 4567",
            "email": "anna.schmidt@contoso-de.com",
            "event": "Hannover Messe",
            "notes": "Wants pricing\nfor 200 seats",
            "country": "DE",
        },
        event_id="scan-oct",
        channel="tradeshow",
        source_system="badge_upload",
        received_at=TODAY,
        occurred_at=scanned,
    )
    backfill = make_raw_lead(
        {"full_name": "Anna Schmidt", "email": "anna.schmidt@contoso-de.com"},
        event_id="meta-march",
        channel="social",
        source_system="meta_lead_ads",
        received_at=TODAY + timedelta(hours=1),
        occurred_at=clicked,
    )
    topology = Topology(rules, seed=7)
    for raw in (upload, backfill):
        topology.now = raw.received_at
        topology.publish_lead(normalize_lead(raw, default_region="DE"))
        topology.run()

    person = current(topology)
    assert person.lead_id == normalize_lead(upload, default_region="DE").lead_id
    assert [(t.event_id, t.at) for t in person.touches] == [
        ("meta-march", clicked),
        ("scan-oct", scanned),
    ]
    assert person.touches[0].channel == "social"  # first touch: the ad, not the trade show
    assert [(n.source, n.at, n.text) for n in person.notes] == [
        ("tradeshow/badge_upload", scanned, "Wants pricing\nfor 200 seats")
    ]
    [new] = [t for t in topology.transitions if t["to_stage"] == "new"]
    assert datetime.fromisoformat(new["event_time"]) == scanned  # the cohort day: the scan


@pytest.mark.parametrize(
    ("occurred", "why"),
    [
        (datetime(1900, 1, 1, tzinfo=UTC), "before 2000-01-01T00:00:00Z"),
        (datetime(9999, 1, 1, tzinfo=UTC), "after the lead arrived"),
        (TODAY + timedelta(days=2), "after the lead arrived"),
    ],
)
def test_an_implausible_occurred_at_is_never_used_and_the_lead_says_why(
    make_raw_lead: Callable[..., RawLead], rules: Rules, occurred: datetime, why: str
) -> None:
    raw = make_raw_lead(
        {"email": "ada@example.com"}, event_id="odd-clock", received_at=TODAY, occurred_at=occurred
    )
    lead = normalize_lead(raw, default_region="DE")
    assert lead.occurred_at is None
    assert lead.touched_at == TODAY
    [warning] = lead.warnings
    assert why in warning
    assert "the arrival time is used" in warning
    topology = Topology(rules, seed=2)
    topology.now = TODAY
    topology.publish_lead(lead)
    topology.run()
    person = current(topology)
    assert [t.at for t in person.touches] == [TODAY]
    assert person.warnings == [warning]


# 6. A suggested duplicate merged by hand, then unmerged -----------------------------


def test_a_suggested_duplicate_merged_and_unmerged_gives_both_leads_back(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    anna = lead(
        {"name": "Anna Schmidt", "email": "anna@contoso-de.com", "message": "call me"},
        event_id="anna",
    )
    anne = lead(
        {"name": "Anne Schmidt", "email": "anne@contoso-de.com", "title": "CFO", "country": "CN"},
        event_id="anne",
        received_at=MARCH + timedelta(days=1),
    )
    topology = Topology(rules, seed=4)
    topology.publish_lead(anna)
    topology.publish_lead(anne)
    topology.run()
    before = {p.lead_id: p for p in topology.people()}
    assert set(before) == {anna.lead_id, anne.lead_id}
    assert before[anne.lead_id].suggested_duplicates[0][0] == anna.lead_id

    # A person decides they are one: the later lead is absorbed by the earlier.
    merge = {
        "type": "merge",
        "loser": anne.lead_id,
        "survivor": anna.lead_id,
        "survivor_seen": before[anna.lead_id].first_seen.isoformat(),
        "rule": "manual",
        "score": 100.0,
        "event_id": "manual-merge-1",
        "at": TODAY.isoformat(),
    }
    topology.publish_update(merge)
    topology.run()
    [one] = topology.people()
    assert one.lead_id == anna.lead_id
    assert set(one.emails) == {"anna@contoso-de.com", "anne@contoso-de.com"}
    assert (one.title, one.owner) == ("CFO", before[anna.lead_id].owner)
    assert {t.event_id for t in one.touches} == {"anna", "anne"}
    assert topology.states[anne.lead_id].stage == "merged"
    [row] = topology.merges
    assert (row["rule"], row["merged_id"], row["unmerged_at"]) == ("manual", anne.lead_id, None)

    unmerge = {
        "type": "unmerge",
        "lead_id": anne.lead_id,
        "event_id": "manual-unmerge-1",
        "at": (TODAY + timedelta(hours=1)).isoformat(),
        "merge": {k: v for k, v in row.items() if k != "unmerged_at"},
    }
    for _ in range(2):  # the second is a replay: it changes nothing
        topology.publish_update(unmerge)
        topology.run()
        after = {p.lead_id: p for p in topology.people()}
        assert set(after) == {anna.lead_id, anne.lead_id}
        for lead_id, was in before.items():
            now = after[lead_id]
            assert (now.emails, now.title, now.country, now.owner, now.team) == (
                was.emails,
                was.title,
                was.country,
                was.owner,
                was.team,
            )
            assert [t.event_id for t in now.touches] == [t.event_id for t in was.touches]
            assert [n.text for n in now.notes] == [n.text for n in was.notes]
            assert now.merged_from == []
            assert now.merge_undos == []
        assert after[anne.lead_id].stage == before[anne.lead_id].stage
        # A person said they are two: neither is suggested as the other's duplicate again.
        assert after[anne.lead_id].suggested_duplicates == []
        assert anne.lead_id not in [s[0] for s in after[anna.lead_id].suggested_duplicates]
        undone = [m for m in topology.merges if m["unmerged_at"]]
        assert {m["merge_id"] for m in undone} == {row["merge_id"]}
    back = [t for t in topology.transitions if t["reason"] == f"unmerged from {anna.lead_id}"]
    assert [(t["from_stage"], t["to_stage"]) for t in back][:1] == [
        ("merged", before[anne.lead_id].stage)
    ]


_GIVEN = ["Anna", "Jonathan", "Christina", "Katharina", "Stephan", "Maria", "Mohammed",
          "Aleksandr", "Jean-Pierre", "Xiaoming", "Priya", "Bjorn", "Zoe", "Li", "Francesca",
          "Giuseppe", "Hiroshi", "Sophie", "Olga", "Wei"]  # fmt: skip
_FAMILY = ["Schmidt", "Müller", "Johnson", "Nguyen", "Rodriguez", "Kowalski", "Papadopoulos",
           "Van der Berg", "O'Brien", "Zhang", "Ivanov", "Tanaka", "Dubois", "Berners-Lee",
           "de la Cruz", "Ng", "Lindqvist", "Okafor"]  # fmt: skip


def _typed_again(name: str, rng: random.Random) -> str:
    """The name as someone else types it: a letter dropped, added, changed or swapped."""
    chars = list(name)
    at = rng.randrange(len(chars))
    letter = rng.choice("abcdefghijklmnopqrstuvwxyz")
    match rng.randrange(4):
        case 0 if len(chars) > 3:
            del chars[at]
        case 1:
            chars.insert(at, letter)
        case 2:
            chars[at] = letter
        case _ if at < len(chars) - 1:
            chars[at], chars[at + 1] = chars[at + 1], chars[at]
    return "".join(chars)


def test_names_the_fuzzy_rule_finds_similar_almost_always_share_a_block(rules: Rules) -> None:
    """A fuzzy key compares only names that share a block (a word's first two letters):
    on typed variants of real names, the pairs the rule would join and blocks keep apart
    are a fraction of a percent (docs/architecture.md, "Bounds")."""
    rng = random.Random(7)
    threshold = min(r.name_threshold or 100 for r in rules.identity.rules)
    similar = apart = 0
    for given in _GIVEN:
        for family in _FAMILY:
            name = f"{given} {family}"
            variants = [f"{family} {given}", f"{given} {family[0]}. {family}"]
            variants += [_typed_again(name, rng) for _ in range(8)]
            for other in variants:
                a, b = name_key(name), name_key(other)
                if fuzz.token_sort_ratio(a, b) >= threshold:
                    similar += 1
                    apart += not set(name_blocks(a)) & set(name_blocks(b))
    print(f"{similar} similar pairs, {apart} in no common block")
    assert similar > 2_000
    assert apart / similar < 0.005


def test_a_name_of_hundreds_of_words_is_filed_under_a_few_blocks() -> None:
    """A hostile name cannot make one visit write hundreds of index entries."""
    words = [f"{a}{b}x" for a in "abcdefghij" for b in "abcdefghij"]
    blocks = name_blocks(name_key(" ".join(words)))
    assert 1 <= len(blocks) <= 6
    assert name_blocks(name_key("Maria de los Ángeles García López")) == sorted(
        {"ma", "de", "lo", "án", "ga", "ló"}
    )
