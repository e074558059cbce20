"""The HTTP routes of the adapters. Every answer is JSON; every refusal names its reason.

- 202: Kafka acknowledged the envelope (`event_id` in the body).
- 400/415/422: the body was refused; the same reason went to `dlq.<stage>`
  with the original bytes (`dead_letter_id` in the body).
- 413: the body was larger than HTTP_MAX_BODY_BYTES (not read, so not kept).
- 503 with Retry-After: Kafka did not acknowledge; retry with the same Idempotency-Key.

The tracking links of nurture email (`nurture_tracking`) are the exception: a
person's mail client or browser follows them, so they answer a GIF, a redirect
or a page; their refusals are JSON like these.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ingest_adapters import call_center, form_guard, web_form
from ingest_adapters.nurture_tracking import NurtureTrackingRoutes
from ingest_adapters.publisher import Publisher
from ingest_adapters.social import common, linkedin, meta
from ingest_adapters.upload_http import UploadRoutes
from leadflow import stages
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError, RetriableError, TooLargeError
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
from leadflow.rules import Rules
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import CallEvent, CrmEvent, EngagementEvent

log = logging.getLogger(__name__)

METRICS_KEY = web.AppKey("metrics", Metrics)
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
TIMEOUT_KEY = web.AppKey("request_timeout_s", float)
# Long by nature: a whole file's upload, an erasure that waits for its mutations.
UNTIMED_ROUTES = frozenset({"/v1/uploads/tradeshow", "/v1/privacy/erase"})

# Refusals a webhook provider must not retry: answered 200 with the dead letter's id.
_ACKNOWLEDGED_REFUSALS = {"lead_deleted", "unsupported_event"}


class IngestRoutes:
    """Handlers of the ingest endpoints, sharing one publisher."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        publisher: Publisher,
        metrics: Metrics,
        bootstrap: str | None = None,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._publisher = publisher
        self._metrics = metrics
        self._topics = Topics(settings.kafka.topic_prefix)
        self._rules = rules
        self._forms = rules.forms

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/leads/web", self.post_web_form)
        app.router.add_route("OPTIONS", "/v1/leads/web", self.preflight_web_form)
        app.router.add_post("/v1/events/crm", self.post_crm_event)
        app.router.add_post("/v1/calls/twilio", self.post_twilio)
        app.router.add_post("/v1/calls/events", self.post_call_event)
        app.router.add_post("/v1/calls/asterisk", self.post_asterisk)
        app.router.add_post("/v1/events/engagement", self.post_engagement_event)
        app.router.add_get("/v1/social/meta", self.get_meta_verification)
        app.router.add_post("/v1/social/meta", self.post_meta)
        app.router.add_get("/v1/social/linkedin", self.get_linkedin_challenge)
        app.router.add_post("/v1/social/linkedin", self.post_linkedin)
        UploadRoutes(self._settings, self._bootstrap, self.dead_letter).add_to(app)
        NurtureTrackingRoutes(
            self._settings,
            self._rules.nurture.templates,
            self._publisher,
            self._metrics,
            self.dead_letter,
        ).add_to(app)

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

    async def _post_call(
        self, request: web.Request, parse: Callable[[bytes], CallEvent]
    ) -> web.Response:
        """Parse a call-center body, publish the CallEvent keyed by the caller, or refuse it."""
        body = await request.read()
        try:
            event = parse(body)
        except BadRecordError as exc:
            detail = f"POST {request.path}"
            letter_id = await self.dead_letter(exc, body, call_center.STAGE, detail, None)
            status = STATUS_BY_REASON.get(exc.reason, 422)
            return error_body(
                status, exc.reason, exc.message, fields=exc.fields, dead_letter_id=letter_id
            )
        await self._publisher.publish(
            self._topics.events_calls, event.caller, event.model_dump_json().encode()
        )
        return web.json_response({"status": "accepted", "event_id": event.event_id}, status=202)

    async def post_twilio(self, request: web.Request) -> web.Response:
        """Twilio Voice status callbacks, verified by X-Twilio-Signature."""
        calls = self._settings.calls
        region = self._settings.normalize.default_phone_region

        def parse(body: bytes) -> CallEvent:
            if calls.twilio_auth_token is None or not calls.twilio_public_url:
                raise BadRecordError(
                    "not_configured",
                    "Twilio callbacks are not configured "
                    "(CALLS_TWILIO_AUTH_TOKEN, CALLS_TWILIO_PUBLIC_URL)",
                )
            return call_center.parse_twilio(
                body,
                request.headers.get("X-Twilio-Signature"),
                calls.twilio_public_url,
                calls.twilio_auth_token.get_secret_value(),
                region,
            )

        return await self._post_call(request, parse)

    async def post_call_event(self, request: web.Request) -> web.Response:
        """A call event in leadflow's own JSON, from any telephony system."""
        region = self._settings.normalize.default_phone_region

        def parse(body: bytes) -> CallEvent:
            return call_center.parse_generic(body, region)

        return await self._post_call(request, parse)

    async def post_asterisk(self, request: web.Request) -> web.Response:
        """An Asterisk AMI Cdr event, relayed as its text."""
        region = self._settings.normalize.default_phone_region
        zone = self._settings.calls.asterisk_timezone

        def parse(body: bytes) -> CallEvent:
            return call_center.parse_ami_cdr(body, region, zone)

        return await self._post_call(request, parse)

    async def post_crm_event(self, request: web.Request) -> web.Response:
        """A rep's action (accept, convert, set_stage, won, lost, disqualify) → events.crm."""
        return await self._post_event(
            request, CrmEvent, self._topics.events_crm, lambda e: e.lead_id, stages.EVENTS
        )

    async def post_engagement_event(self, request: web.Request) -> web.Response:
        """Marketing engagement (webinar attended, pricing page …) → events.engagement."""
        return await self._post_event(
            request,
            EngagementEvent,
            self._topics.events_engagement,
            lambda e: e.lead_id or e.email or e.phone,
            stages.EVENTS,
        )

    async def get_meta_verification(self, request: web.Request) -> web.Response:
        """Meta's webhook setup: echo hub.challenge when hub.verify_token matches."""
        token = self._settings.social.meta_verify_token
        try:
            challenge = meta.verify_meta_subscription(
                request.query, token.get_secret_value() if token else None
            )
        except BadRecordError as exc:
            log.warning("Meta webhook verification refused: %s", exc.message)
            return error_body(403, exc.reason, exc.message)
        return web.Response(text=challenge, content_type="text/plain")

    async def get_linkedin_challenge(self, request: web.Request) -> web.Response:
        """LinkedIn's webhook validation: answer challengeCode with its HMAC."""
        secret = self._settings.social.linkedin_client_secret
        code = request.query.get("challengeCode", "")
        if secret is None:
            return error_body(
                403, "not_configured", "set SOCIAL_LINKEDIN_CLIENT_SECRET to answer LinkedIn"
            )
        try:
            answer = linkedin.linkedin_challenge(code, secret.get_secret_value())
        except BadRecordError as exc:
            return error_body(STATUS_BY_REASON.get(exc.reason, 422), exc.reason, exc.message)
        return web.json_response(answer)

    async def post_meta(self, request: web.Request) -> web.Response:
        """A Meta leadgen notification, verified by X-Hub-Signature-256."""
        secret = self._settings.social.meta_app_secret

        def parse(body: bytes) -> list[common.LeadgenRef]:
            meta.verify_meta_signature(
                body,
                request.headers.get("X-Hub-Signature-256"),
                secret.get_secret_value() if secret else None,
            )
            return meta.parse_meta_notification(body, received_at=datetime.now(UTC))

        return await self._post_social(request, parse)

    async def post_linkedin(self, request: web.Request) -> web.Response:
        """A LinkedIn lead notification, verified by X-LI-Signature."""
        secret = self._settings.social.linkedin_client_secret

        def parse(body: bytes) -> list[common.LeadgenRef]:
            linkedin.verify_linkedin_signature(
                body,
                request.headers.get("X-LI-Signature"),
                secret.get_secret_value() if secret else None,
            )
            return linkedin.parse_linkedin_notification(body, received_at=datetime.now(UTC))

        return await self._post_social(request, parse)

    async def _post_social(
        self, request: web.Request, parse: Callable[[bytes], list[common.LeadgenRef]]
    ) -> web.Response:
        """Record each announced lead on social.notifications, then answer; the fetcher goes on."""
        body = await request.read()
        try:
            refs = parse(body)
        except BadRecordError as exc:
            letter_id = await self.dead_letter(
                exc, body, common.STAGE, f"POST {request.path}", None
            )
            if exc.reason in _ACKNOWLEDGED_REFUSALS:
                return web.json_response(
                    {"status": "ignored", "reason": exc.reason, "dead_letter_id": letter_id}
                )
            status = STATUS_BY_REASON.get(exc.reason, 422)
            return error_body(
                status, exc.reason, exc.message, fields=exc.fields, dead_letter_id=letter_id
            )
        for ref in refs:
            await self._publisher.publish(
                self._topics.social_notifications, ref.lead_ref, ref.model_dump_json().encode()
            )
        return web.json_response(
            {"status": "accepted", "event_ids": [ref.event_id for ref in refs]}, status=200
        )

    async def dead_letter(
        self, error: BadRecordError, body: bytes, stage: str, detail: str, key: str | None
    ) -> str:
        letter = dead_letter_for(
            error, body, stage=stage, detail=detail, key=key.encode() if key else None
        )
        key_bytes, value = letter.record()
        await self._publisher.publish(self._topics.dlq(stage), key_bytes.decode(), value)
        self._metrics.dead_letters.labels(stage=stage).inc()
        return letter.dead_letter_id

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
            exc, body, web_form.STAGE, detail, request.headers.get("Idempotency-Key")
        )
        status = STATUS_BY_REASON.get(exc.reason, 422)
        return error_body(
            status, exc.reason, exc.message, fields=exc.fields, dead_letter_id=dead_letter_id
        )


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn framework and dependency failures into JSON answers with a clear reason."""
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    metrics = request.app[METRICS_KEY]
    timeout = None if route in UNTIMED_ROUTES else request.app.get(TIMEOUT_KEY)
    response: web.StreamResponse
    try:
        try:
            async with asyncio.timeout(timeout):
                response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = request.app[MAX_BODY_KEY]
            error = BadRecordError(
                "body_too_large",
                f"bodies larger than {limit} bytes are not accepted "
                f"(Content-Length {request.content_length})",
            )
            response = await request.app[ACCESS_KEY].refuse_too_large(request, error, b"")
        except TooLargeError as exc:
            # Fine for HTTP, but its envelope can never fit in Kafka: no retry would help.
            body = await request.read()  # read whole before the publish that refused it
            response = await request.app[ACCESS_KEY].refuse_too_large(request, exc, body)
    except TimeoutError:
        log.warning("504 on %s after %.1fs", request.path, timeout or 0)
        response = error_body(
            504,
            "timeout",
            f"not answered within {timeout:g}s; retry with the same Idempotency-Key",
        )
        response.headers["Retry-After"] = "5"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # The code is the status's own phrase (bad_request, not_found); the reason, when a
        # handler gave its own ("limit must be a whole number …"), is the message.
        code = HTTPStatus(exc.status).phrase.lower().replace(" ", "_").replace("-", "_")
        response = error_body(exc.status, code, exc.reason)
    except RetriableError as exc:  # also a refusal whose dead letter Kafka did not take
        log.warning("503 on %s: %s", request.path, exc)
        response = error_body(
            503,
            "unavailable",
            "the event bus is not accepting writes; retry with the same Idempotency-Key",
        )
        response.headers["Retry-After"] = "5"
    metrics.requests.labels(route=route, status=str(response.status)).inc()
    return response
