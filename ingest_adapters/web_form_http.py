"""The web form's routes: the CORS preflight and the post, with the form's token,
origin, spam checks and per-visitor rate; a form is normalized before the answer, so
its sender hears at once what to fix."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from ingest_adapters import form_guard, web_form
from ingest_adapters.publisher import Publisher
from ingest_adapters.routes import ChannelRoutes
from leadflow.errors import BadRecordError
from leadflow.http_shared import (
    ACCESS_KEY,
    CLIENT_KEY,
    STATUS_BY_REASON,
    error_body,
    principal_of,
    too_many,
)
from leadflow.metrics import Metrics
from leadflow.normalize import envelope_bytes, normalize_lead
from leadflow.rules import FormRules
from leadflow.settings import Settings


class WebFormRoutes(ChannelRoutes):
    def __init__(
        self, settings: Settings, forms: FormRules, publisher: Publisher, metrics: Metrics
    ) -> None:
        super().__init__(settings, publisher, metrics)
        self._forms = forms

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/leads/web", self.post_web_form)
        app.router.add_route("OPTIONS", "/v1/leads/web", self.preflight_web_form)

    async def preflight_web_form(self, request: web.Request) -> web.Response:
        """CORS preflight: allowed only for an Origin the form lists in forms.yaml."""
        origin = form_guard.allowed_origin(
            self._forms, request.query.get("form_id"), request.headers.get("Origin")
        )
        if origin is None:
            return error_body(403, "forbidden_origin", "this origin may not post this form")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type, Idempotency-Key, X-Form-Token",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    async def post_web_form(self, request: web.Request) -> web.Response:
        response = await self._web_form(request)
        origin = form_guard.allowed_origin(
            self._forms, request.query.get("form_id"), request.headers.get("Origin")
        )
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _web_form(self, request: web.Request) -> web.Response:
        body = await request.read()
        form_id = request.query.get("form_id")
        received_at = datetime.now(UTC)
        parsed = web_form.WebFormRequest(
            body=body,
            content_type=request.headers.get("Content-Type", ""),
            headers=request.headers,
            form_id=form_id,
            received_at=received_at,
            remote=request[CLIENT_KEY],
        )
        try:
            raw = web_form.parse_web_form(parsed)
            credential = form_guard.check_credentials(
                form_id,
                request.headers,
                raw.fields,
                self._forms,
                keyed=principal_of(request) is not None,
            )
        except BadRecordError as exc:
            return await self._refuse_web_form(request, exc, body, form_id)
        if credential:  # each visitor of a public form has a bucket of their own
            visitor = f"{credential}|{request[CLIENT_KEY]}"
            wait = request.app[ACCESS_KEY].visitors.wait_for(visitor, time.monotonic())
            if wait > 0:
                return too_many(wait, "too many posts from this visitor; retry later")
        spam = form_guard.spam_reason(raw.fields, form_id, self._forms, received_at)
        raw = raw.model_copy(
            update={"fields": form_guard.without_control_fields(raw.fields, self._forms)}
        )
        if spam is not None:
            # Answered like a lead, so the bot learns nothing; kept for review, never a lead.
            quarantined = raw.model_copy(update={"context": {**raw.context, "spam": spam}})
            await self._publisher.publish(
                self._topics.leads_quarantine, raw.event_id, quarantined.model_dump_json().encode()
            )
            self._metrics.quarantined.labels(reason=spam).inc()
            return web.json_response({"status": "accepted", "event_id": raw.event_id}, status=202)
        region = self._settings.normalize.default_phone_region
        try:
            # Checked here so the sender can fix the form at once; the envelope carries the
            # result, so the stream does not normalize it again.
            lead = normalize_lead(raw, default_region=region)
        except BadRecordError as exc:
            return await self._refuse_web_form(request, exc, body, form_id)
        await self._publisher.publish(
            self._topics.leads_raw,
            raw.event_id,
            envelope_bytes(raw, lead, default_region=region),
        )
        return web.json_response({"status": "accepted", "event_id": raw.event_id}, status=202)

    async def _refuse_web_form(
        self, request: web.Request, exc: BadRecordError, body: bytes, form_id: str | None
    ) -> web.Response:
        detail = f"POST {request.path}" + (f"?form_id={form_id}" if form_id else "")
        dead_letter_id = await self.dead_letter(
            exc, body, web_form.STEP, detail, request.headers.get("Idempotency-Key")
        )
        status = STATUS_BY_REASON.get(exc.reason, 422)
        return error_body(
            status, exc.reason, exc.message, fields=exc.fields, dead_letter_id=dead_letter_id
        )
