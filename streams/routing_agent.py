"""The agent of stage `route`: owner decisions, one partition per team.

Input: `routing.requests`, keyed by team (the lead stage re-keys to it), so
every decision about a team's round-robin turn, rep loads, account owners,
already-assigned leads and leads waiting for acceptance is made on the one
partition that owns the team, in order. Messages: `route` (a lead without
owner), `accepted` (the owner took it; the SLA clock stops) and `tick`
(sent for every team every WORKER_SLA_CHECK_INTERVAL_S by a timer: leads
not accepted within the team's `sla_minutes` go to another rep). Output: an
`Assignment` on `leads.assigned`, keyed by lead id, for the lead stage and
the rep notifier. Unreadable requests go to `dlq.route`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from pydantic import ValidationError

from leadflow import stages
from leadflow.errors import BadRecordError
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import Assignment, LeadState
from schemas.messages import ROUTING_MESSAGE, AcceptedNotice, RouteRequest, SlaTick
from streams.routing import TeamView, account_key, assign_owner
from streams.rules import AssignmentRule, Rules
from streams.wiring import Outbox, StagedTable, json_table, raw_topic, run_batches

STAGE = stages.ROUTE


def _rule_named(rules: Rules, name: str) -> AssignmentRule:
    for rule in rules.routing.rules:
        if rule.name == name:
            return rule
    raise BadRecordError("unknown_rule", f"no routing rule {name!r} in routing.yaml")


def _pending_key(team: str) -> str:
    """The team's SLA index: lead id → owner, rule and deadline (small entries only)."""
    return f"{team}|pending"


def _pending_state_key(team: str, lead_id: str) -> str:
    """The lead state a re-route needs, one key per pending lead.

    Kept out of the index: the index is read and written on every routing
    decision, and with whole states in it that cost grew with every lead
    waiting for acceptance (the hot spot of the pipeline benchmark's profile).
    """
    return f"{team}|pending|{lead_id}"


def route_lead(request: RouteRequest, table: Any, rules: Rules, now: datetime) -> Assignment:
    """Decide one routing request against the team's table entries and update them."""
    state = request.state
    rule = _rule_named(rules, request.rule)
    team = rules.routing.teams[rule.team]
    counters = table.get(f"{rule.team}|counters") or {"turn": 0, "loads": {}}
    account = account_key(state, rules.identity.free_mail_domains)
    view = TeamView(
        turn=counters["turn"],
        loads=dict(counters["loads"]),
        account_owner=table.get(f"{rule.team}|account|{account}") if account else None,
        lead_owner=table.get(f"{rule.team}|lead|{state.lead_id}"),
    )
    at = state.touches[-1].at if state.touches else now
    assignment, after = assign_owner(state, rule, team, view, at)
    table[f"{rule.team}|counters"] = {"turn": after.turn, "loads": after.loads}
    if after.lead_owner is not None and view.lead_owner is None:
        table[f"{rule.team}|lead|{state.lead_id}"] = after.lead_owner
        # The SLA clock runs from the decision, in wall-clock time.
        pending = dict(table.get(_pending_key(rule.team)) or {})
        pending[state.lead_id] = {
            "owner": after.lead_owner,
            "rule": rule.name,
            "deadline": (now + timedelta(minutes=team.sla_minutes)).isoformat(),
        }
        table[_pending_key(rule.team)] = pending
        table[_pending_state_key(rule.team, state.lead_id)] = state.model_dump(mode="json")
    if account and after.account_owner and view.account_owner is None:
        table[f"{rule.team}|account|{account}"] = after.account_owner
    return assignment


def accept_lead(message: AcceptedNotice, table: Any) -> None:
    """The owner accepted the lead: its SLA clock stops."""
    team = message.team or ""
    pending = dict(table.get(_pending_key(team)) or {})
    if pending.pop(message.lead_id, None) is not None:
        table[_pending_key(team)] = pending
        table.pop(_pending_state_key(team, message.lead_id), None)


