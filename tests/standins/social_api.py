"""A local stand-in for the lead-ads APIs: Meta's Graph API and LinkedIn's REST API.

Neither service is reachable from tests, so this small aiohttp app answers
the calls leadflow makes, from in-memory dicts:

- `GET {meta_graph_url}/{lead_id}?fields=...` as the Graph API does: the lead
  object (only the asked-for fields), `400` with Graph error 100/33 for an
  unknown id, `400` with error 190 for a wrong token.
- `GET {linkedin_api_url}/leadFormResponses/{id}` and `.../leadForms/{id}`:
  the stored objects, `404` for unknown ids, `401` for a wrong token, `426`
  without `LinkedIn-Version`, `400` without `X-Restli-Protocol-Version: 2.0.0`.

Failures can be scripted ahead of any route (`fail_next`, `throttle_next`,
`stall_next`); each scripted answer is used once, in order. Every request is
recorded in `received` (method, path, query, headers) so tests can check what
was sent. `running(stand_in)` serves it on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

GRAPH_PREFIX = "/graph/v21.0"
LINKEDIN_PREFIX = "/linkedin/rest"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class ScriptedAnswer:
    """An answer given instead of the real one (status 0: no answer of its own, only a delay)."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def _graph_error(status: int, code: int, message: str, subcode: int | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    return web.json_response({"error": error}, status=status)


def _linkedin_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"status": status, "code": code, "message": message}, status=status)


class SocialApiStandIn:
    """In-memory leads, forms, a script of failures and a log of requests."""

    def __init__(self, *, meta_token: str | None = None, linkedin_token: str | None = None) -> None:
        self.meta_token = meta_token
        self.linkedin_token = linkedin_token
        self.meta_leads: dict[str, dict[str, Any]] = {}
        self.linkedin_responses: dict[str, dict[str, Any]] = {}
        self.linkedin_forms: dict[str, dict[str, Any]] = {}
        self.received: list[ReceivedRequest] = []
        self.base_url = ""
        self._script: deque[ScriptedAnswer] = deque()

    @property
    def meta_graph_url(self) -> str:
        return self.base_url + GRAPH_PREFIX

    @property
    def linkedin_api_url(self) -> str:
        return self.base_url + LINKEDIN_PREFIX

    @property
    def paths(self) -> list[str]:
        return [request.path for request in self.received]

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        body: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `count` requests with `status` (any route)."""
        for _ in range(count):
            self._script.append(ScriptedAnswer(status, body, dict(headers or {})))

    def throttle_next(self, retry_after: str, *, count: int = 1, status: int = 429) -> None:
        """Answer the next `count` requests with 429 and `Retry-After: retry_after`."""
        body = json.dumps({"status": status, "code": "TOO_MANY_REQUESTS", "message": "slow down"})
        self.fail_next(count, status=status, body=body, headers={"Retry-After": retry_after})

    def stall_next(self, seconds: float, *, count: int = 1) -> None:
        """Hold the next `count` requests for `seconds`, then answer them normally."""
        for _ in range(count):
            self._script.append(ScriptedAnswer(0, delay_s=seconds))

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_script])
        app.router.add_get(GRAPH_PREFIX + "/{object_id}", self._graph_object)
        app.router.add_get(LINKEDIN_PREFIX + "/leadFormResponses/{response_id}", self._li_response)
        app.router.add_get(LINKEDIN_PREFIX + "/leadForms/{form_id}", self._li_form)
        return app

    @web.middleware
    async def _record_and_script(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        self.received.append(
            ReceivedRequest(
                request.method, request.path, dict(request.query), dict(request.headers)
            )
        )
        if self._script:
            scripted = self._script.popleft()
            if scripted.delay_s:
                await asyncio.sleep(scripted.delay_s)
            if scripted.status:
                return web.Response(
                    status=scripted.status,
                    text=scripted.body,
                    headers=scripted.headers,
                    content_type="application/json",
                )
        return await handler(request)

    async def _graph_object(self, request: web.Request) -> web.Response:
        if self.meta_token and request.headers.get("Authorization") != f"Bearer {self.meta_token}":
            return _graph_error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        object_id = request.match_info["object_id"]
        lead = self.meta_leads.get(object_id)
        if lead is None:
            return _graph_error(
                400,
                100,
                f"Unsupported get request. Object with ID '{object_id}' does not exist",
                subcode=33,
            )
        wanted = request.query.get("fields")
        if wanted:
            names = {"id", *wanted.split(",")}
            lead = {key: value for key, value in lead.items() if key in names}
        return web.json_response(lead)

    def _linkedin_refusal(self, request: web.Request) -> web.Response | None:
        if (
            self.linkedin_token
            and request.headers.get("Authorization") != f"Bearer {self.linkedin_token}"
        ):
            return _linkedin_error(401, "INVALID_ACCESS_TOKEN", "Invalid access token")
        if not request.headers.get("LinkedIn-Version"):
            return _linkedin_error(426, "VERSION_MISSING", "A version must be present")
        if request.headers.get("X-Restli-Protocol-Version") != "2.0.0":
            return _linkedin_error(400, "ILLEGAL_ARGUMENT", "Rest.li protocol 2.0.0 is required")
        return None

    async def _li_response(self, request: web.Request) -> web.Response:
        refusal = self._linkedin_refusal(request)
        if refusal is not None:
            return refusal
        found = self.linkedin_responses.get(request.match_info["response_id"])
        if found is None:
            return _linkedin_error(404, "NOT_FOUND", "Lead form response not found")
        return web.json_response(found)

    async def _li_form(self, request: web.Request) -> web.Response:
        refusal = self._linkedin_refusal(request)
        if refusal is not None:
            return refusal
        found = self.linkedin_forms.get(request.match_info["form_id"])
        if found is None:
            return _linkedin_error(404, "NOT_FOUND", "Lead form not found")
        return web.json_response(found)


@asynccontextmanager
async def running(stand_in: SocialApiStandIn) -> AsyncIterator[SocialApiStandIn]:
    """Serve `stand_in` on 127.0.0.1 (a free port) until the block ends; sets its base_url."""
    runner = web.AppRunner(stand_in.application(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        host, port = runner.addresses[0][:2]
        stand_in.base_url = f"http://{host}:{port}"
        yield stand_in
    finally:
        await runner.cleanup()
