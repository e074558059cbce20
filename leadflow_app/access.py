"""Who may call which route: every route's access decision, in this one table.

The server refuses to start when a route has no entry here, and a test walks
every route of `/openapi.json` with no key, a wrong key and each scope, so a
route cannot be added without deciding who may call it.

Kinds of decision:
- `public`: anyone (health, the API description, CORS preflights, the
  dashboard page itself, which holds no data and asks for a key).
- `scope`: an API key (`Authorization: Bearer …` or `X-Api-Key`) with that
  scope, or `admin`.
- `form`: a public web form's token from one of its origins (checked by the
  handler against config/forms.yaml), or a key with `ingest`.
- `signed`: a provider's webhook, verified by its signature in the handler; or
  a tracking link of nurture email, whose token is its own signature
  (`leadflow.tracking`): a key stands in for neither.

The client address is never a credential. It is used only to give each
visitor of a public form a rate-limit bucket of their own, taken from
`X-Forwarded-For` only when the direct peer is a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from leadflow import steps
from leadflow.auth import KeyRing, presented_key
from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.http_shared import (
    ACCESS_KEY,
    CLIENT_KEY,
    PRINCIPAL_KEY,
    DeadLetterSink,
    RateLimiter,
    error_body,
    too_many,
)
from leadflow.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["public", "scope", "form", "signed"]


@dataclass(frozen=True)
class Rule:
    kind: Kind
    scope: str | None = None
    stage: str | None = None  # where a refused write is dead-lettered

    def describe(self) -> str:
        if self.kind == "scope":
            return f"scope {self.scope}"
        if self.kind == "form":
            return "form token + origin, or scope ingest"
        return self.kind


PUBLIC = Rule("public")

ACCESS: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/metrics"): Rule("scope", "read:analytics"),
    ("POST", "/v1/leads/web"): Rule("form", "ingest", steps.WEB_FORM),
    ("OPTIONS", "/v1/leads/web"): PUBLIC,
    ("POST", "/v1/events/crm"): Rule("scope", "crm", steps.EVENTS),
    ("POST", "/v1/events/engagement"): Rule("scope", "ingest", steps.EVENTS),
    ("POST", "/v1/calls/events"): Rule("scope", "calls", steps.CALL_CENTER),
    ("POST", "/v1/calls/asterisk"): Rule("scope", "calls", steps.CALL_CENTER),
    ("POST", "/v1/calls/twilio"): Rule("signed", stage=steps.CALL_CENTER),
    ("POST", "/v1/uploads/tradeshow"): Rule("scope", "upload", steps.TRADESHOW_UPLOAD),
    ("GET", "/v1/uploads/{upload_id}/errors.csv"): Rule("scope", "upload"),
    ("GET", "/v1/social/meta"): Rule("signed"),
    ("POST", "/v1/social/meta"): Rule("signed", stage=steps.SOCIAL_ADS),
    ("GET", "/v1/social/linkedin"): Rule("signed"),
    ("POST", "/v1/social/linkedin"): Rule("signed", stage=steps.SOCIAL_ADS),
    ("GET", "/v1/leads"): Rule("scope", "read:pii"),
    ("GET", "/v1/leads/{lead_id}/explain"): Rule("scope", "read:pii"),
    ("GET", "/v1/dead-letters"): Rule("scope", "read:pii"),
    ("GET", "/v1/duplicates"): Rule("scope", "read:pii"),
    ("POST", "/v1/leads/{lead_id}/merge"): Rule("scope", "crm", steps.LEAD),
    ("POST", "/v1/leads/{lead_id}/unmerge"): Rule("scope", "crm", steps.LEAD),
    ("GET", "/v1/audit"): Rule("scope", "admin"),
    ("GET", "/v1/funnel"): Rule("scope", "read:analytics"),
    ("GET", "/v1/pipeline"): Rule("scope", "read:analytics"),
    ("GET", "/v1/pipeline/stagnant"): Rule("scope", "read:analytics"),
    ("POST", "/v1/privacy/erase"): Rule("scope", "admin"),
    ("GET", "/v1/nurture/sequences"): Rule("scope", "read:analytics"),
    ("GET", "/v1/nurture/tasks"): Rule("scope", "read:analytics"),
    ("GET", "/v1/scoring/evaluation"): Rule("scope", "read:analytics"),
    ("GET", "/v1/nurture/o/{token}"): Rule("signed", stage=steps.TRACKING),
    ("GET", "/v1/nurture/c/{token}"): Rule("signed", stage=steps.TRACKING),
    ("GET", "/v1/nurture/u/{token}"): Rule("signed", stage=steps.TRACKING),
    ("POST", "/v1/nurture/u/{token}"): Rule("signed", stage=steps.TRACKING),
}


def rule_for(method: str, path: str) -> Rule | None:
    return ACCESS.get(("GET" if method == "HEAD" else method, path))


def check_routes(app: web.Application) -> None:
    """Refuse to start when a route has no access decision."""
    missing = sorted(
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and rule_for(route.method, route.resource.canonical) is None
    )
    if missing:
        raise ConfigurationError(
            "routes without an access decision in leadflow_app/access.py: " + ", ".join(missing)
        )


class TrustedProxies:
    """The reverse proxies whose `X-Forwarded-For` we believe, and the client it names."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        try:
            self._networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs]
        except ValueError as exc:
            raise ConfigurationError(f"HTTP_TRUSTED_PROXIES: {exc}") from exc

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer, unless a trusted proxy forwarded the request, in
        which case the right-most address in X-Forwarded-For that is not a trusted proxy."""
        address = peer or "unknown"
        if not forwarded_for or not self._trusted(address):
            return address
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            address = hop
            if not self._trusted(hop):
                break
        return address


class AccessControl:
    """The middleware's state: keys, proxies, and the write buckets."""

    def __init__(self, settings: Settings, dead_letter: DeadLetterSink | None) -> None:
        self.keys = KeyRing(settings)
        self.proxies = TrustedProxies(settings.http.trusted_proxies)
        self._writes = RateLimiter(settings.http.write_rate_per_s, settings.http.write_rate_burst)
        self.visitors = RateLimiter(settings.web.rate_per_s, settings.web.rate_burst)
        # Refusals cost a dead letter each: a client that keeps failing is slowed down.
        self._refusals = RateLimiter(
            max(5.0, settings.http.write_rate_per_s / 10),
            max(50, settings.http.write_rate_burst // 10),
        )
        self._dead_letter = dead_letter
        self._warned_at = 0.0

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 1.0:  # a flood of bad keys must not fill the log
            self._warned_at = now
            log.warning(message, *args)

    async def refuse(
        self, request: web.Request, rule: Rule, status: int, reason: str, message: str
    ) -> web.Response:
        client = request[CLIENT_KEY]
        wait = self._refusals.wait_for(f"refused:{client}", time.monotonic())
        if wait > 0:
            return too_many(wait, "too many refused requests from this client; retry later")
        self._warn("%s %s from %s refused: %s", request.method, request.path, client, reason)
        letter_id = await self.letter(
            request, BadRecordError(reason, message), await request.read()
        )
        extra = {"dead_letter_id": letter_id} if letter_id else {}
        return error_body(status, reason, message, **extra)

    async def letter(self, request: web.Request, error: BadRecordError, body: bytes) -> str | None:
        """Dead-letter a refused write on its route's stage; None for routes that take no
        input (reads) or in a server without a publisher."""
        rule = (
            rule_for(request.method, request.match_info.route.resource.canonical)
            if (request.match_info.route.resource)
            else None
        )
        if rule is None or rule.stage is None or self._dead_letter is None:
            return None
        return await self._dead_letter(
            error,
            body,
            rule.stage,
            f"{request.method} {request.path_qs}"[:500],
            request.headers.get("Idempotency-Key"),
        )

    async def refuse_too_large(
        self, request: web.Request, error: BadRecordError, body: bytes
    ) -> web.Response:
        """413 for a body Kafka could never take (kept as a truncated dead letter with its size
        and digest), or one over HTTP_MAX_BODY_BYTES (not read, so the letter keeps none)."""
        client = request.get(CLIENT_KEY, request.remote or "unknown")
        if self._refusals.wait_for(f"refused:{client}", time.monotonic()) > 0:
            return error_body(413, "body_too_large", error.message)
        letter_id = await self.letter(request, error, body)
        extra = {"dead_letter_id": letter_id} if letter_id else {}
        return error_body(413, "body_too_large", error.message, **extra)

    def write_wait(self, bucket: str) -> float:
        return self._writes.wait_for(bucket, time.monotonic())


def control_of(app: web.Application) -> AccessControl:
    """The middleware's state, as `install` put it on the application."""
    control = app[ACCESS_KEY]
    assert isinstance(control, AccessControl), control
    return control


@web.middleware
async def access_control(request: web.Request, handler: Any) -> web.StreamResponse:
    """Decide who may call this route before its handler runs."""
    control = control_of(request.app)
    request[CLIENT_KEY] = control.proxies.client(
        request.remote, request.headers.get("X-Forwarded-For")
    )
    resource = request.match_info.route.resource
    if resource is None:  # 404 / 405: the router's own answer
        response: web.StreamResponse = await handler(request)
        return response
    rule = rule_for(request.method, resource.canonical)
    if rule is None:  # check_routes makes this unreachable; refuse rather than guess
        return error_body(403, "forbidden", "this route has no access decision")
    if rule.kind == "public":
        response = await handler(request)
        return response
    key = None if rule.kind == "signed" else presented_key(request.headers)
    if rule.kind == "signed":  # a key does not stand in for a provider's signature
        bucket = f"{resource.canonical}|{request[CLIENT_KEY]}"
    elif rule.kind == "scope" or key is not None:
        required = rule.scope or "admin"
        if key is None:
            hint = (
                ""
                if len(control.keys)
                else " (this server has no keys yet: create one with "
                f"`leadflow keys create --scope {required}`)"
            )
            return await control.refuse(
                request,
                rule,
                401,
                "unauthorized",
                f"send an API key with scope {required} as Authorization: Bearer <key>{hint}",
            )
        principal = control.keys.principal(key)
        if principal is None:
            return await control.refuse(
                request, rule, 401, "unauthorized", "this API key is unknown or was revoked"
            )
        if not principal.may(required):
            return await control.refuse(
                request,
                rule,
                403,
                "forbidden",
                f"key {principal.name!r} lacks scope {required}",
            )
        request[PRINCIPAL_KEY] = principal
        bucket = f"key:{principal.key_id}"
    else:  # a public form: the handler limits each visitor
        bucket = ""
    if bucket and request.method == "POST":
        wait = control.write_wait(bucket)
        if wait > 0:
            return too_many(wait, "too many writes with this credential; retry later")
    response = await handler(request)
    return response


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, keys: KeyRing) -> None:
    """Refuse to serve beyond this machine without any API key configured."""
    if len(keys) == 0 and not is_loopback(settings.http.host):
        raise ConfigurationError(
            f"refusing to listen on {settings.http.host} with no API keys configured: anyone "
            "who reaches it could write and read leads. Create a key first, e.g.\n"
            "  leadflow keys create --name website --scope ingest\n"
            "  leadflow keys env > leadflow.env   # AUTH_KEYS=… (hashes) for an env file\n"
            "or listen on 127.0.0.1 (HTTP_HOST)."
        )


def install(app: web.Application, settings: Settings, dead_letter: DeadLetterSink | None) -> None:
    app[ACCESS_KEY] = AccessControl(settings, dead_letter)
