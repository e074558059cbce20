"""Pure stages of the stream core: tagging, scoring, identity hops, lead folding, routing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.normalize import company_key, normalize_lead
from leadflow.rules import Rep, Rules, load_rules
from schemas import Engagement, Lead, LeadState, RawLead
from schemas.lead_state import MAX_ENGAGEMENTS, MAX_EVENT_IDS, MAX_TOUCHES
from schemas.messages import EraseKey
from schemas.rows import LeadRow
from streams.identity import start_probe, visit, visit_key
from streams.identity_agent import resolve_step
from streams.leads import absorb, apply_lead
from streams.routing import TeamView, assign_owner, choose_team, in_working_hours
from streams.scoring import score_lead
from streams.tagging import tag_source
from tests.topology import Topology

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # a Monday, 10:00 in Shanghai


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture
def lead(make_raw_lead: Callable[..., RawLead]) -> Callable[..., Lead]:
    def make(fields: dict[str, str], **overrides: object) -> Lead:
        return normalize_lead(make_raw_lead(fields, **overrides), default_region="CN")

    return make


# Normalization for matching ----------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Fabrikam", "Fabrikam S.A."),
        ("Fabrikam, Inc.", "FABRIKAM INC"),
        ("Contoso (China) Co., Ltd.", "Contoso"),
        ("示例科技有限公司", "示例科技股份有限公司（中国）"),
    ],
)
def test_company_keys_ignore_legal_forms(a: str, b: str) -> None:
    assert company_key(a) == company_key(b)


def test_different_companies_keep_different_keys() -> None:
    assert company_key("Fabrikam") != company_key("Fabrikam Holdings")


def test_country_comes_from_the_phone_when_missing(lead: Callable[..., Lead]) -> None:
    assert lead({"phone": "+44 20 7946 0018"}).country == "GB"
    assert lead({"phone": "+44 20 7946 0018", "country": "DE"}).country == "DE"


# Source tagging ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "channel", "source", "medium"),
    [
        ({"utm_source": "Google", "utm_medium": "CPC"}, "web", "google", "cpc"),
        ({"bd_vid": "x"}, "web", "baidu", "cpc"),
        ({"gclid": "x", "referrer": "https://www.baidu.com/s"}, "web", "google", "cpc"),
        ({"referrer": "https://www.zhihu.com/question/1"}, "web", "zhihu", "social"),
        ({"referrer": "https://mp.weixin.qq.com/s/abc"}, "web", "wechat", "social"),
        ({"referrer": "https://news.example.org/"}, "web", "direct", "none"),
        ({"event": "CIIE 2026"}, "tradeshow", "ciie 2026", "event"),
        ({}, "call", "call_center", "phone"),
        ({}, "web", "direct", "none"),
    ],
)
def test_tag_source(
    lead: Callable[..., Lead],
    rules: Rules,
    fields: dict[str, str],
    channel: str,
    source: str,
    medium: str,
) -> None:
    touch = tag_source(lead({"email": "a@example.com", **fields}, channel=channel), rules.sources)
    assert (touch.source, touch.medium) == (source, medium)


# Scoring -------------------------------------------------------------------------


def state_of(lead: Lead, rules: Rules) -> LeadState:
    return apply_lead(None, start_probe(lead, rules.identity), rules, T0)


def test_fit_and_negative_rules_fire_with_reasons(lead: Callable[..., Lead], rules: Rules) -> None:
    hot = state_of(
        lead(
            {
                "email": "cto@fabrikam.example",
                "phone": "13800138000",
                "title": "销售总监",
                "employees": "1000-5000",
                "industry": "软件",
                "country": "CN",
            }
        ),
        rules,
    )
    fired = dict(hot.score_rules)
    assert set(fired) == {
        "company_size_1000_plus",
        "target_industry",
        "senior_title",
        "core_market",
        "has_phone",
        "corporate_email",
    }
    assert hot.score == 80
    assert hot.grade == "A"
    assert hot.mql_at == hot.touches[0].at  # crossed the MQL threshold with this touch

    cold = state_of(lead({"email": "kid@qq.com", "title": "Student"}), rules)
    assert dict(cold.score_rules) == {"free_mail": -10, "student": -20}
    assert (cold.score, cold.grade, cold.mql_at) == (0, "D", None)


def test_engagement_decays_by_half_life(lead: Callable[..., Lead], rules: Rules) -> None:
    state = state_of(lead({"email": "a@qq.com"}), rules)
    at = state.touches[0].at
    state.engagements = [Engagement(event_id="e1", kind="webinar_attended", at=at)]
    fresh = dict(score_lead(state, rules.scoring, rules.identity.free_mail_domains, as_of=at).rules)
    month = dict(
        score_lead(
            state, rules.scoring, rules.identity.free_mail_domains, as_of=at + timedelta(days=30)
        ).rules
    )
    assert fresh["webinar_attended"] == 15
    assert month["webinar_attended"] == 7.5


# Identity hops -------------------------------------------------------------------


def test_exact_key_older_owner_wins(lead: Callable[..., Lead], rules: Rules) -> None:
    first = start_probe(lead({"email": "a@example.com"}, event_id="e1"), rules.identity)
    first, entry = visit_key(first, None, rules.identity)
    assert entry["lead_id"] == first.lead_id
    assert not first.matches

    later = start_probe(
        lead({"email": "A@Example.com"}, event_id="e2", received_at=T0 + timedelta(days=1)),
        rules.identity,
    )
    later, after = visit_key(later, entry, rules.identity)
    assert later.lead_id == first.lead_id
    assert later.matches[0].rule == "email_exact"
    assert after == entry

    earlier = start_probe(
        lead({"email": "a@example.com"}, event_id="e0", received_at=T0 - timedelta(days=1)),
        rules.identity,
    )
    earlier, replaced = visit_key(earlier, entry, rules.identity)
    assert earlier.lead_id == earlier.lead.lead_id  # the earlier lead survives
    assert replaced["lead_id"] == earlier.lead_id
    assert earlier.absorbed == [(first.lead_id, "email_exact")]


@pytest.mark.parametrize(
    ("company_a", "company_b", "people"),
    [
        ("Fabrikam", "Fabrikam S.A.", 1),  # one company, one person
        ("Fabrikam", "Contoso", 2),  # same name elsewhere: two people
    ],
)
def test_same_name_merges_only_at_the_same_company(
    lead: Callable[..., Lead], rules: Rules, company_a: str, company_b: str, people: int
) -> None:
    topology = Topology(rules)
    topology.publish_lead(
        lead({"name": "Li Wei", "company": company_a, "phone": "13800138000"}, event_id="a")
    )
    topology.publish_lead(
        lead(
            {"name": "Li  Wei", "company": company_b, "email": "li.wei@example.com"},
            event_id="b",
            received_at=T0 + timedelta(days=1),
        )
    )
    topology.run()
    assert len(topology.people()) == people
    if people == 1:
        [merge] = topology.merges
        assert merge["rule"] == "name_company_fuzzy"


def test_fuzzy_name_at_the_same_company_matches(lead: Callable[..., Lead], rules: Rules) -> None:
    a = start_probe(
        lead(
            {"name": "Jonathan Smith", "company": "Fabrikam S.A.", "email": "jsmith@gmail.com"},
            event_id="a",
        ),
        rules.identity,
    )
    b = start_probe(
        lead(
            {"name": "Jonathon Smith", "company": "FABRIKAM", "phone": "+1 415 555 2671"},
            event_id="b",
            received_at=T0 + timedelta(hours=1),
        ),
        rules.identity,
    )
    company_a = next(k for k in a.keys if k[0] == "company")
    assert all(k[0] != "domain" for k in a.keys)  # gmail says nothing about the employer
    _, index = visit(a.model_copy(update={"keys": [company_a]}), {}, rules.identity)
    company_b = next(k for k in b.keys if k[0] == "company")
    matched, _ = visit(b.model_copy(update={"keys": [company_b]}), index, rules.identity)
    assert matched.lead_id == a.lead_id
    assert matched.matches[0].rule == "name_company_fuzzy"
    assert 88 <= matched.matches[0].score < 100


def test_a_fuzzy_key_files_names_by_block_and_takes_over_an_older_single_list(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    """An index written before blocks kept one list of names per key: the first visit
    files its rows by block, and a name from that list is still found."""
    old = start_probe(
        lead({"name": "Anna Schmidt", "company": "Contoso", "email": "anna@contoso-de.com"}),
        rules.identity,
    )
    legacy = {
        "names": [
            ["anna schmidt", old.lead_id, T0.isoformat(), "anna@contoso-de.com", None],
            ["bernd weber", "bernd-lead", T0.isoformat(), "bernd@contoso-de.com", None],
        ]
    }
    later = start_probe(
        lead(
            {"name": "Anna Schmitt", "company": "Contoso GmbH", "phone": "+49 89 2123 4567"},
            event_id="later",
            received_at=T0 + timedelta(days=1),
        ),
        rules.identity,
    )
    company = next(k for k in later.keys if k[0] == "company")
    resolved, writes = visit(
        later.model_copy(update={"keys": [company]}), {"company:contoso": legacy}, rules.identity
    )
    assert resolved.lead_id == old.lead_id
    assert writes["company:contoso"] == {"blocks": ["an", "be", "sc", "we"]}
    assert [row[0] for row in writes["company:contoso|we"]["names"]] == ["bernd weber"]
    filed = [row[0] for row in writes["company:contoso|an"]["names"]]
    assert filed == ["anna schmidt", "anna schmitt"]
    assert writes["company:contoso|sc"]["names"][-1][1] == old.lead_id


def test_an_erase_at_a_fuzzy_key_clears_the_persons_rows_in_every_block(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    topology = Topology(rules, partitions=1)
    for event_id, name, email in (
        ("a", "Anna Schmidt", "anna@contoso-de.com"),
        ("b", "Bernd Schulz", "bernd@contoso-de.com"),
    ):
        probe = start_probe(
            lead({"name": name, "company": "Contoso", "email": email}, event_id=event_id),
            rules.identity,
        )
        company = next(k for k in probe.keys if k[0] == "company")
        _, writes = visit(
            probe.model_copy(update={"keys": [company]}), topology.identity, rules.identity
        )
        topology.identity.update(writes)
    assert topology.identity["company:contoso"] == {"blocks": ["an", "be", "sc"]}
    anna = next(row[1] for row in topology.identity["company:contoso|an"]["names"])
    erase = EraseKey(key="company:contoso", lead_ids=[anna], emails=["anna@contoso-de.com"])

    class Record:
        key = b"company:contoso"
        value = erase.model_dump_json().encode()

    resolve_step(Record(), topology.identity, topology, topics=topology.topics, rules=rules)
    assert "company:contoso|an" not in topology.identity
    assert [row[0] for row in topology.identity["company:contoso|sc"]["names"]] == ["bernd schulz"]
    assert topology.identity["company:contoso"] == {"blocks": ["be", "sc"]}


# Folding a lead ------------------------------------------------------------------


def test_first_non_empty_wins_and_replays_change_nothing(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    first = lead({"email": "a@example.com", "title": "Engineer"}, event_id="e1")
    state = apply_lead(None, start_probe(first, rules.identity), rules, T0)
    second = lead(
        {"email": "a@example.com", "company": "Fabrikam", "title": "CTO"},
        event_id="e2",
        channel="call",
    )
    probe = start_probe(second, rules.identity).model_copy(update={"lead_id": state.lead_id})
    merged = apply_lead(state, probe, rules, T0)
    assert merged.company == "Fabrikam"  # filled in
    assert merged.title == "Engineer"  # calls may not override titles
    assert [t.event_id for t in merged.touches] == ["e1", "e2"]
    assert apply_lead(merged, probe, rules, T0) == merged  # a redelivery is a no-op


def test_a_busy_person_keeps_a_bounded_history_and_the_first_touch(
    lead: Callable[..., Lead], rules: Rules
) -> None:
    events = 700
    state = None
    for n in range(events):
        visit = lead(
            {"email": "busy@example.com", "utm_source": f"s{n}"},
            event_id=f"e{n:04d}",
            received_at=T0 + timedelta(minutes=n),
        )
        probe = start_probe(visit, rules.identity)
        if state is not None:
            probe = probe.model_copy(update={"lead_id": state.lead_id})
        probe = probe.model_copy(
            update={
                "engagements": [
                    Engagement(event_id=f"g{n}", kind="email_click", at=T0 + timedelta(minutes=n))
                ]
            }
        )
        state = apply_lead(state, probe, rules, T0 + timedelta(minutes=n))
    assert state is not None
    assert len(state.event_ids) == MAX_EVENT_IDS
    assert state.event_ids[-1] == f"e{events - 1:04d}"
    assert len(state.touches) == MAX_TOUCHES
    assert state.touches[0].event_id == "e0000"  # the first touch stays
    assert [t.event_id for t in state.touches[1:]] == [
        f"e{n:04d}" for n in range(events - MAX_TOUCHES + 1, events)
    ]
    assert LeadRow.from_state(state, 0, 0).touch_count == events
    assert len(state.engagements) == MAX_ENGAGEMENTS
    assert state.engagements[0].event_id == f"g{events - MAX_ENGAGEMENTS}"
    # The newest event, delivered again, is still recognised.
    assert apply_lead(state, probe, rules, T0 + timedelta(days=1)) == state
    assert len(state.model_dump_json(exclude_defaults=True)) < 60_000


def test_absorb_takes_touches_and_owner(lead: Callable[..., Lead], rules: Rules) -> None:
    survivor = state_of(lead({"email": "a@example.com"}, event_id="s"), rules)
    loser = state_of(lead({"phone": "13800138000"}, event_id="l"), rules)
    loser.owner, loser.team, loser.owner_name = "liu.yang", "china_inbound", "刘洋"
    merged = absorb(survivor, loser, survivor.lead_id, survivor.first_seen, rules, T0)
    assert merged.phone == "+8613800138000"
    assert {t.event_id for t in merged.touches} == {"s", "l"}
    assert merged.owner == "liu.yang"
    assert loser.lead_id in merged.merged_from


# Routing -------------------------------------------------------------------------


def test_rules_pick_teams_in_order(lead: Callable[..., Lead], rules: Rules) -> None:
    big_cn = state_of(lead({"email": "a@x.cn", "country": "CN", "employees": "800"}), rules)
    small_cn = state_of(lead({"email": "b@x.cn", "country": "CN"}), rules)
    douyin = state_of(lead({"email": "c@x.com", "utm_source": "douyin"}), rules)
    other = state_of(lead({"email": "d@x.com", "country": "US"}), rules)
    assert choose_team(big_cn, rules.routing).name == "china_enterprise"
    assert choose_team(small_cn, rules.routing).name == "china_inbound"
    assert choose_team(douyin, rules.routing).team == "china_inbound"
    assert choose_team(other, rules.routing).name == "global_inbound"


def route_many(
    rules: Rules, team: str, count: int, at: datetime = T0, view: TeamView | None = None
) -> list[str]:
    rule = next(r for r in rules.routing.rules if r.team == team)
    owners = []
    view = view or TeamView()
    for n in range(count):
        state = LeadState(lead_id=f"l{n}", first_seen=at, updated_at=at, email=f"x{n}@qq.com")
        assignment, view = assign_owner(
            state, rule, rules.routing.teams[team], TeamView(turn=view.turn, loads=view.loads), at
        )
        owners.append(assignment.owner)
    return owners


def test_weighted_round_robin(rules: Rules) -> None:
    # carol.d has weight 2, dan.o weight 1.
    assert route_many(rules, "global_inbound", 6) == ["carol.d", "dan.o", "carol.d"] * 2


def test_working_hours_in_the_reps_time_zone(rules: Rules) -> None:
    rep = rules.routing.teams["china_enterprise"].reps[0]
    assert in_working_hours(rep, T0)  # Monday 10:00 in Shanghai
    assert not in_working_hours(rep, T0 + timedelta(hours=12))  # 22:00
    assert not in_working_hours(rep, T0 + timedelta(days=5))  # Saturday
    night = route_many(rules, "china_enterprise", 1, at=T0 + timedelta(hours=12))
    assert night == ["queue:china_enterprise"]


def test_capacity_and_out_of_office_are_skipped(rules: Rules) -> None:
    team = rules.routing.teams["global_inbound"]
    busy = team.model_copy(
        update={
            "reps": [
                team.reps[0].model_copy(update={"capacity": 1}),
                team.reps[1].model_copy(update={"out_of_office": True}),
            ]
        }
    )
    rule = next(r for r in rules.routing.rules if r.team == "global_inbound")
    state = LeadState(lead_id="l1", first_seen=T0, updated_at=T0)
    first, view = assign_owner(state, rule, busy, TeamView(), T0)
    second, _ = assign_owner(
        state.model_copy(update={"lead_id": "l2"}),
        rule,
        busy,
        TeamView(turn=view.turn, loads=view.loads),
        T0,
    )
    assert first.owner == "carol.d"
    assert second.owner == "queue:global_inbound"
    assert "at capacity" in second.reason
    assert "out of office" in second.reason


def test_account_stickiness_and_replays(rules: Rules) -> None:
    rule = next(r for r in rules.routing.rules if r.team == "global_inbound")
    team = rules.routing.teams["global_inbound"]
    state = LeadState(lead_id="l9", first_seen=T0, updated_at=T0, company_key="fabrikam")
    sticky, _ = assign_owner(state, rule, team, TeamView(turn=0, account_owner="dan.o"), T0)
    assert (sticky.owner, sticky.reason) == ("dan.o", "account owner (sticky)")
    again, view = assign_owner(
        state, rule, team, TeamView(turn=1, loads={"dan.o": 3}, lead_owner="dan.o"), T0
    )
    assert again.owner == "dan.o"
    assert again.assignment_id == sticky.assignment_id
    assert view.turn == 1
    assert view.loads == {"dan.o": 3}


# Rule files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "routing.yaml",
            lambda d: d["rules"].append({"name": "x", "team": "nobody"}),
            "unknown team",
        ),
        ("routing.yaml", lambda d: d["rules"].pop(), "must match every lead"),
        (
            "scoring.yaml",
            lambda d: d["fit"].append(
                {"name": "bad", "field": "title", "op": "matches", "value": "(", "points": 1}
            ),
            "bad pattern",
        ),
        (
            "identity.yaml",
            lambda d: d["rules"].append({"name": "f", "key": "company"}),
            "needs name_threshold",
        ),
        ("scoring.yaml", lambda d: d.update(grades={"A": 10, "B": 50, "C": 5}), "A > B > C"),
    ],
)
def test_bad_rule_files_stop_the_start(
    tmp_path: Path, file: str, change: Callable[[dict[str, object]], object], message: str
) -> None:
    source = Path(__file__).parents[2] / "config"
    for name in ("identity", "sources", "scoring", "routing"):
        data = yaml.safe_load((source / f"{name}.yaml").read_text())
        if f"{name}.yaml" == file:
            change(data)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigurationError, match=message):
        load_rules(tmp_path)


def test_rep_time_zone_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        Rep(id="x", name="X", timezone="Mars/Olympus")


def test_malformed_internal_messages_are_bad_records_not_crashes(rules: Rules) -> None:
    """Every internal message is parsed into its topic's typed union: a malformed one is a
    ValidationError naming the field (the agents dead-letter it), never a crash."""
    from pydantic import ValidationError

    from leadflow.topics import Topics
    from schemas.messages import IDENTITY_MESSAGE, LEAD_UPDATE, ROUTING_MESSAGE
    from streams.lead_agent import handle_update
    from streams.routing_agent import handle_routing

    with pytest.raises(ValidationError, match=r"merge\.loser"):
        handle_update({"type": "merge", "survivor": "s"}, None, Topics(), rules, T0)
    with pytest.raises(ValidationError, match=r"merge\.survivor_seen"):
        handle_update(
            {"type": "merge", "loser": "l", "survivor": "s", "survivor_seen": "yesterday"},
            None,
            Topics(),
            rules,
            T0,
        )
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        handle_update({"type": "gossip", "lead_id": "l"}, None, Topics(), rules, T0)
    lead = {"lead_id": "l1"}
    with pytest.raises(BadRecordError, match="no routing rule"):
        handle_routing({"type": "route", "rule": "nope", "team": "t", "lead": lead}, {}, rules, T0)
    for adapter in (IDENTITY_MESSAGE, LEAD_UPDATE, ROUTING_MESSAGE):
        with pytest.raises(ValidationError):
            adapter.validate_json(b"[1, 2]")
    # An erase command is recognised by its type wherever its keys sit, not by a prefix.
    erase = IDENTITY_MESSAGE.validate_json(b'{"key": "email:a@b.c", "type": "erase"}')
    assert erase.type == "erase"


def test_a_forked_lead_state_shares_nothing_that_can_change() -> None:
    """`LeadState.fork` copies only the containers: every item inside them must be immutable,
    or a change to the fork would show through in the original."""
    import typing

    from pydantic import BaseModel

    from schemas.lead_state import _CONTAINER_FIELDS, LeadState

    for name, info in LeadState.model_fields.items():
        origin = typing.get_origin(info.annotation)
        if origin not in (list, dict):
            assert name not in _CONTAINER_FIELDS
            continue
        assert name in _CONTAINER_FIELDS
        for item in typing.get_args(info.annotation):
            inner = typing.get_origin(item) or item
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                assert inner.model_config.get("frozen"), f"{name}: {inner.__name__} is not frozen"
            else:
                assert inner in (str, int, float, bool, tuple), f"{name}: {item} may change"
    state = LeadState(
        lead_id="a", first_seen="2026-03-01T00:00:00Z", updated_at="2026-03-01T00:00:00Z"
    )
    fork = state.fork()
    fork.emails.append("x@example.com")
    fork.attributes["k"] = "v"
    assert state.emails == []
    assert state.attributes == {}


def test_leadflow_schemas_exports_every_message_of_every_topic(tmp_path: Path) -> None:
    """What outside producers need: the events they publish and each internal topic's union,
    with every kind of message in it."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "leadflow", "schemas", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.returncode == 0
    written = {
        p.name.removesuffix(".schema.json"): json.loads(p.read_text())
        for p in tmp_path.glob("*.schema.json")
    }
    for name in ("RawLead", "CallEvent", "EngagementEvent", "CrmEvent", "LeadState"):
        assert name in written, sorted(written)
    kinds = {
        name: set(written[name]["discriminator"]["mapping"])
        for name in ("LeadUpdatesMessage", "RoutingRequestsMessage")
    }
    # identity.keys: a probe may lack its type (older workers), so its union is told apart
    # by a function; the schema lists both shapes.
    shapes = {ref["$ref"].rpartition("/")[2] for ref in written["IdentityKeysMessage"]["oneOf"]}
    assert shapes == {"IdentityProbe", "EraseKey"}
    assert kinds["LeadUpdatesMessage"] == {
        "lead", "merge", "absorb", "unmerge", "detach", "engagement", "accept", "crm", "erase",
        "rescore",
    }  # fmt: skip
    assert set(written["NurtureCommandsMessage"]["discriminator"]["mapping"]) == {
        "tick", "forget"
    }  # fmt: skip
    for name in ("Outcome", "ModelSnapshot", "Evaluation", "NurtureEmail", "NurtureEvent"):
        assert name in written, sorted(written)
    assert kinds["RoutingRequestsMessage"] == {"route", "accepted", "tick"}


