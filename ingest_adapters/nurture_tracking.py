"""The signed links of nurture email: open pixel, click redirect, unsubscribe.

The token in the path is the credential (`leadflow.tracking`): its claims say
which send, lead, template and link it stands for, and its MAC that leadflow
made it. Nothing else of the request is trusted; nothing of it is echoed into
a page.

- `GET /v1/nurture/o/{token}`: always a 1x1 transparent GIF (`no-store`), so a
  mail client never shows a broken image; a valid open link publishes
  `email_open`.
- `GET /v1/nurture/c/{token}`: 302 to the URL the template of the claims lists
  at the claimed index, and `email_click`. Never a redirect anywhere else: a
  bad token, an unknown template or link index is a 400.
- `GET /v1/nurture/u/{token}`: a page with one button that POSTs back. A GET
  records nothing, since link scanners and previews fetch every link of a mail.
- `POST /v1/nurture/u/{token}`: the unsubscribe, from that button or as
  RFC 8058 one-click (`List-Unsubscribe=One-Click`, urlencoded or multipart):
  the lead's hash goes on the compacted `nurture.suppressions` (the mailer's
  and the nurture agent's "never mail again" list), then `email_unsubscribe`.

Output: `EngagementEvent`s on `events.engagement`, keyed by lead id like
`POST /v1/events/engagement`, through the shared publisher (acks=all,
idempotent). Idempotency: event ids are stable per send (`nurture:<send_id>:
open`, `…:click:<link>`, `…:unsubscribe`), and the suppression is one key on a
compacted topic, so a reopened mail, a double click or a second unsubscribe
changes nothing downstream.

Dead letters: every refused link goes to `dlq.tracking` (reason `bad_token`,
`unknown_template`, `unknown_link` or `invalid_claims`) with the token as the
original bytes, at most `LETTERS_PER_S` (burst `LETTERS_BURST`) per client;
past that a client gets 429 (the pixel still its GIF) and nothing is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import orjson
from aiohttp import web
from prometheus_client import Counter
from pydantic import ValidationError

from ingest_adapters.publisher import Publisher
from leadflow import steps
from leadflow.errors import BadRecordError, RetriableError
from leadflow.http_shared import CLIENT_KEY, DeadLetterSink, RateLimiter, error_body, too_many
from leadflow.metrics import Metrics
from leadflow.nurture_rules import Template
from leadflow.settings import Settings
from leadflow.suppression import identifier_hash
from leadflow.topics import Topics
from leadflow.tracking import LinkKind, TrackingClaims, tracking_secret, verify
from schemas import EngagementEvent

log = logging.getLogger(__name__)

OPEN_ROUTE: Final = "/v1/nurture/o/{token}"
CLICK_ROUTE: Final = "/v1/nurture/c/{token}"
UNSUBSCRIBE_ROUTE: Final = "/v1/nurture/u/{token}"
TOKEN_MAX_CHARS: Final = 2048  # what leadflow.tracking.verify reads at most
LETTERS_PER_S: Final = 5.0  # dead letters of refused links per client, as for refused keys
LETTERS_BURST: Final = 50
RETRY_AFTER_S: Final = 5

# The smallest transparent GIF: 1x1, one palette entry, fully transparent.
PIXEL: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# Pages hold no value of the request: nothing to escape, nothing personal shown. The form
# has no action, so it posts back to the URL it was served from.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body><main>{body}</main></body></html>
"""
_CONFIRM = (
    "<h1>Unsubscribe from these emails</h1>"
    '<p lang="zh">退订这些邮件</p>'
    '<form method="post"><button type="submit">Unsubscribe / 退订</button></form>'
)
_DONE = '<h1>You are unsubscribed</h1><p lang="zh">您已退订，不会再收到这些邮件。</p>'
_NOT_NOW = (
    "<h1>Not recorded yet</h1>"
    "<p>We could not record your unsubscribe just now. Please try again in a minute.</p>"
)
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
}