def expire_pending(team_name: str, table: Any, rules: Rules, now: datetime) -> list[Assignment]:
    """Re-route every lead of the team whose owner let the SLA pass without accepting."""
    team = rules.routing.teams.get(team_name)
    pending = dict(table.get(_pending_key(team_name)) or {})
    if team is None or not pending:
        return []
    counters = table.get(f"{team_name}|counters") or {"turn": 0, "loads": {}}
    turn, loads = counters["turn"], dict(counters["loads"])
    moved: list[Assignment] = []
    for lead_id, entry in sorted(pending.items(), key=lambda kv: kv[1]["deadline"]):
        if datetime.fromisoformat(entry["deadline"]) > now:
            continue
        state_key = _pending_state_key(team_name, lead_id)
        stored = entry.get("state") or table.get(state_key)  # (older index entries held it)
        if stored is None:
            del pending[lead_id]  # erased, or never complete: nothing to re-route
            continue
        state = LeadState.model_validate(stored)
        rule = _rule_named(rules, entry["rule"])
        previous = entry["owner"]
        loads[previous] = max(0, loads.get(previous, 0) - 1)
        assignment, after = assign_owner(
            state,
            rule,
            team,
            TeamView(turn=turn, loads=loads),
            now,
            exclude=frozenset({previous}),
            reason_prefix=f"re-routed: {previous} did not accept within {team.sla_minutes:g} min; ",
        )
        turn, loads = after.turn, after.loads
        del pending[lead_id]
        if after.lead_owner is not None:
            table[f"{team_name}|lead|{lead_id}"] = after.lead_owner
            pending[lead_id] = {
                "owner": after.lead_owner,
                "rule": entry["rule"],
                "deadline": (now + timedelta(minutes=team.sla_minutes)).isoformat(),
            }
            table[state_key] = stored
        else:
            table.pop(f"{team_name}|lead|{lead_id}", None)
            table.pop(state_key, None)
        moved.append(assignment)
    table[f"{team_name}|counters"] = {"turn": turn, "loads": loads}
    table[_pending_key(team_name)] = pending
    return moved


def handle_routing(
    message: RouteRequest | AcceptedNotice | SlaTick | dict[str, Any] | bytes,
    table: Any,
    rules: Rules,
    now: datetime,
) -> list[Assignment]:
    """One message of `routing.requests`: a lead to route, an acceptance, or an SLA tick."""
    if isinstance(message, bytes):
        message = ROUTING_MESSAGE.validate_json(message)
    elif isinstance(message, dict):
        message = ROUTING_MESSAGE.validate_python(message)
    if isinstance(message, RouteRequest):
        return [route_lead(message, table, rules, now)]
    if isinstance(message, AcceptedNotice):
        accept_lead(message, table)
        return []
    return expire_pending(message.team, table, rules, now)


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.routing_requests)
    assigned = raw_topic(app, topics.leads_assigned)
    dlq = raw_topic(app, topics.dlq(STAGE))
    table = json_table(app, "team_state", settings.kafka.partitions)

    async def assign_owners(stream: Any) -> None:
        await run_batches(stream, settings.worker, assign_one, table)

    def assign_one(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        try:
            assignments = handle_routing(event.value or b"", staged, rules, datetime.now(UTC))
        except (BadRecordError, ValidationError, ValueError) as exc:
            # Bad input only; a bug in the stage stops the worker uncommitted.
            out.dead_letter(dlq, STAGE, event, exc)
            return
        for assignment in assignments:
            out.add(assigned, assignment.lead_id, assignment.model_dump_json().encode())

    async def tick_teams() -> None:
        # Every worker ticks every team; the team's own partition decides, so extra
        # ticks cost a lookup and nothing else.
        for team in rules.routing.teams:
            tick = SlaTick(team=team).model_dump_json().encode()
            await source.send(key=team.encode(), value=tick)

    app.timer(interval=settings.worker.sla_check_interval_s)(tick_teams)
    return app.agent(source, name=STAGE, concurrency=1)(assign_owners)
