"""The routes of events about known people: a rep's CRM actions (`events.crm`) and
marketing engagement (`events.engagement`), leadflow's own JSON each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ingest_adapters.routes import ChannelRoutes
from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.http_shared import error_body
from schemas import CrmEvent, EngagementEvent


class EventRoutes(ChannelRoutes):
    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/events/crm", self.post_crm_event)
        app.router.add_post("/v1/events/engagement", self.post_engagement_event)

    async def _post_event(
        self,
        request: web.Request,
        model: type[BaseModel],
        topic: str,
        key_of: Callable[[Any], str | None],
        stage: str,
    ) -> web.Response:
        """Validate a JSON event, publish it keyed by `key_of`, answer 202 or a clear 4xx."""
        body = await request.read()
        try:
            if request.content_type != "application/json":
                raise BadRecordError("unsupported_media_type", "send application/json")
            event = model.model_validate_json(body)
        except ValidationError as exc:
            fields = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
            error = BadRecordError(
                "invalid_fields", "; ".join(f"{k}: {v}" for k, v in fields.items()), fields
            )
            letter_id = await self.dead_letter(error, body, stage, f"POST {request.path}", None)
            return error_body(
                422, error.reason, error.message, fields=fields, dead_letter_id=letter_id
            )
        except BadRecordError as exc:
            letter_id = await self.dead_letter(exc, body, stage, f"POST {request.path}", None)
            return error_body(415, exc.reason, exc.message, dead_letter_id=letter_id)
        await self._publisher.publish(topic, key_of(event), body)
        return web.json_response(
            {"status": "accepted", "event_id": getattr(event, "event_id", None)}, status=202
        )

    async def post_crm_event(self, request: web.Request) -> web.Response:
        """A rep's action (accept, convert, set_stage, won, lost, disqualify) → events.crm."""
        return await self._post_event(
            request, CrmEvent, self._topics.events_crm, lambda e: e.lead_id, steps.EVENTS
        )

    async def post_engagement_event(self, request: web.Request) -> web.Response:
        """Marketing engagement (webinar attended, pricing page …) → events.engagement."""
        return await self._post_event(
            request,
            EngagementEvent,
            self._topics.events_engagement,
            lambda e: e.lead_id or e.email or e.phone,
            steps.EVENTS,
        )
