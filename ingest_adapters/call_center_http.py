"""The call center's HTTP routes: Twilio status callbacks, leadflow's own call-event
JSON and Asterisk CDRs, each published as a `CallEvent` keyed by the caller."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ingest_adapters import call_center
from ingest_adapters.routes import ChannelRoutes
from leadflow.errors import BadRecordError
from leadflow.http_shared import STATUS_BY_REASON, error_body
from schemas import CallEvent


class CallRoutes(ChannelRoutes):
    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/calls/twilio", self.post_twilio)
        app.router.add_post("/v1/calls/events", self.post_call_event)
        app.router.add_post("/v1/calls/asterisk", self.post_asterisk)

    async def _post_call(
        self, request: web.Request, parse: Callable[[bytes], CallEvent]
    ) -> web.Response:
        """Parse a call-center body, publish the CallEvent keyed by the caller, or refuse it."""
        body = await request.read()
        try:
            event = parse(body)
        except BadRecordError as exc:
            detail = f"POST {request.path}"
            letter_id = await self.dead_letter(exc, body, call_center.STEP, detail, None)
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
