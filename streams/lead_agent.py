"""The agent of step `lead`: the person's state, keyed by lead id.

Inputs: `lead.updates` (new leads' identity answers, merges, absorbs)
and `leads.assigned` (owners chosen by routing), both keyed by lead id; the
partition owning a lead id owns its `lead_state` table entry. Outputs:
`leads.identified` (the whole state, for ClickHouse), `routing.requests`
(keyed by team) while a lead has no owner, `lead.merges`, `lead.transitions`
(crossing the MQL threshold), and `lead.updates` again for merges, which
re-key to the partition of the lead they concern. A merged lead's entry
redirects to its survivor. Unreadable updates go to `dlq.lead`.

`handle_update` is the pure part: state and message in, new state and the
messages to send out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
from pydantic import BaseModel, ValidationError

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from leadflow.rules import MERGED, Rules
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import Assignment, CrmEvent, IdentityProbe, LeadState
from schemas.messages import (
    LEAD_UPDATE,
    AbsorbCommand,
    AcceptedNotice,
    AcceptUpdate,
    CrmUpdate,
    DetachCommand,
    EngagementUpdate,
    EraseLead,
    LeadEvent,
    LeadUpdate,
    MergeCommand,
    NewLead,
    RescoreLead,
    RouteRequest,
    RoutingSubject,
    UnmergeCommand,
)
from schemas.scoring import Outcome
from streams import leads
from streams.features import features
from streams.identity import combine
from streams.learning import scoring_with
from streams.learning_agent import ModelFollower, Rescorer
from streams.routing import choose_team
from streams.scoring import score_lead
from streams.stage_engine import RE_ENGAGED, Move, allowed, apply_moves, workflow_moves
from streams.wiring import (
    Outbox,
    Outputs,
    StagedTable,
    Table,
    json_table,
    raw_topic,
    run_batches,
)

STEP = steps.LEAD
# Stages whose leads a new model does not score again: decided, or gone.
_NOT_RESCORED = frozenset({"won", "lost", "disqualified", "converted", MERGED})
_DEAL_NAMESPACE = uuid.UUID("9d2c4e61-7a3b-4f85-b0c1-5e6f7a8b9c0d")


@dataclass
class Effects:
    """What one update changes: the state to store and the messages to send (topic, key, value)."""

    state: LeadState | None = None
    sends: list[tuple[str, str, bytes]] = field(default_factory=list)


def _emit_state(effects: Effects, topics: Topics, state: LeadState) -> None:
    effects.state = state
    effects.sends.append((topics.leads_identified, state.lead_id, state.model_dump_json().encode()))


def _engagement_moves(before: LeadState | None, state: LeadState, rules: Rules) -> list[Move]:
    """Workflow moves for the engagement this change added (webinars, calls …)."""
    seen = {e.event_id for e in before.engagements} if before else set()
    moves: list[Move] = []
    for engagement in state.engagements:
        if engagement.event_id in seen:
            continue
        if engagement.kind == "call_connected":
            moves += workflow_moves(
                "call_connected",
                engagement.at,
                engagement.event_id,
                rules.stages,
                duration_s=engagement.duration_s,
            )
            if engagement.outcome:
                moves += workflow_moves(
                    "call_outcome",
                    engagement.at,
                    engagement.event_id,
                    rules.stages,
                    outcome=engagement.outcome,
                )
        else:
            moves += workflow_moves(
                "engagement", engagement.at, engagement.event_id, rules.stages, kind=engagement.kind
            )
    return moves


def _after_change(
    effects: Effects,
    topics: Topics,
    before: LeadState | None,
    state: LeadState,
    rules: Rules,
    now: datetime,
    moves: list[Move] | None = None,
) -> None:
    """Stage moves, then the new state out, then a routing request if it needs an owner."""
    moves = [*(moves or []), *_engagement_moves(before, state, rules)]
    if state.mql_at is not None and (before is None or before.mql_at is None):
        moves += workflow_moves("score_mql", state.mql_at, "mql", rules.stages)

    # By event time; at one moment, in funnel order (an MQL and an SQL together: MQL first).
    def funnel_order(move: Move) -> tuple[datetime, int]:
        order = rules.stages.order(move.to)
        return move.at, len(rules.stages.stages) if order is None else order

    state, transitions = apply_moves(state, sorted(moves, key=funnel_order), rules.stages, now)
    for transition in transitions:
        effects.sends.append(
            (topics.lead_transitions, state.lead_id, transition.model_dump_json().encode())
        )
    _emit_state(effects, topics, state)
    if leads.needs_routing(state):
        about = RoutingSubject.of(state)
        rule = choose_team(about, rules.routing)
        request = RouteRequest(rule=rule.name, team=rule.team, lead=about)
        effects.sends.append(
            (topics.routing_requests, rule.team, request.model_dump_json().encode())
        )


def _re_engagement(
    before: LeadState, new: LeadState, update: EngagementUpdate, rules: Rules
) -> tuple[LeadState, list[Move]]:
    """A lost or disqualified person who answers (a reply, a click on a win-back email)
    is re-engaged, and released to routing, which gives the lead back to its previous
    owner while that rep is on the team (streams/routing.py)."""
    if before.stage not in rules.stages.closed:
        return new, []
    known = {e.event_id for e in before.engagements}
    answer = next(
        (
            e
            for e in sorted(update.engagements, key=lambda e: e.at)
            if e.kind in rules.stages.responses and e.event_id not in known
        ),
        None,
    )
    if answer is None:
        return new, []
    move = Move(
        to=RE_ENGAGED,
        at=answer.at,
        cause=answer.event_id,
        reason=f"answered ({answer.kind}) after {before.stage}",
    )
    return leads.release_owner(new), [move]


def outcome_of(event: CrmEvent, state: LeadState, rules: Rules) -> Outcome | None:
    """A won, converted, lost or disqualified lead as a lesson for the learned score: its
    features as they were when it was last scored (before this outcome)."""
    learned = rules.scoring.model
    label = (
        True
        if event.action in learned.positive
        else False
        if event.action in learned.negative
        else None
    )
    if not learned.enabled or label is None:
        return None
    # The lead as it was when the outcome happened: what it did later (a CRM event
    # recorded months late, a click on a win-back email) is not what sold it.
    at = event.occurred_at
    then = state.model_copy(
        update={
            "touches": [t for t in state.touches if t.at <= at],
            "engagements": [e for e in state.engagements if e.at <= at],
        }
    )
    free_mail = rules.identity.free_mail_domains
    return Outcome(
        event_id=event.event_id,
        lead_id=state.lead_id,
        label=label,
        features=features(then, learned.tool_fields, free_mail),
        rule_score=score_lead(then, rules.scoring, free_mail, as_of=at).score,
        at=at,
    )


def crm_moves(event: CrmEvent, state: LeadState, rules: Rules) -> list[Move]:
    """The stage moves a rep's CRM action asks for."""
    at, cause = event.occurred_at, event.event_id
    if event.action == "convert":
        deal_id = stable_id(_DEAL_NAMESPACE, state.lead_id)
        return [
            Move(
                "converted",
                at,
                cause,
                "converted by the rep",
                event.amount,
                event.currency,
                deal_id,
            ),
            Move("qualification", at, cause, "deal opened", event.amount, event.currency, deal_id),
        ]
    if event.action == "set_stage":
        stage = event.stage or ""
        if rules.stages.order(stage) is None and stage not in rules.stages.closed:
            raise BadRecordError("unknown_stage", f"no stage {stage!r} in stages.yaml")
        return [
            Move(stage, at, cause, event.reason or "set by the rep", event.amount, event.currency)
        ]
    target = {"won": "won", "lost": "lost", "disqualify": "disqualified"}[event.action]
    return [Move(target, at, cause, event.reason or "", event.amount, event.currency)]


