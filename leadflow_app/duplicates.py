"""Suggested duplicates, and merges a person decides: `GET /v1/duplicates`,
`POST /v1/leads/{lead_id}/merge`, `POST /v1/leads/{lead_id}/unmerge`.

A fuzzy rule (a similar name at the same company or corporate domain) never
merges two leads whose email or phone disagree: the pair is a *suggested
duplicate* on the later lead (`suggested_duplicates`, best 20). Sales ops
look at the list and decide:

- **merge** publishes a `merge` on `lead.updates`, keyed by the lead that
  entered leadflow later (it is absorbed, as in an automatic merge: the lead
  that came first keeps its id, owner and assignment). The stream does the
  rest, with the same code and guarantees as any merge; the merge row says
  `rule = manual`.
- **unmerge** publishes an `unmerge` for a merged lead: on its partition it
  becomes a lead of its own again (its own state was kept), back in the
  stage it had, and its survivor gives back what it brought (fields it
  filled, addresses and numbers only it had, its touches, notes and events;
  an owner taken from it). The merge row is kept with `unmerged_at`. The two
  are no longer suggested as duplicates of each other.

Both answer 202 once the command is in Kafka (acks=all): the change lands in
ClickHouse as soon as the stream has applied it. The checks here read
ClickHouse, which trails the stream by a moment; the stream decides again
on its own state (a merge that lost a race reverses, an unmerge of a lead no
longer merged changes nothing), so a stale read cannot break a lead.

A refused request (bad JSON, an unknown or merged lead) answers 4xx naming
the problem and leaves a dead letter on `dlq.lead`. Who may call the routes
is the access middleware's decision: `crm` for merge and unmerge, `read:pii`
for the list (leadflow_app/access.py). Every call is in the audit log.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ingest_adapters.publisher import Publisher
from leadflow import steps
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.strict_json import load_object
from leadflow.topics import Topics
from schemas import MergeRecord
from schemas.messages import MergeCommand, UnmergeCommand
from sinks.clickhouse import audit
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.query_api import deep_jsonable, json_answer, limit_param

_PERSON = "lead_id, full_name, email, phone, company, first_seen, owner, stage"
MAX_LEAD_ID_CHARS = 200


async def suggested_pairs(clickhouse: ClickHouse, limit: int) -> list[dict[str, Any]]:
    """Pairs of current leads a rule found similar but did not merge, best score first.

    A pair is listed once, whichever of the two holds the suggestion; a pair whose
    other lead has since been merged or erased is left out.
    """
    db = clickhouse.database
    rows = await clickhouse.query(
        f"SELECT {_PERSON}, other_id, rule, score FROM ("
        f"  SELECT {_PERSON}, suggested_lead_ids, suggested_rules, suggested_scores "
        f"  FROM {db}.leads FINAL WHERE merged_into = '' AND notEmpty(suggested_lead_ids)"
        ") ARRAY JOIN suggested_lead_ids AS other_id, suggested_rules AS rule, "
        "suggested_scores AS score "
        "ORDER BY score DESC, lead_id, other_id LIMIT {limit:UInt32}",
        {"limit": limit * 2},
    )
    others = {r["other_id"] for r in rows}
    current = {
        r["lead_id"]: r
        for r in await clickhouse.query(
            f"SELECT {_PERSON} FROM {db}.leads FINAL "
            "WHERE merged_into = '' AND lead_id IN {ids:Array(String)}",
            {"ids": sorted(others)},
        )
    }
    pairs: list[dict[str, Any]] = []
    seen: set[frozenset[str]] = set()
    for row in rows:
        other = current.get(row["other_id"])
        pair = frozenset((row["lead_id"], row["other_id"]))
        if other is None or pair in seen or len(pair) < 2:
            continue
        seen.add(pair)
        lead = {k: row[k] for k in _PERSON.split(", ")}
        pairs.append(
            {"lead": lead, "other": other, "rule": row["rule"], "score": round(row["score"], 2)}
        )
        if len(pairs) == limit:
            break
    return pairs


async def _current(clickhouse: ClickHouse, lead_id: str) -> dict[str, Any] | None:
    rows = await clickhouse.query(
        "SELECT lead_id, merged_into, first_seen "
        f"FROM {clickhouse.database}.leads FINAL WHERE lead_id = {{id:String}}",
        {"id": lead_id},
    )
    return rows[0] if rows else None


def _problem(status: int, error: BadRecordError) -> web.Response:
    return web.json_response(
        {"error": error.reason, "message": error.message, "fields": error.fields}, status=status
    )


def _aware(moment: datetime) -> datetime:
    """A time read from ClickHouse (UTC columns) as an aware datetime."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class DuplicateRoutes:
    """The list (needs ClickHouse) and, with a Kafka publisher, merge and unmerge."""

    def __init__(self, clickhouse: ClickHouse, publisher: Publisher | None, topics: Topics) -> None:
        self._clickhouse = clickhouse
        self._publisher = publisher
        self._topics = topics

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/duplicates", self.get_duplicates)
        if self._publisher is not None:
            app.router.add_post("/v1/leads/{lead_id}/merge", self.post_merge)
            app.router.add_post("/v1/leads/{lead_id}/unmerge", self.post_unmerge)

    async def get_duplicates(self, request: web.Request) -> web.Response:
        limit = limit_param(request)
        pairs = await suggested_pairs(self._clickhouse, limit)
        await audit.record(
            self._clickhouse,
            audit.Actor.of(request),
            "read_duplicates",
            route="/v1/duplicates",
            target=audit.describe(limit=limit),
            lead_ids=sorted({p[side]["lead_id"] for p in pairs for side in ("lead", "other")}),
            rows=len(pairs),
        )
        return json_answer({"duplicates": deep_jsonable(pairs)})

    async def _refuse(
        self, request: web.Request, status: int, error: BadRecordError, body: bytes
    ) -> web.Response:
        assert self._publisher is not None
        letter = dead_letter_for(
            error, body, stage=steps.LEAD, detail=f"{request.method} {request.path}"
        )
        key, value = letter.record()
        await self._publisher.publish(self._topics.dlq(steps.LEAD), key.decode(), value)
        answer = {
            "error": error.reason,
            "message": error.message,
            "fields": error.fields,
            "dead_letter_id": letter.dead_letter_id,
        }
        return web.json_response(answer, status=status)

    async def _lead(
        self, request: web.Request, lead_id: str, body: bytes, field: str
    ) -> dict[str, Any] | web.Response:
        if not lead_id or len(lead_id) > MAX_LEAD_ID_CHARS:
            error = BadRecordError(
                "invalid_fields",
                f"{field} must be a lead id of 1 to {MAX_LEAD_ID_CHARS} characters",
                {field: "a lead id"},
            )
            return await self._refuse(request, 422, error, body)
        lead = await _current(self._clickhouse, lead_id)
        if lead is None:
            error = BadRecordError("unknown_lead", f"no lead {lead_id}", {field: "unknown"})
            return await self._refuse(request, 404, error, body)
        return lead

    async def post_merge(self, request: web.Request) -> web.Response:
        """Body `{"with": "<lead id>"}`: the two are one person."""
        assert self._publisher is not None
        body = await request.read()
        if request.content_type != "application/json":
            error = BadRecordError(
                "unsupported_media_type",
                "send the request as JSON (Content-Type: application/json)",
            )
            return await self._refuse(request, 415, error, body)
        try:
            wanted = load_object(body)
            other_id = wanted.get("with")
            unknown = sorted(set(wanted) - {"with"})
            if unknown:
                raise BadRecordError(
                    "invalid_fields",
                    f'unknown field {unknown[0]!r}; send {{"with": "<lead id>"}}',
                    dict.fromkeys(unknown, "not a field of this request"),
                )
            if not isinstance(other_id, str):
                raise BadRecordError(
                    "invalid_fields",
                    'send {"with": "<lead id>"}: the lead this one is the same person as',
                    {"with": "required, a lead id"},
                )
        except BadRecordError as exc:
            status = 400 if exc.reason == "invalid_json" else 422
            return await self._refuse(request, status, exc, body)
        found = []
        for lead_id, field in ((request.match_info["lead_id"], "lead_id"), (other_id, "with")):
            lead = await self._lead(request, lead_id, body, field)
            if isinstance(lead, web.Response):
                return lead
            if lead["merged_into"]:
                error = BadRecordError(
                    "already_merged",
                    f"lead {lead_id} is merged into {lead['merged_into']}: merge that one",
                    {field: f"merged into {lead['merged_into']}"},
                )
                return await self._refuse(request, 409, error, body)
            found.append(lead)
        if found[0]["lead_id"] == found[1]["lead_id"]:
            error = BadRecordError(
                "same_lead", "a lead cannot be merged with itself", {"with": "the same lead"}
            )
            return await self._refuse(request, 422, error, body)
        # The lead that entered leadflow first survives, as in any merge.
        survivor, loser = sorted(found, key=lambda r: (r["first_seen"], r["lead_id"]))
        event_id = f"manual-merge:{uuid.uuid4()}"
        command = MergeCommand(
            loser=loser["lead_id"],
            survivor=survivor["lead_id"],
            survivor_seen=_aware(survivor["first_seen"]),
            rule="manual",
            score=100.0,
            event_id=event_id,
            at=datetime.now(UTC),
        )
        await self._publisher.publish(
            self._topics.lead_updates, loser["lead_id"], command.model_dump_json().encode()
        )
        await audit.record(
            self._clickhouse,
            audit.Actor.of(request),
            "merge",
            route="/v1/leads/{lead_id}/merge",
            target=audit.describe(event_id=event_id),
            lead_ids=[survivor["lead_id"], loser["lead_id"]],
            rows=1,
        )
        answer = {
            "status": "accepted",
            "event_id": event_id,
            "survivor_id": survivor["lead_id"],
            "merged_id": loser["lead_id"],
        }
        return web.json_response(answer, status=202)

    async def post_unmerge(self, request: web.Request) -> web.Response:
        """The lead in the path (a merged one) becomes a lead of its own again."""
        assert self._publisher is not None
        body = await request.read()
        if body.strip():
            try:
                extra = sorted(load_object(body))
                if extra:
                    raise BadRecordError(
                        "invalid_fields",
                        f"unknown field {extra[0]!r}: unmerge takes no body",
                        dict.fromkeys(extra, "not a field of this request"),
                    )
            except BadRecordError as exc:
                status = 400 if exc.reason == "invalid_json" else 422
                return await self._refuse(request, status, exc, body)
        lead_id = request.match_info["lead_id"]
        lead = await self._lead(request, lead_id, body, "lead_id")
        if isinstance(lead, web.Response):
            return lead
        if not lead["merged_into"]:
            error = BadRecordError(
                "not_merged", f"lead {lead_id} is not merged into another", {"lead_id": "current"}
            )
            return await self._refuse(request, 409, error, body)
        merges = await self._clickhouse.query(
            "SELECT merge_id, survivor_id, merged_id, rule, score, event_id, merged_at "
            f"FROM {self._clickhouse.database}.lead_merges FINAL "
            "WHERE merged_id = {id:String} AND survivor_id = {survivor:String} "
            "AND unmerged_at IS NULL LIMIT 1",
            {"id": lead_id, "survivor": lead["merged_into"]},
        )
        event_id = f"manual-unmerge:{uuid.uuid4()}"
        merge = None
        if merges:
            row = merges[0]
            merge = MergeRecord(
                **{**row, "score": float(row["score"]), "merged_at": _aware(row["merged_at"])}
            )
        command = UnmergeCommand(
            lead_id=lead_id, event_id=event_id, at=datetime.now(UTC), merge=merge
        )
        await self._publisher.publish(
            self._topics.lead_updates, lead_id, command.model_dump_json().encode()
        )
        await audit.record(
            self._clickhouse,
            audit.Actor.of(request),
            "unmerge",
            route="/v1/leads/{lead_id}/unmerge",
            target=audit.describe(event_id=event_id),
            lead_ids=[lead_id, lead["merged_into"]],
            rows=1,
        )
        answer = {
            "status": "accepted",
            "event_id": event_id,
            "lead_id": lead_id,
            "survivor_id": lead["merged_into"],
        }
        return web.json_response(answer, status=202)
