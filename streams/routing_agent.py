"""The agent of stage `route`: owner decisions, one partition per team.

Input: `routing.requests`, keyed by team (the lead stage re-keys to it), so
every decision about a team's round-robin turn, rep loads, account owners
and already-assigned leads is made on the one partition that owns the team,
in order. Output: an `Assignment` on `leads.assigned`, keyed by lead id, for
the lead stage and the rep notifier. Unreadable requests go to `dlq.route`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from pydantic import ValidationError

from leadflow import stages
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import Assignment, LeadState
from streams.routing import TeamView, account_key, assign_owner
from streams.rules import Rules
from streams.wiring import dead_letter, json_table, raw_topic

STAGE = stages.ROUTE


def route_request(request: dict[str, Any], table: Any, rules: Rules, now: datetime) -> Assignment:
    """Decide one request against the team's table entries and update them."""
    state = LeadState.model_validate(request["state"])
    rule = next(r for r in rules.routing.rules if r.name == request["rule"])
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
    if account and after.account_owner and view.account_owner is None:
        table[f"{rule.team}|account|{account}"] = after.account_owner
    return assignment


def register(app: faust.App, topics: Topics, settings: Settings, rules: Rules) -> Any:
    source = raw_topic(app, topics.routing_requests)
    assigned = raw_topic(app, topics.leads_assigned)
    dlq = raw_topic(app, topics.dlq(STAGE))
    table = json_table(app, "team_state", settings.kafka.partitions)

    async def assign_owners(stream: Any) -> None:
        async for event in stream.events():
            try:
                assignment = route_request(
                    orjson.loads(event.value), table, rules, datetime.now(UTC)
                )
            except (
                ValidationError,
                ValueError,
                KeyError,
                TypeError,
                StopIteration,
                orjson.JSONDecodeError,
            ) as exc:
                await dead_letter(dlq, STAGE, event, exc)
                continue
            await assigned.send(
                key=assignment.lead_id.encode(), value=assignment.model_dump_json().encode()
            )

    return app.agent(source, name=STAGE, concurrency=1)(assign_owners)