def _known(
    update: LeadEvent, state: LeadState | None, topics: Topics, effects: Effects
) -> LeadState | None:
    """The state an event about an existing lead applies to; None when it was forwarded.

    A lead that does not exist is a bad record; a merged one forwards the event
    to its survivor's partition.
    """
    if state is None:
        raise BadRecordError("unknown_lead", f"no lead {update.lead_id} for {update.type}")
    if state.merged_into:
        forwarded = update.model_copy(update={"lead_id": state.merged_into})
        effects.sends.append(_update(topics, state.merged_into, forwarded))
        return None
    return state


def _unmerge(
    update: UnmergeCommand, state: LeadState | None, topics: Topics, rules: Rules, now: datetime
) -> Effects:
    """`unmerge` on the absorbed lead's partition: it becomes a lead of its own again, in the
    stage it had, and its survivor gives back what it brought (`detach`). A lead that is not
    merged (never, or already unmerged) ignores it, so a replay changes nothing."""
    effects = Effects()
    if state is None or not state.merged_into:
        return effects
    survivor = state.merged_into
    at = update.at
    restored = leads.restore(state, now)
    back_to = state.stage_before_merge or "new"
    restored, transitions = apply_moves(
        restored,
        [
            Move(
                to=back_to,
                at=at,
                cause=f"unmerge:{update.event_id}",
                reason=f"unmerged from {survivor}",
                restore=True,
            )
        ],
        rules.stages,
        now,
    )
    for transition in transitions:
        effects.sends.append(
            (topics.lead_transitions, state.lead_id, transition.model_dump_json().encode())
        )
    if update.merge is not None:
        record = update.merge.model_copy(update={"unmerged_at": at})
        effects.sends.append((topics.lead_merges, survivor, record.model_dump_json().encode()))
    detach = DetachCommand(lead_id=survivor, event_id=update.event_id, loser_state=restored)
    effects.sends.append(_update(topics, survivor, detach))
    _after_change(effects, topics, state, restored, rules, now)  # routed again if it has no rep
    return effects


