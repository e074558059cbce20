"""The agent of step `route`: owner decisions, one partition per team.

Input: `routing.requests`, keyed by team (the lead step re-keys to it), so
every decision about a team's round-robin turn, rep loads, account owners,
already-assigned leads and leads waiting for acceptance is made on the one
partition that owns the team, in order. Messages: `route` (a lead without
owner), `accepted` (the owner took it; the SLA clock stops) and `tick`
(sent for every team every WORKER_SLA_CHECK_INTERVAL_S by a timer: leads
not accepted within the team's `sla_minutes` go to another rep). Output: an
`Assignment` on `leads.assigned`, keyed by lead id, for the lead step and
the rep notifier. Unreadable requests go to `dlq.route`.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from pydantic import ValidationError

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.rules import AssignmentRule, Rules
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import Assignment, LeadState
from schemas.messages import ROUTING_MESSAGE, AcceptedNotice, RouteRequest, RoutingSubject, SlaTick
from streams.routing import TeamView, account_key, assign_owner
from streams.wiring import (
    Outbox,
    Outputs,
    StagedTable,
    Table,
    json_table,
    raw_topic,
    run_batches,
)

STEP = steps.ROUTE


def _rule_named(rules: Rules, name: str) -> AssignmentRule:
    for rule in rules.routing.rules:
        if rule.name == name:
            return rule
    raise BadRecordError("unknown_rule", f"no routing rule {name!r} in routing.yaml")


# The SLA clock of leads waiting for their rep to accept, in three kinds of keys, so no
# write rewrites anything that grows with the number of waiting leads:
#   `<team>|sla|<lead>`                  the lead's entry: owner, rule, deadline, subject
#   `<team>|sla-due|<minute>|<shard>`    ids of the leads due in that minute (1 of 16 shards)
#   `<team>|sla-minutes`                 the minutes that still have due leads, sorted
# A minute holds the leads decided in one minute (less, per shard); the list of minutes is
# as long as the SLA in minutes.
SLA_SHARDS = 16


def _entry_key(team: str, lead_id: str) -> str:
    return f"{team}|sla|{lead_id}"


def _minute(deadline: datetime) -> str:
    return deadline.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def _due_key(team: str, minute: str, lead_id: str) -> str:
    shard = zlib.crc32(lead_id.encode()) % SLA_SHARDS
    return f"{team}|sla-due|{minute}|{shard}"


def _minutes_key(team: str) -> str:
    return f"{team}|sla-minutes"


def start_clock(
    table: Any, team: str, subject: RoutingSubject, owner: str, rule: str, deadline: datetime
) -> None:
    """The lead waits for `owner` until `deadline`."""
    minute = _minute(deadline)
    table[_entry_key(team, subject.lead_id)] = {
        "owner": owner,
        "rule": rule,
        "deadline": deadline.isoformat(),
        "subject": subject.model_dump(mode="json", exclude_defaults=True),
    }
    due = _due_key(team, minute, subject.lead_id)
    ids = list(table.get(due) or [])
    if subject.lead_id not in ids:
        table[due] = [*ids, subject.lead_id]
    minutes = list(table.get(_minutes_key(team)) or [])
    if minute not in minutes:
        table[_minutes_key(team)] = sorted([*minutes, minute])


def stop_clock(table: Any, team: str, lead_id: str) -> dict[str, Any] | None:
    """The lead no longer waits (accepted, or re-routed); its entry, if it had one."""
    entry: dict[str, Any] | None = table.get(_entry_key(team, lead_id))
    if entry is None:
        return None
    table.pop(_entry_key(team, lead_id), None)
    due = _due_key(team, _minute(datetime.fromisoformat(entry["deadline"])), lead_id)
    ids = [i for i in (table.get(due) or []) if i != lead_id]
    if ids:
        table[due] = ids
    else:
        table.pop(due, None)
    return entry


def _migrate_old_index(table: Any, team: str, rules: Rules) -> None:
    """Waiting leads of an older worker (one `<team>|pending` index with whole states) move
    to the keys above, once."""
    old = table.get(f"{team}|pending")
    if old is None:
        return
    for lead_id, entry in dict(old).items():
        stored = entry.get("state") or table.get(f"{team}|pending|{lead_id}")
        table.pop(f"{team}|pending|{lead_id}", None)
        if stored is None:
            continue
        start_clock(
            table,
            team,
            RoutingSubject.of(LeadState.model_validate(stored)),
            entry["owner"],
            entry["rule"],
            datetime.fromisoformat(entry["deadline"]),
        )
    table.pop(f"{team}|pending", None)


def route_lead(request: RouteRequest, table: Any, rules: Rules, now: datetime) -> Assignment:
    """Decide one routing request against the team's table entries and update them."""
    lead = request.lead
    rule = _rule_named(rules, request.rule)
    team = rules.routing.teams[rule.team]
    counters = table.get(f"{rule.team}|counters") or {"turn": 0, "loads": {}}
    account = account_key(lead, rules.identity.free_mail_domains)
    view = TeamView(
        turn=counters["turn"],
        loads=dict(counters["loads"]),
        account_owner=table.get(f"{rule.team}|account|{account}") if account else None,
        lead_owner=table.get(f"{rule.team}|lead|{lead.lead_id}"),
    )
    at = lead.last_touch_at or now
    assignment, after = assign_owner(lead, rule, team, view, at)
    table[f"{rule.team}|counters"] = {"turn": after.turn, "loads": after.loads}
    if after.lead_owner is not None and view.lead_owner is None:
        table[f"{rule.team}|lead|{lead.lead_id}"] = after.lead_owner
        # The SLA clock runs from the decision, in wall-clock time.
        deadline = now + timedelta(minutes=team.sla_minutes)
        start_clock(table, rule.team, lead, after.lead_owner, rule.name, deadline)
    if account and after.account_owner and view.account_owner is None:
        table[f"{rule.team}|account|{account}"] = after.account_owner
    return assignment


