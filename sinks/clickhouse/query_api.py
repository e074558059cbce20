"""HTTP routes answering from ClickHouse. In embedded mode (chdb) only the process
that owns the data directory can read it, so these routes live in that process.

Every answer is valid JSON: a float that is not finite (a sum that overflowed
to Infinity, a NaN) is answered as null, and the encoder refuses any that
slipped through rather than writing `Infinity`. Numeric parameters are ASCII
digits only (`²` and `１０` are digits to Python, not to a client) within
bounds, else a JSON 400.

Reads of personal data (`/v1/leads`, `/v1/leads/{id}/explain`,
`/v1/dead-letters`) are recorded in the audit log before they are answered
(sinks/clickhouse/audit.py); `/v1/audit` reads that log (admin only).
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from sinks.clickhouse import audit, funnel, nurture, queries, scoring
from sinks.clickhouse.client import ClickHouse

_WHOLE = re.compile(r"[0-9]{1,12}")
_strict_dumps = functools.partial(json.dumps, allow_nan=False)


def finite(value: Any) -> Any:
    """`value` with every float that is NaN or infinite replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A JSON response that is always valid JSON: non-finite floats become null."""
    return web.json_response(finite(data), status=status, dumps=_strict_dumps)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601 in UTC with an explicit offset (the columns are all UTC); days
    (a week's first day) as ISO dates."""
    return {k: _iso_value(v) for k, v in row.items()}


def _iso_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def deep_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: deep_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [deep_jsonable(v) for v in value]
    return _iso_value(value)


def _iso_utc(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"{name} must be an ISO date or time") from exc
    if not 1900 <= value.year <= 2299:  # the range of ClickHouse's DateTime64
        raise web.HTTPBadRequest(reason=f"{name} must fall between the years 1900 and 2299")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _by(request: web.Request) -> funnel.Dimension | None:
    by = request.query.get("by")
    if by is not None and by not in funnel.DIMENSIONS:
        raise web.HTTPBadRequest(reason=f"by must be one of {', '.join(funnel.DIMENSIONS)}")
    return by


