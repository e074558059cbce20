"""No Docker engine runs here, so docker-compose.yml is checked against the code instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from leadflow.settings import Settings, environment_variables
from leadflow_app.server import Roles

COMPOSE = Path(__file__).parents[2] / "docker-compose.yml"
LEADFLOW_SERVICES = ("worker", "adapters", "sink", "notifier")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_stack_has_its_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"kafka", "clickhouse", *LEADFLOW_SERVICES}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    for volume in ("kafka-data", "clickhouse-data"):
        assert volume in compose["volumes"]


def test_leadflow_services_use_only_known_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = set(environment_variables())
    for name in LEADFLOW_SERVICES:
        service = compose["services"][name]
        environment = {k: str(v) for k, v in service["environment"].items()}
        assert set(environment) <= known, f"{name}: unknown {set(environment) - known}"
        for key in known:
            monkeypatch.delenv(key, raising=False)
        for key, value in environment.items():
            monkeypatch.setenv(
                key,
                value.replace("${CLICKHOUSE_PASSWORD:?set CLICKHOUSE_PASSWORD in .env}", "pw"),
            )
        settings = Settings()
        assert settings.kafka.bootstrap == "kafka:9092"
        assert settings.clickhouse_dsn == "http://leadflow:pw@clickhouse:8123/leadflow"
        assert "kafka" in service["depends_on"]


def test_roles_split_across_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["command"] == ["worker"]
    adapters = Roles.parse(services["adapters"]["command"][2].split(","))
    sink = Roles.parse(services["sink"]["command"][2].split(","))
    assert adapters.adapters
    assert not adapters.sink
    assert sink.sink
    assert sink.query
    assert not sink.adapters
    assert "clickhouse" in services["sink"]["depends_on"]
    notifier = Roles.parse(services["notifier"]["command"][2].split(","))
    assert notifier.notifier
    assert not notifier.sink


def test_http_services_need_their_keys_and_expose_little(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("adapters", "sink"):
        [env_file] = services[name]["env_file"]
        assert env_file == {"path": "leadflow.env", "required": True}, name
        assert services[name]["environment"]["HTTP_HOST"] == "0.0.0.0"  # noqa: S104
    assert services["adapters"]["ports"] == ["8080:8080"]
    for name in ("sink", "clickhouse", "grafana"):
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every address"
    text = COMPOSE.read_text()
    assert "change-me" not in text  # no default password