def _update(topics: Topics, lead_id: str, message: BaseModel) -> tuple[str, str, bytes]:
    """A message for the lead step's partition of `lead_id`."""
    return topics.lead_updates, lead_id, message.model_dump_json().encode()


def handle_update(
    update: LeadUpdate | dict[str, Any] | bytes,
    state: LeadState | None,
    topics: Topics,
    rules: Rules,
    now: datetime,
) -> Effects:
    effects = Effects()
    if isinstance(update, bytes):
        update = LEAD_UPDATE.validate_json(update)
    elif isinstance(update, dict):
        update = LEAD_UPDATE.validate_python(update)
    if isinstance(update, NewLead):
        probe = update.probe
        if state is not None and state.merged_into:
            redirected = probe.model_copy(update={"lead_id": state.merged_into})
            effects.sends.append(_update(topics, state.merged_into, NewLead(probe=redirected)))
            return effects
        new = leads.apply_lead(state, probe, rules, now)
        moves: list[Move] = []
        lead = probe.lead
        if state is None:
            # The funnel's cohort day is when the person acted (a badge's scan time …).
            moves.append(Move(to="new", at=lead.touched_at, cause=lead.event_id))
        elif (
            state.stage in rules.stages.closed
            and probe.creates_touch
            and new.version != state.version
        ):
            # A lost or disqualified person is back: news for sales, and a fresh routing,
            # unless it is only a call: that attaches to the person and keeps the rep.
            moves.append(
                Move(
                    to=RE_ENGAGED,
                    at=lead.received_at,
                    cause=lead.event_id,
                    reason=f"came back through {lead.channel} after {state.stage}",
                )
            )
            if not probe.event_only:
                new = leads.release_owner(new)
        if new.version != (state.version if state else 0):
            _after_change(effects, topics, state, new, rules, now, moves)
        fresh = state is None or lead.event_id not in state.event_ids
        if fresh and lead.lead_id != probe.lead_id and probe.matches:
            # Once per event: a replay, or the event reaching the survivor again by a
            # redirect, finds its id in the state and writes no second row.
            match = probe.matches[0]
            record = leads.merge_record(
                probe.lead_id,
                lead.lead_id,
                match.rule,
                match.score,
                lead.event_id,
                lead.received_at,
            )
            effects.sends.append(
                (topics.lead_merges, probe.lead_id, record.model_dump_json().encode())
            )
        scores = {m.matched_lead_id: m.score for m in probe.matches}
        for absorbed_id, rule in probe.absorbed:
            if absorbed_id == probe.lead_id:
                continue
            merge = MergeCommand(
                loser=absorbed_id,
                survivor=probe.lead_id,
                survivor_seen=probe.first_seen,
                rule=rule,
                score=scores.get(absorbed_id, 100.0),
                event_id=lead.event_id,
                at=lead.received_at,
                # The new lead lost, but keys it claimed on earlier hops point at its id
                # and other leads may land there: its partition must redirect them too.
                # Its merge row is the one written above.
                recorded=absorbed_id == lead.lead_id,
            )
            effects.sends.append(_update(topics, absorbed_id, merge))
        return effects
    if isinstance(update, MergeCommand):
        loser, survivor = update.loser, update.survivor
        survivor_seen = update.survivor_seen
        if loser == survivor or (state is not None and state.merged_into == survivor):
            return effects
        if state is not None and state.merged_into:
            onward = update.model_copy(update={"loser": state.merged_into, "recorded": False})
            effects.sends.append(_update(topics, state.merged_into, onward))
            return effects
        if state is not None and (state.first_seen, loser) < (survivor_seen, survivor):
            # The "loser" is the earlier lead: it survives instead.
            reverse = update.model_copy(
                update={
                    "loser": survivor,
                    "survivor": loser,
                    "survivor_seen": state.first_seen,
                    "recorded": False,  # another pair: its own row
                }
            )
            effects.sends.append(_update(topics, survivor, reverse))
            return effects
        merged_at = update.at or survivor_seen
        if not update.recorded:
            record = leads.merge_record(
                survivor, loser, update.rule, update.score, update.event_id, merged_at
            )
            effects.sends.append((topics.lead_merges, survivor, record.model_dump_json().encode()))
        marked = leads.mark_merged(state, loser, survivor, survivor_seen, now)
        if state is not None:
            marked.stage_before_merge = state.stage
            # The loser leaves the funnel: its own transitions stay as history.
            marked, transitions = apply_moves(
                marked,
                [
                    Move(
                        to=MERGED,
                        at=now,
                        cause=f"merge:{survivor}",
                        reason=f"merged into {survivor}",
                    )
                ],
                rules.stages,
                now,
            )
            for transition in transitions:
                effects.sends.append(
                    (topics.lead_transitions, loser, transition.model_dump_json().encode())
                )
            effects.sends.append(
                (topics.leads_identified, loser, marked.model_dump_json().encode())
            )
            absorb = AbsorbCommand(
                survivor=survivor, survivor_seen=survivor_seen, loser_state=state
            )
            effects.sends.append(_update(topics, survivor, absorb))
        effects.state = marked
        return effects
    if isinstance(update, AbsorbCommand):
        loser_state = update.loser_state
        if state is not None and state.merged_into:
            onward_absorb = update.model_copy(update={"survivor": state.merged_into})
            effects.sends.append(_update(topics, state.merged_into, onward_absorb))
            return effects
        moves = []
        if state is None:
            # The survivor's own first event has not arrived here yet: it enters now.
            moves.append(
                Move(
                    to="new",
                    at=update.survivor_seen,
                    cause=f"first-seen:{update.survivor}",
                )
            )
        if loser_state.stage and loser_state.stage_at:
            moves.append(
                Move(
                    to=loser_state.stage,
                    at=loser_state.stage_at,
                    cause=f"merge:{loser_state.lead_id}",
                    reason=f"merged lead {loser_state.lead_id} had reached it",
                )
            )
        new = leads.absorb(
            state,
            loser_state,
            update.survivor,
            update.survivor_seen,
            rules,
            now,
        )
        if new.version != (state.version if state else 0):
            _after_change(effects, topics, state, new, rules, now, moves)
        return effects
    if isinstance(update, UnmergeCommand):
        return _unmerge(update, state, topics, rules, now)
    if isinstance(update, DetachCommand):
        if state is None or state.merged_into:
            # The survivor was merged on since: its own survivor holds the events now.
            if state is not None and state.merged_into:
                onward_detach = update.model_copy(update={"lead_id": state.merged_into})
                effects.sends.append(_update(topics, state.merged_into, onward_detach))
            return effects
        new = leads.detach(state, update.loser_state, rules, now)
        if new is not state:
            _after_change(effects, topics, state, new, rules, now)
        return effects
    if isinstance(update, EngagementUpdate):
        state = _known(update, state, topics, effects)
        if state is None:
            return effects
        new = leads.add_engagements(state, update.engagements, rules, now)
        if new is not state:
            new, moves = _re_engagement(state, new, update, rules)
            _after_change(effects, topics, state, new, rules, now, moves)
        return effects
    if isinstance(update, AcceptUpdate):
        state = _known(update, state, topics, effects)
        if state is None:
            return effects
        if not state.owner or state.owner.startswith("queue:"):
            raise BadRecordError("not_assigned", f"lead {state.lead_id} has no rep to accept it")
        if update.rep_id and update.rep_id != state.owner:
            raise BadRecordError(
                "not_owner",
                f"{update.rep_id} does not own lead {state.lead_id} ({state.owner} does)",
            )
        if state.accepted_at is None:
            accepted = state.fork()
            accepted.accepted_at = update.at
            accepted.updated_at = now
            accepted.version += 1
            _emit_state(effects, topics, accepted)
            effects.sends.append(
                (
                    topics.routing_requests,
                    state.team or "",
                    AcceptedNotice(team=state.team, lead_id=state.lead_id)
                    .model_dump_json()
                    .encode(),
                )
            )
        return effects
    if isinstance(update, CrmUpdate):
        state = _known(update, state, topics, effects)
        if state is None:
            return effects
        moves = crm_moves(update.event, state, rules)
        if any(
            (state.stage, state.stage_at, state.stage_reason) == (m.to, m.at, m.reason)
            for m in moves
        ):
            # This very action is the lead's last move: a redelivery (a rebalance replays
            # what was not committed yet). Already applied and sent: nothing to do.
            return effects
        if not allowed(state.stage, moves[0].to, rules.stages):
            raise BadRecordError(
                "stage_not_allowed",
                f"lead {state.lead_id} is at "
                f"{state.stage}; {moves[0].to} would not be a forward move",
            )
        _after_change(effects, topics, state, state, rules, now, moves)
        outcome = outcome_of(update.event, state, rules)
        if outcome is not None:
            # One key: one learner takes every outcome, in order (streams/learning_agent.py).
            effects.sends.append(
                (topics.scoring_outcomes, "model", outcome.model_dump_json().encode())
            )
        return effects
    if isinstance(update, RescoreLead):
        # An open lead that still exists, here: a merged or closed one is left as it is.
        if state is None or state.merged_into or state.stage in _NOT_RESCORED:
            return effects
        new = leads.rescored(state, rules)
        if new is not state:
            new.updated_at = now
            _after_change(effects, topics, state, new, rules, now)
        return effects
    # EraseLead: the agent forgets the state before it gets here (see `register`).
    raise BadRecordError("unexpected_message", f"the lead step does not fold {update.type!r}")