def test_messages_an_older_worker_wrote_still_parse(rules: Rules) -> None:
    """Over an upgrade, records the previous version wrote are still in the topics: a probe
    without its `type`, and a routing request with the whole lead state."""
    from schemas import IdentityProbe, Lead
    from schemas.messages import IDENTITY_MESSAGE, ROUTING_MESSAGE, RouteRequest

    lead = Lead(
        lead_id="l1",
        event_id="e1",
        channel="web",
        source_system="web_form",
        email="ada@example.com",
        received_at=T0,
        normalized_at=T0,
    )
    probe = IdentityProbe(lead=lead, lead_id="l1", first_seen=T0, keys=[("email", "x", "r")])
    old_probe = probe.model_dump(mode="json")
    del old_probe["type"]
    assert IDENTITY_MESSAGE.validate_python(old_probe) == probe

    state = LeadState(lead_id="l1", first_seen=T0, updated_at=T0, country="DE", score=42.0)
    old_request = {"type": "route", "rule": "global_inbound", "team": "global_inbound"}
    parsed = ROUTING_MESSAGE.validate_python(
        {**old_request, "state": state.model_dump(mode="json")}
    )
    assert isinstance(parsed, RouteRequest)
    assert (parsed.lead.lead_id, parsed.lead.country, parsed.lead.score) == ("l1", "DE", 42.0)


