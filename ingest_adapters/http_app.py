"""The HTTP routes of the adapters, each channel's with its adapter (`web_form_http`,
`events_http`, `call_center_http`, `social/routes`, `upload_http`, `nurture_tracking`),
composed here. Every answer is JSON; every refusal names its reason.

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
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ingest_adapters.call_center_http import CallRoutes
from ingest_adapters.events_http import EventRoutes
from ingest_adapters.nurture_tracking import NurtureTrackingRoutes
from ingest_adapters.publisher import Publisher
from ingest_adapters.routes import ChannelRoutes
from ingest_adapters.social.routes import SocialRoutes
from ingest_adapters.upload_http import UploadRoutes
from ingest_adapters.web_form_http import WebFormRoutes
from leadflow.errors import BadRecordError, RetriableError, TooLargeError
from leadflow.http_shared import (
    ACCESS_KEY,
    error_body,
)
from leadflow.metrics import Metrics
from leadflow.rules import Rules
from leadflow.settings import Settings

log = logging.getLogger(__name__)

METRICS_KEY = web.AppKey("metrics", Metrics)
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
TIMEOUT_KEY = web.AppKey("request_timeout_s", float)
# Long by nature: a whole file's upload, an erasure that waits for its mutations.
UNTIMED_ROUTES = frozenset({"/v1/uploads/tradeshow", "/v1/privacy/erase"})


class IngestRoutes:
    """Every channel's routes in one application, sharing one publisher."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        publisher: Publisher,
        metrics: Metrics,
        bootstrap: str | None = None,
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._bootstrap = bootstrap
        self._publisher = publisher
        self._metrics = metrics
        self._letters = ChannelRoutes(settings, publisher, metrics)
        self.dead_letter = self._letters.dead_letter

    def add_to(self, app: web.Application) -> None:
        settings, publisher, metrics = self._settings, self._publisher, self._metrics
        WebFormRoutes(settings, self._rules.forms, publisher, metrics).add_to(app)
        EventRoutes(settings, publisher, metrics).add_to(app)
        CallRoutes(settings, publisher, metrics).add_to(app)
        SocialRoutes(settings, publisher, metrics).add_to(app)
        UploadRoutes(settings, self._bootstrap, self.dead_letter).add_to(app)
        NurtureTrackingRoutes(
            settings, self._rules.nurture.templates, publisher, metrics, self.dead_letter
        ).add_to(app)


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
