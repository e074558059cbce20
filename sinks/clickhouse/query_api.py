"""HTTP routes answering from ClickHouse. In embedded mode (chdb) only the process
that owns the data directory can read it, so these routes live in that process."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from sinks.clickhouse import funnel, queries
from sinks.clickhouse.client import ClickHouse


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601 in UTC with an explicit offset (the columns are all UTC)."""
    return {k: _iso_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


def _deep_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return _iso_utc(value)
    return value


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
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise web.HTTPBadRequest(reason=f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise web.HTTPBadRequest(reason="limit must be a whole number from 1 to 10000")
    return int(raw)


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

    async def get_leads(self, request: web.Request) -> web.Response:
        rows = await queries.find_leads(
            self._clickhouse,
            email=request.query.get("email"),
            phone=request.query.get("phone"),
            lead_id=request.query.get("lead_id"),
            limit=_limit(request),
        )
        total = await queries.count_leads(self._clickhouse)
        return web.json_response({"total": total, "leads": [_jsonable(r) for r in rows]})

    async def get_explain(self, request: web.Request) -> web.Response:
        explained = await queries.explain_lead(self._clickhouse, request.match_info["lead_id"])
        if explained is None:
            raise web.HTTPNotFound(reason="no lead with this id")
        return web.json_response(_deep_jsonable(explained))

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
        return web.json_response(_deep_jsonable(answer))

    async def get_pipeline(self, request: web.Request) -> web.Response:
        """[?as_of=ISO time] [&by=owner]"""
        answer = await funnel.pipeline(
            self._clickhouse, as_of=_time(request, "as_of"), by=_by(request)
        )
        return web.json_response(_deep_jsonable(answer))

    async def get_stagnant(self, request: web.Request) -> web.Response:
        """?days=N: open leads whose latest move is older than N days."""
        days = _whole(request, "days", 14, 1, 3650)
        rows = await funnel.stagnant(
            self._clickhouse, days=days, now=datetime.now(UTC), limit=_limit(request)
        )
        return web.json_response({"days": days, "leads": [_deep_jsonable(r) for r in rows]})

    async def get_dashboard(self, _: web.Request) -> web.Response:
        """The funnel and pipeline page for people; it reads the two JSON routes above."""
        page = resources.files("sinks.clickhouse").joinpath("dashboard.html").read_text("utf-8")
        return web.Response(text=page, content_type="text/html")

    async def get_dead_letters(self, request: web.Request) -> web.Response:
        rows = await queries.recent_dead_letters(
            self._clickhouse, stage=request.query.get("stage"), limit=_limit(request)
        )
        return web.json_response({"dead_letters": [_jsonable(r) for r in rows]})