def _whole(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number parameter in ASCII digits within [low, high]; a 400 otherwise."""
    raw = request.query.get(name, str(default))
    if not _WHOLE.fullmatch(raw) or not low <= int(raw) <= high:
        raise web.HTTPBadRequest(reason=f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def limit_param(request: web.Request) -> int:
    return _whole(request, "limit", 100, 1, 10_000)


def _text(request: web.Request, name: str, longest: int = 320) -> str | None:
    raw = request.query.get(name)
    if raw is not None and len(raw) > longest:
        raise web.HTTPBadRequest(reason=f"{name} must be at most {longest} characters")
    return raw


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


class QueryRoutes:
    def __init__(self, clickhouse: ClickHouse) -> None:
        self._clickhouse = clickhouse

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/leads", self.get_leads)
        app.router.add_get("/v1/leads/{lead_id}/explain", self.get_explain)
        app.router.add_get("/v1/dead-letters", self.get_dead_letters)
        app.router.add_get("/v1/funnel", self.get_funnel)
        app.router.add_get("/v1/pipeline", self.get_pipeline)
        app.router.add_get("/v1/pipeline/stagnant", self.get_stagnant)
        app.router.add_get("/dashboard", self.get_dashboard)
        app.router.add_get("/v1/audit", self.get_audit)
        app.router.add_get("/v1/nurture/sequences", self.get_nurture_sequences)
        app.router.add_get("/v1/nurture/tasks", self.get_nurture_tasks)
        app.router.add_get("/v1/scoring/evaluation", self.get_scoring_evaluation)

    async def get_leads(self, request: web.Request) -> web.Response:
        email, phone = _text(request, "email"), _text(request, "phone")
        lead_id, limit = _text(request, "lead_id"), limit_param(request)
        rows = await queries.find_leads(
            self._clickhouse, email=email, phone=phone, lead_id=lead_id, limit=limit
        )
        total = await queries.count_leads(self._clickhouse)
        await audit.record(
            self._clickhouse,
            audit.Actor.of(request),
            "read_leads",
            route=_route(request),
            target=audit.describe(
                email=audit.hashed(email) if email is not None else None,
                phone=audit.hashed(phone) if phone is not None else None,
                lead_id=audit.hashed(lead_id) if lead_id is not None else None,
                limit=limit,
            ),
            lead_ids=[r["lead_id"] for r in rows],
            rows=len(rows),
        )
        return json_answer({"total": total, "leads": [deep_jsonable(r) for r in rows]})

    async def get_explain(self, request: web.Request) -> web.Response:
        requested = request.match_info["lead_id"]
        explained = await queries.explain_lead(self._clickhouse, requested)
        found = [requested] + ([explained["lead"]["lead_id"]] if explained else [])
        await audit.record(
            self._clickhouse,
            audit.Actor.of(request),
            "read_explain",
            route=_route(request),
            target=audit.describe(lead_id=audit.hashed(requested)),
            lead_ids=found,
            rows=1 if explained else 0,
        )
        if explained is None:
            raise web.HTTPNotFound(reason="no lead with this id")
        return json_answer(deep_jsonable(explained))

    async def get_funnel(self, request: web.Request) -> web.Response:
        """?from=&to= (ISO times, to exclusive) [&by=source] [&mode=any|strict]
        [&window_days=90] [&kind=cohort|activity]"""
        start, end = _time(request, "from"), _time(request, "to")
        if start is None or end is None:
            raise web.HTTPBadRequest(reason="from and to are required, e.g. from=2026-03-01")
        by = _by(request)
        if request.query.get("kind", "cohort") == "activity":
            answer = await funnel.activity_funnel(self._clickhouse, start, end, by=by)
        else:
            mode = request.query.get("mode", "any")
            if mode not in ("any", "strict"):
                raise web.HTTPBadRequest(reason="mode must be any or strict")
            window = _whole(request, "window_days", 90, 1, 3650)
            answer = await funnel.cohort_funnel(
                self._clickhouse,
                start,
                end,
                mode=mode,  # type: ignore[arg-type]
                window_days=window,
                by=by,
            )
        return json_answer(deep_jsonable(answer))

    async def get_pipeline(self, request: web.Request) -> web.Response:
        """[?as_of=ISO time] [&by=owner]"""
        answer = await funnel.pipeline(
            self._clickhouse, as_of=_time(request, "as_of"), by=_by(request)
        )
        return json_answer(deep_jsonable(answer))

    async def get_stagnant(self, request: web.Request) -> web.Response:
        """?days=N: open leads whose latest move is older than N days."""
        days = _whole(request, "days", 14, 1, 3650)
        rows = await funnel.stagnant(
            self._clickhouse, days=days, now=datetime.now(UTC), limit=limit_param(request)
        )
        return json_answer({"days": days, "leads": [deep_jsonable(r) for r in rows]})

    async def get_nurture_sequences(self, request: web.Request) -> web.Response:
        """[?sequence=]: each sequence's step funnel (leads per kind of event and step)."""
        sequence = _text(request, "sequence", 100)
        rows = await nurture.step_funnel(self._clickhouse, sequence)
        return json_answer({"rows": [_jsonable(r) for r in rows]})

    async def get_nurture_tasks(self, request: web.Request) -> web.Response:
        """[?as_of=]: each rep's call tasks: due, done on time, late, missed, open."""
        as_of = _time(request, "as_of") or datetime.now(UTC)
        rows = await nurture.task_report(self._clickhouse, as_of)
        return json_answer({"as_of": _iso_utc(as_of), "rows": [_jsonable(r) for r in rows]})

    async def get_scoring_evaluation(self, request: web.Request) -> web.Response:
        """?by=version|week: the learned model's AUC and log-loss beside the rules' AUC,
        on the same outcomes (each predicted before it was learned)."""
        by = request.query.get("by", "version")
        if by not in ("version", "week"):
            raise web.HTTPBadRequest(reason="by must be version or week")
        rows = await scoring.evaluation(self._clickhouse, "week" if by == "week" else "version")
        return json_answer({"by": by, "rows": [_jsonable(r) for r in rows]})

    async def get_dashboard(self, _: web.Request) -> web.Response:
        """The funnel and pipeline page for people; it reads the two JSON routes above."""
        page = resources.files("sinks.clickhouse").joinpath("dashboard.html").read_text("utf-8")
        return web.Response(text=page, content_type="text/html")

    async def get_dead_letters(self, request: web.Request) -> web.Response:
        stage, limit = _text(request, "stage", 100), limit_param(request)
        rows = await queries.recent_dead_letters(self._clickhouse, stage=stage, limit=limit)
        await audit.record(
            self._clickhouse,
            audit.Actor.of(request),
            "read_dead_letters",
            route=_route(request),
            target=audit.describe(stage=stage, limit=limit),
            rows=len(rows),
            detail={"dead_letter_ids": [r["dead_letter_id"] for r in rows]},
        )
        return json_answer({"dead_letters": [_jsonable(r) for r in rows]})

    async def get_audit(self, request: web.Request) -> web.Response:
        """[?action=] [&key_id=] [&identifier=email, E.164 phone or lead id] [&from=&to=]
        [&limit=]: the audit log, newest first (admins only)."""
        action = request.query.get("action")
        if action is not None and action not in audit.ACTIONS:
            raise web.HTTPBadRequest(reason=f"action must be one of {', '.join(audit.ACTIONS)}")
        rows = await audit.entries(
            self._clickhouse,
            action=action,
            key_id=_text(request, "key_id", 100),
            identifier=_text(request, "identifier"),
            start=_time(request, "from"),
            end=_time(request, "to"),
            limit=limit_param(request),
        )
        return json_answer({"entries": [_jsonable(r) for r in rows]})
