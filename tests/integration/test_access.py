"""Every route of /openapi.json, called with no key, a wrong key and a key of each scope.

The expectation comes from what each kind of route promises (docs/security.md),
not from the server's own table: a route added without an access decision
makes the server refuse to start, and one whose decision is wrong fails here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_adapters.publisher import Publisher
from leadflow.errors import ConfigurationError
from leadflow.kafka_clients import ensure_topics, make_producer
from leadflow.metrics import Metrics
from leadflow.settings import AuthSettings, HttpSettings, KafkaSettings, Settings
from leadflow_app import access
from leadflow_app.server import Roles, build_app
from sinks.clickhouse.client import ClickHouse
from tests.keys import ENTRIES, KEYS, WRONG_KEY, bearer

DOCS = Path(__file__).parents[2] / "docs" / "security.md"

# What each route needs, written out by hand: the server's table must agree.
EXPECTED = {
    "GET /healthz": "public",
    "GET /openapi.json": "public",
    "GET /dashboard": "public",
    "GET /metrics": "read:analytics",
    "POST /v1/leads/web": "form",
    "OPTIONS /v1/leads/web": "public",
    "POST /v1/events/crm": "crm",
    "POST /v1/events/engagement": "ingest",
    "POST /v1/calls/events": "calls",
    "POST /v1/calls/asterisk": "calls",
    "POST /v1/calls/twilio": "signed",
    "POST /v1/uploads/tradeshow": "upload",
    "GET /v1/uploads/{upload_id}/errors.csv": "upload",
    "GET /v1/social/meta": "signed",
    "POST /v1/social/meta": "signed",
    "GET /v1/social/linkedin": "signed",
    "POST /v1/social/linkedin": "signed",
    "GET /v1/leads": "read:pii",
    "GET /v1/leads/{lead_id}/explain": "read:pii",
    "GET /v1/dead-letters": "read:pii",
    "GET /v1/duplicates": "read:pii",
    "POST /v1/leads/{lead_id}/merge": "crm",
    "POST /v1/leads/{lead_id}/unmerge": "crm",
    "GET /v1/audit": "admin",
    "GET /v1/funnel": "read:analytics",
    "GET /v1/pipeline": "read:analytics",
    "GET /v1/pipeline/stagnant": "read:analytics",
    "GET /v1/nurture/sequences": "read:analytics",
    "GET /v1/nurture/tasks": "read:analytics",
    "GET /v1/scoring/evaluation": "read:analytics",
    "POST /v1/privacy/erase": "admin",
    "GET /v1/nurture/o/{token}": "signed",
    "GET /v1/nurture/c/{token}": "signed",
    "GET /v1/nurture/u/{token}": "signed",
    "POST /v1/nurture/u/{token}": "signed",
}
# A made-up signature is 403, but a tracking link's token is its own signature: a made-up
# one is a bad link (400), and the open pixel answers its GIF to anyone, recording nothing.
SIGNED_REFUSAL = {
    "GET /v1/nurture/o/{token}": 200,
    "GET /v1/nurture/c/{token}": 400,
    "GET /v1/nurture/u/{token}": 400,
    "POST /v1/nurture/u/{token}": 400,
}


@pytest.fixture
async def full(
    kafka_bootstrap: str, topic_prefix: str, clickhouse: ClickHouse
) -> AsyncIterator[TestClient]:
    settings = Settings(
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(publish_timeout_s=5, write_rate_per_s=10_000, write_rate_burst=10_000),
        auth=AuthSettings(keys=ENTRIES),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    producer = make_producer(settings.kafka, kafka_bootstrap)
    await producer.start()
    metrics = Metrics()
    app = build_app(
        settings,
        metrics,
        Roles.parse(["adapters", "query"]),
        Publisher(producer, metrics, 5),
        clickhouse,
        kafka_bootstrap,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await producer.stop()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((method.upper(), path) for path, item in spec["paths"].items() for method in item)


async def _call(client: TestClient, method: str, path: str, key: str | None) -> int:
    url = re.sub(r"\{[^}]+\}", "nobody", path)
    headers = bearer(key) if key else {}
    if method == "OPTIONS":  # a preflight from an origin the form lists
        url += "?form_id=contact-us"
        headers["Origin"] = "https://www.example.com"
    # An empty JSON body: refused by every write route that gets that far, so nothing changes.
    async with client.request(
        method, url, data=b"{}", headers={**headers, "Content-Type": "application/json"}
    ) as answer:
        await answer.read()
        return answer.status


async def test_every_route_with_every_credential(full: TestClient) -> None:
    spec = await (await full.get("/openapi.json")).json()
    operations = _operations(spec)
    assert {f"{m} {p}" for m, p in operations} == set(EXPECTED), "a route without a decision"
    problems: list[str] = []
    for method, path in operations:
        need = EXPECTED[f"{method} {path}"]
        assert spec["paths"][path][method.lower()]["x-access"], path
        for label, key in [("no key", None), ("wrong key", WRONG_KEY), *KEYS.items()]:
            status = await _call(full, method, path, key)
            if need == "public":
                allowed = status not in (401, 403)
            elif need == "signed":
                # No key stands in for a provider's signature or verify token.
                allowed = status == SIGNED_REFUSAL.get(f"{method} {path}", 403)
            elif label in ("no key", "wrong key"):
                allowed = status == 401
            else:
                scope = "ingest" if need == "form" else need
                granted = label in (scope, "admin")
                allowed = status not in (401, 403) if granted else status == 403
            if not allowed:
                problems.append(f"{method} {path} with {label}: {status} (needs {need})")
    assert not problems, "\n".join(problems)


async def test_the_matrix_is_what_docs_security_md_shows() -> None:
    text = DOCS.read_text("utf-8")
    for operation, need in EXPECTED.items():
        method, path = operation.split(" ")
        row = next((line for line in text.splitlines() if f"`{method} {path}`" in line), None)
        assert row is not None, f"docs/security.md has no row for {operation}"
        assert need in row, f"docs/security.md: {operation} should say {need}: {row}"


def test_a_route_without_decision_stops_the_server() -> None:
    from aiohttp import web

    app = web.Application()

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/healthz", handler)
    app.router.add_post("/v1/brand-new", handler)
    with pytest.raises(ConfigurationError, match="POST /v1/brand-new"):
        access.check_routes(app)


def test_no_keys_on_a_public_address_refuses_to_start(tmp_path: Path) -> None:
    no_file = AuthSettings(keys_file=tmp_path / "keys.json")
    anywhere = HttpSettings(host="0.0.0.0")  # noqa: S104 - the case under test
    exposed = Settings(http=anywhere, auth=no_file)
    with pytest.raises(ConfigurationError, match="leadflow keys create"):
        access.check_exposure(exposed, access.KeyRing(exposed))
    keyed = Settings(http=anywhere, auth=AuthSettings(keys=ENTRIES, keys_file=no_file.keys_file))
    access.check_exposure(keyed, access.KeyRing(keyed))
    local = Settings(auth=no_file)  # loopback with no keys: starts, and refuses every call
    access.check_exposure(local, access.KeyRing(local))