def test_a_previous_owner_who_left_or_is_out_hands_the_lead_to_the_next_rep(
    rules: Rules,
) -> None:
    rule = next(r for r in rules.routing.rules if r.team == "global_inbound")
    team = rules.routing.teams["global_inbound"]
    state = LeadState(lead_id="l7", first_seen=T0, updated_at=T0)
    back, _ = assign_owner(state, rule, team, TeamView(lead_owner="dan.o"), T0)
    assert (back.owner, back.reason) == ("dan.o", "already assigned in this team")
    left, view = assign_owner(state, rule, team, TeamView(lead_owner="former.rep"), T0)
    assert left.owner in {rep.id for rep in team.reps}
    assert left.reason.startswith("previous owner former.rep left the team; round-robin")
    assert view.loads == {left.owner: 1}
    away = team.model_copy(
        update={
            "reps": [
                r.model_copy(update={"out_of_office": True}) if r.id == "dan.o" else r
                for r in team.reps
            ]
        }
    )
    other, _ = assign_owner(state, rule, away, TeamView(lead_owner="dan.o"), T0)
    assert other.owner != "dan.o"
    assert "previous owner dan.o is out of office" in other.reason


def test_a_lost_lead_that_answers_is_re_engaged_and_routed_again(rules: Rules) -> None:
    from leadflow.topics import Topics
    from schemas.messages import EngagementUpdate
    from streams.lead_agent import handle_update

    topics = Topics()
    lost = LeadState(
        lead_id="l8",
        first_seen=T0,
        updated_at=T0,
        stage="lost",
        stage_at=T0,
        team="global_inbound",
        owner="dan.o",
        owner_name="Dan",
        email="x@fabrikam.com",
    )
    later = T0 + timedelta(days=31)
    view = Engagement(event_id="v1", kind="pricing_page_view", at=later)
    quiet = handle_update(
        EngagementUpdate(lead_id="l8", engagements=[view]), lost, topics, rules, later
    )
    assert quiet.state is not None
    assert quiet.state.stage == "lost"
    assert quiet.state.owner == "dan.o"
    click = Engagement(event_id="nurture:s1:click:0", kind="email_click", at=later)
    back = handle_update(
        EngagementUpdate(lead_id="l8", engagements=[click]), lost, topics, rules, later
    )
    assert back.state is not None
    assert back.state.stage == "re_engaged"
    assert back.state.owner is None  # routing decides again: its rep, while on the team
    sent = {topic for topic, _, _ in back.sends}
    assert {topics.lead_transitions, topics.routing_requests} <= sent
