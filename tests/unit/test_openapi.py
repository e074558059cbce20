"""GET /openapi.json describes exactly the routes the app serves."""

from __future__ import annotations

from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from ingest_adapters.publisher import Publisher
from leadflow.metrics import Metrics
from leadflow.settings import Settings
from leadflow_app.server import Roles, build_app
from sinks.clickhouse.client import ClickHouse


def full_app() -> Any:
    metrics = Metrics()
    # Neither Kafka nor ClickHouse is reached: building routes touches neither.
    publisher = Publisher(cast(Any, None), metrics, 1.0)
    clickhouse = ClickHouse("chdb:///nonexistent", "leadflow")
    roles = Roles.parse(["adapters", "sink", "query", "notifier"])
    return build_app(Settings(), metrics, roles, publisher, clickhouse, "127.0.0.1:1")


async def test_every_route_is_documented_and_nothing_else() -> None:
    app = full_app()
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        answer = await client.get("/openapi.json")
        assert answer.status == 200
        spec = await answer.json()
    finally:
        await client.close()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert documented == served
    assert spec["openapi"].startswith("3.1")


async def test_bodies_come_from_the_models_the_handlers_validate() -> None:
    from leadflow_app import openapi
    from schemas import CrmEvent

    spec = openapi.document("test")
    crm = spec["paths"]["/v1/events/crm"]["post"]["requestBody"]["content"]["application/json"]
    assert crm["schema"] == CrmEvent.model_json_schema()
    for item in spec["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                assert status.isdigit()
                assert response["description"]