def accept_lead(message: AcceptedNotice, table: Any) -> None:
    """The owner accepted the lead: its SLA clock stops."""
    stop_clock(table, message.team or "", message.lead_id)


def expire_pending(team_name: str, table: Any, rules: Rules, now: datetime) -> list[Assignment]:
    """Re-route every lead of the team whose owner let the SLA pass without accepting."""
    team = rules.routing.teams.get(team_name)
    if team is None:
        return []
    _migrate_old_index(table, team_name, rules)
    minutes = list(table.get(_minutes_key(team_name)) or [])
    due_minutes = [m for m in minutes if m <= _minute(now)]
    if not due_minutes:
        return []
    counters = table.get(f"{team_name}|counters") or {"turn": 0, "loads": {}}
    turn, loads = counters["turn"], dict(counters["loads"])
    due: list[tuple[str, str]] = []  # (deadline, lead id)
    for minute in due_minutes:
        for shard in range(SLA_SHARDS):
            for lead_id in table.get(f"{team_name}|sla-due|{minute}|{shard}") or []:
                entry = table.get(_entry_key(team_name, lead_id))
                if entry is not None:
                    due.append((entry["deadline"], lead_id))
    moved: list[Assignment] = []
    for deadline, lead_id in sorted(due):
        if datetime.fromisoformat(deadline) > now:
            continue  # later in its minute: the next tick
        entry = stop_clock(table, team_name, lead_id)
        assert entry is not None
        lead = RoutingSubject.model_validate(entry["subject"])
        rule = _rule_named(rules, entry["rule"])
        previous = entry["owner"]
        loads[previous] = max(0, loads.get(previous, 0) - 1)
        assignment, after = assign_owner(
            lead,
            rule,
            team,
            TeamView(turn=turn, loads=loads),
            now,
            exclude=frozenset({previous}),
            reason_prefix=f"re-routed: {previous} did not accept within {team.sla_minutes:g} min; ",
        )
        turn, loads = after.turn, after.loads
        if after.lead_owner is not None:
            table[f"{team_name}|lead|{lead_id}"] = after.lead_owner
            deadline_next = now + timedelta(minutes=team.sla_minutes)
            start_clock(table, team_name, lead, after.lead_owner, entry["rule"], deadline_next)
        else:
            table.pop(f"{team_name}|lead|{lead_id}", None)
        moved.append(assignment)
    table[f"{team_name}|counters"] = {"turn": turn, "loads": loads}
    still = [m for m in (table.get(_minutes_key(team_name)) or []) if _has_due(table, team_name, m)]
    table[_minutes_key(team_name)] = still
    return moved


def _has_due(table: Any, team: str, minute: str) -> bool:
    return any(table.get(f"{team}|sla-due|{minute}|{shard}") for shard in range(SLA_SHARDS))


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


def assign_step(
    record: Any, table: Table, out: Outputs, *, topics: Topics, rules: Rules, now: datetime
) -> None:
    """One record of `routing.requests` against its team's entries."""
    try:
        assignments = handle_routing(record.value or b"", table, rules, now)
    except (BadRecordError, ValidationError, ValueError) as exc:
        # Bad input only; a bug in the stage stops the worker uncommitted.
        out.dead_letter(topics.dlq(STEP), STEP, record, exc)
        return
    for assignment in assignments:
        out.add(topics.leads_assigned, assignment.lead_id, assignment.model_dump_json().encode())


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.routing_requests)
    table = json_table(app, "team_state", settings)

    def assign_one(record: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        assign_step(record, staged, out, topics=topics, rules=rules, now=datetime.now(UTC))

    async def assign_owners(stream: Any) -> None:
        await run_batches(app, stream, settings, assign_one, table)

    async def tick_teams() -> None:
        # Every worker ticks every team; the team's own partition decides, so extra
        # ticks cost a lookup and nothing else.
        for team in rules.routing.teams:
            tick = SlaTick(team=team).model_dump_json().encode()
            await source.send(key=team.encode(), value=tick)

    app.timer(interval=settings.worker.sla_check_interval_s)(tick_teams)
    return app.agent(source, name=STEP, concurrency=1)(assign_owners)