def handle_assignment(
    assignment: Assignment, state: LeadState | None, topics: Topics, rules: Rules, now: datetime
) -> Effects:
    effects = Effects()
    if state is None or state.merged_into:
        return effects  # the survivor is routed on its own
    new = leads.apply_assignment(state, assignment, now)
    if new is not state:
        moves = []
        if not assignment.owner.startswith("queue:"):
            moves += workflow_moves(
                "assigned", assignment.assigned_at, assignment.assignment_id, rules.stages
            )
        _after_change(effects, topics, state, new, rules, now, moves)
    return effects


GATHER = "~gather"
"""Field of a lead's table entry holding its identity answers gathered so far."""


def gather(
    probe: IdentityProbe, raw: bytes, pending: dict[str, str] | None
) -> dict[str, str] | IdentityProbe:
    """One of a new lead's probes back from its key (`raw`: the record as it came): the
    answers so far (to keep, as their JSON), or, once all are in, the combined answer.

    Only the answer of part 0 carries the whole lead (`streams.identity.scatter`),
    so the lead is decided on all of them, never on a part. A replay that repeats
    only some answers of a lead already decided leaves them waiting in its entry:
    they hold nothing the first pass did not apply."""
    answers = {**(pending or {}), str(probe.part): raw.decode()}
    if len(answers) < probe.parts:
        return answers
    parsed = [
        probe if part == str(probe.part) else NewLead.model_validate_json(text).probe
        for part, text in answers.items()
    ]
    return combine(parsed)


