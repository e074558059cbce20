"""What every HTTP route of leadflow shares, whichever package serves it: the one
shape of a refusal, rate limits, and the request and application keys the access
middleware (the application's) fills in for the channels' handlers.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from leadflow.auth import KeyRing, Principal
from leadflow.errors import BadRecordError

STATUS_BY_REASON = {
    "bad_signature": 403,
    "not_configured": 403,
    "unauthorized": 401,
    "unsupported_media_type": 415,
    "invalid_json": 400,
    "invalid_form": 400,
    "invalid_encoding": 400,
    "no_leads": 422,
    "forbidden_origin": 403,
    "too_large": 413,
}


def error_body(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    """`{"error": reason, "message": …}` with the status; `extra` adds fields (dead_letter_id)."""
    return web.json_response({"error": reason, "message": message, **extra}, status=status)


@dataclass
class RateLimiter:
    """Token buckets per key: `rate` posts per second sustained, `burst` at once."""

    rate: float
    burst: int
    max_keys: int = 100_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def wait_for(self, key: str, now: float) -> float:
        """0 when a post under `key` may go now (and counts it), else seconds to wait."""
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            # Forget full buckets first: they hold no information.
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        self._buckets[key] = (tokens - 1, now)
        return 0.0


PRINCIPAL_KEY = web.RequestKey("principal", Principal)
CLIENT_KEY = web.RequestKey("client", str)

# (error, body, stage, detail, key) -> dead letter id; what the ingest routes use.
DeadLetterSink = Callable[[BadRecordError, bytes, str, str, str | None], Awaitable[str]]


class RouteAccess(Protocol):
    """What a channel's handler may ask of the access middleware's state."""

    keys: KeyRing
    visitors: RateLimiter

    async def refuse_too_large(
        self, request: web.Request, error: BadRecordError, body: bytes
    ) -> web.Response: ...


ACCESS_KEY = web.AppKey("access", RouteAccess)


def too_many(wait: float, message: str) -> web.Response:
    response = error_body(429, "rate_limited", message)
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL_KEY)