class NurtureTrackingRoutes:
    """Handlers of the tracking links, sharing the ingest routes' publisher and dead letters."""

    def __init__(
        self,
        settings: Settings,
        templates: Mapping[str, Template],
        publisher: Publisher,
        metrics: Metrics,
        dead_letter: DeadLetterSink,
    ) -> None:
        self._publisher = publisher
        self._dead_letter = dead_letter
        self._topics = Topics(settings.kafka.topic_prefix)
        # Once at start: a missing or unreadable secret (or, where the rules were loaded,
        # a bad nurture.yaml) stops the server before it answers a link it could not check.
        self._secret = tracking_secret(settings)
        self._templates = templates
        self._letters = RateLimiter(LETTERS_PER_S, LETTERS_BURST)
        self._links = Counter(
            "leadflow_tracking_links",
            "Tracking links answered, by kind and outcome (recorded, refused, unrecorded: "
            "valid but Kafka did not take the event).",
            ["kind", "outcome"],
            registry=metrics.registry,
        )

    def add_to(self, app: web.Application) -> None:
        app.router.add_get(OPEN_ROUTE, self.get_open)
        app.router.add_get(CLICK_ROUTE, self.get_click)
        app.router.add_get(UNSUBSCRIBE_ROUTE, self.get_unsubscribe)
        app.router.add_post(UNSUBSCRIBE_ROUTE, self.post_unsubscribe)

    async def get_open(self, request: web.Request) -> web.Response:
        """The open pixel: the GIF whatever happens, an `email_open` when the link is ours."""
        try:
            claims = self._verified(request, "open")
            event = _engagement(claims, "email_open", f"nurture:{claims.send_id}:open")
        except BadRecordError as exc:
            try:
                await self._refuse(request, "open", exc)
            except RetriableError as failed:  # the letter was not taken; the image still shows
                log.warning("dead letter of a refused open link not written: %s", failed)
            return _pixel()
        if _seen_by_person(request):
            await self._record(event, "open")
        return _pixel()

    async def get_click(self, request: web.Request) -> web.Response:
        """302 to the template's own URL the claims name, and an `email_click`; else a 400."""
        try:
            claims = self._verified(request, "click")
            url = self._destination(claims)
            event_id = f"nurture:{claims.send_id}:click:{claims.link}"
            event = _engagement(claims, "email_click", event_id, url=url)
        except BadRecordError as exc:
            return await self._refused(request, "click", exc)
        if _seen_by_person(request):
            # Sent on even when Kafka did not take the click (logged, counted as unrecorded):
            # a lost click costs one figure, a person stuck on an error page costs the
            # customer's reader, and a retry would need them to click again anyway.
            await self._record(event, "click")
        return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})

    async def get_unsubscribe(self, request: web.Request) -> web.Response:
        """The confirmation page; records nothing (scanners fetch every link of a mail)."""
        try:
            self._verified(request, "unsubscribe")
        except BadRecordError as exc:
            return await self._refused(request, "unsubscribe", exc)
        return _page(200, "Unsubscribe", _CONFIRM)

    async def post_unsubscribe(self, request: web.Request) -> web.Response:
        """Suppress the lead for nurture email and publish `email_unsubscribe`.

        One-click (RFC 8058) gets plain text, the page's button a page. Kafka not taking
        either write is a 503: telling someone they are unsubscribed when they are not
        would be worse than asking them to try again.
        """
        try:
            claims = self._verified(request, "unsubscribe")
            event_id = f"nurture:{claims.send_id}:unsubscribe"
            event = _engagement(claims, "email_unsubscribe", event_id)
        except BadRecordError as exc:
            return await self._refused(request, "unsubscribe", exc)
        one_click = _is_one_click(await request.read())
        try:
            # The suppression first: it is what keeps the next email from going out.
            await self._publisher.publish(
                self._topics.nurture_suppressions, *_suppression(claims.lead_id)
            )
            await self._publish(event)
        except RetriableError as exc:
            log.warning("unsubscribe of send %s not recorded: %s", claims.send_id, exc)
            self._links.labels(kind="unsubscribe", outcome="unrecorded").inc()
            answer = (
                web.Response(status=503, text="not recorded; retry")
                if one_click
                else _page(503, "Not recorded yet", _NOT_NOW)
            )
            answer.headers["Retry-After"] = str(RETRY_AFTER_S)
            return answer
        self._links.labels(kind="unsubscribe", outcome="recorded").inc()
        if one_click:
            return web.Response(text="unsubscribed", headers={"Cache-Control": "no-store"})
        return _page(200, "Unsubscribed", _DONE)

    def _verified(self, request: web.Request, kind: LinkKind) -> TrackingClaims:
        token = request.match_info["token"]
        if len(token) > TOKEN_MAX_CHARS:
            raise BadRecordError(
                "bad_token", f"the tracking link is longer than {TOKEN_MAX_CHARS} characters"
            )
        return verify(self._secret, token, kind)

    def _destination(self, claims: TrackingClaims) -> str:
        """The URL a click goes to: only ever one the template itself lists."""
        template = self._templates.get(claims.template)
        if template is None:
            raise BadRecordError(
                "unknown_template", f"nurture.yaml has no template {claims.template[:100]!r}"
            )
        if claims.link is None or not 0 <= claims.link < len(template.links):
            raise BadRecordError(
                "unknown_link",
                f"template {claims.template!r} has no link {claims.link} "
                f"({len(template.links)} links)",
            )
        return template.links[claims.link]

    async def _record(self, event: EngagementEvent, kind: LinkKind) -> None:
        """Publish a valid link's event; Kafka not taking it is logged and counted, not raised."""
        try:
            await self._publish(event)
        except RetriableError as exc:
            log.warning("%s not recorded: %s", event.event_id, exc)
            self._links.labels(kind=kind, outcome="unrecorded").inc()
            return
        self._links.labels(kind=kind, outcome="recorded").inc()

    async def _publish(self, event: EngagementEvent) -> None:
        await self._publisher.publish(
            self._topics.events_engagement, event.lead_id, event.model_dump_json().encode()
        )

    async def _refused(
        self, request: web.Request, kind: LinkKind, error: BadRecordError
    ) -> web.Response:
        """400 naming the reason with its dead letter's id; 429 past the letters' limit."""
        letter_id = await self._refuse(request, kind, error)
        if letter_id is None:
            return too_many(RETRY_AFTER_S, "too many refused tracking links from this client")
        return error_body(400, error.reason, error.message, dead_letter_id=letter_id)

    async def _refuse(
        self, request: web.Request, kind: LinkKind, error: BadRecordError
    ) -> str | None:
        """Dead-letter a refused link with its token as the original; None past the limit."""
        self._links.labels(kind=kind, outcome="refused").inc()
        if self._letters.wait_for(request[CLIENT_KEY], time.monotonic()) > 0:
            return None
        token = request.match_info.get("token", "")[:TOKEN_MAX_CHARS]
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path[:100]
        return await self._dead_letter(
            error,
            token.encode("utf-8", "replace"),
            steps.TRACKING,
            f"{request.method} {route}",
            None,
        )