def fold_step(
    record: Any, table: Table, out: Outputs, *, topics: Topics, rules: Rules, now: datetime
) -> None:
    """One record of `lead.updates` or `leads.assigned` against the lead's state.

    A lead's table entry is its state, plus, while a new lead's identity answers
    are still coming in, those answers under `~gather`: one entry and one
    changelog record per lead, the answers gone when the state is written."""
    key = (record.key or b"").decode()
    stored = table.get(key)
    pending = stored.get(GATHER) if stored else None
    if pending is not None:
        stored = {name: value for name, value in stored.items() if name != GATHER}
    state = LeadState.model_validate(stored) if stored else None
    try:
        if record.message.topic == topics.leads_assigned:
            effects = handle_assignment(
                Assignment.model_validate_json(record.value), state, topics, rules, now
            )
        else:
            update = LEAD_UPDATE.validate_json(record.value or b"")
            if isinstance(update, EraseLead):
                # `leadflow erase`: forget the lead's state (Faust tombstones the changelog).
                table.pop(key, None)
                return
            if isinstance(update, NewLead) and update.probe.parts > 1:
                answer = gather(update.probe, record.value or b"", pending)
                if isinstance(answer, dict):
                    table[key] = {**(stored or {}), GATHER: answer}
                    return  # more of the lead's keys to hear from
                pending = None
                update = NewLead(probe=answer)
                if answer.lead_id != key:
                    # Another lead is the person: the lead goes to its partition, and this
                    # id redirects there (what that lead's `merge` would write here).
                    out.add(*_update(topics, answer.lead_id, update))
                    kept = state or leads.mark_merged(
                        None, key, answer.lead_id, answer.first_seen, now
                    )
                    table[key] = kept.model_dump(mode="json", exclude_defaults=True)
                    return
            effects = handle_update(update, state, topics, rules, now)
    except (BadRecordError, ValidationError, ValueError) as exc:
        # Bad input only (JSON and pydantic errors are ValueErrors); a bug in the
        # stage raises anything else and stops the worker before its offset commits.
        out.dead_letter(topics.dlq(STEP), STEP, record, exc)
        return
    if effects.state is not None:
        # Defaults left out: a third less to store, read and replicate per lead.
        entry = effects.state.model_dump(mode="json", exclude_defaults=True)
        table[key] = entry if pending is None else {**entry, GATHER: pending}
    for topic, out_key, value in effects.sends:
        out.add(topic, out_key, value)


def register(
    app: faust.App,
    topics: Topics,
    settings: Settings,
    rules: Rules,
    model: ModelFollower | None = None,
) -> Any:
    """`model`: the worker's follower of the learned model (none: rules alone)."""
    source = app.topic(
        topics.lead_updates,
        topics.leads_assigned,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    table = json_table(app, "lead_state", settings)

    rescorer = None
    if model is not None and rules.scoring.model.enabled:
        closed = _NOT_RESCORED | frozenset(rules.stages.closed)
        updates = raw_topic(app, topics.lead_updates)
        rescorer = Rescorer(model, table, updates, rules.scoring.model, closed)

        async def rescore_open_leads() -> None:
            await rescorer.run()

        app.task(rescore_open_leads)

    def fold_one(record: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        if rescorer is not None:
            rescorer.tables_ready = True
        with scoring_with(model.snapshot if model is not None else None):
            fold_step(record, staged, out, topics=topics, rules=rules, now=datetime.now(UTC))

    async def fold_leads(stream: Any) -> None:
        if model is not None:
            await model.wait_loaded()
        await run_batches(app, stream, settings, fold_one, table)

    return app.agent(source, name=STEP, concurrency=1)(fold_leads)
