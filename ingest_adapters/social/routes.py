"""The lead-ads webhooks: Meta's and LinkedIn's verification and notifications. Each
announced lead is recorded on `social.notifications` before the answer; the fetcher
(`service`) reads it from the provider afterwards."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from ingest_adapters.routes import ChannelRoutes
from ingest_adapters.social import common, linkedin, meta
from leadflow.errors import BadRecordError
from leadflow.http_shared import STATUS_BY_REASON, error_body

log = logging.getLogger(__name__)

# Refusals a webhook provider must not retry: answered 200 with the dead letter's id.
_ACKNOWLEDGED_REFUSALS = {"lead_deleted", "unsupported_event"}


class SocialRoutes(ChannelRoutes):
    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/social/meta", self.get_meta_verification)
        app.router.add_post("/v1/social/meta", self.post_meta)
        app.router.add_get("/v1/social/linkedin", self.get_linkedin_challenge)
        app.router.add_post("/v1/social/linkedin", self.post_linkedin)

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
            letter_id = await self.dead_letter(exc, body, common.STEP, f"POST {request.path}", None)
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