def _engagement(claims: TrackingClaims, kind: str, event_id: str, **extra: str) -> EngagementEvent:
    """The engagement a link stands for; BadRecordError when its claims do not fit one."""
    properties = {"sequence": claims.sequence, "step": claims.step, "send_id": claims.send_id}
    try:
        return EngagementEvent(
            event_id=event_id,
            kind=kind,
            occurred_at=datetime.now(UTC),
            lead_id=claims.lead_id,
            properties={**properties, **extra},
        )
    except ValidationError as exc:  # only a signer with other bounds than ours gets here
        fields = {".".join(str(p) for p in e["loc"]) or "claims": e["msg"] for e in exc.errors()}
        raise BadRecordError(
            "invalid_claims", "the link's claims do not fit an engagement event", fields
        ) from exc


def _suppression(lead_id: str) -> tuple[str, bytes]:
    """Key and value of a lead on `nurture.suppressions` (no personal data, only its hash)."""
    digest = identifier_hash(lead_id)
    value = {"reason": "unsubscribed", "lead_id_hash": digest, "at": datetime.now(UTC)}
    return digest, orjson.dumps(value)


def _is_one_click(body: bytes) -> bool:
    """RFC 8058's `List-Unsubscribe=One-Click`, urlencoded or as a multipart field."""
    folded = body[:4096].lower()
    return b"list-unsubscribe" in folded and b"one-click" in folded


def _seen_by_person(request: web.Request) -> bool:
    # HEAD is a link checker asking whether the link works: nobody opened or clicked.
    return request.method != "HEAD"


def _pixel() -> web.Response:
    return web.Response(body=PIXEL, content_type="image/gif", headers={"Cache-Control": "no-store"})


def _page(status: int, title: str, body: str) -> web.Response:
    return web.Response(
        status=status,
        text=_PAGE.format(title=title, body=body),
        content_type="text/html",
        headers=_PAGE_HEADERS,
    )
