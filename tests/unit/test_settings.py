"""Settings come from the environment by section; bad values stop the start with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadflow.errors import ConfigurationError
from leadflow.settings import environment_variables, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in environment_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_run_embedded() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap is None
    assert settings.clickhouse_dsn.startswith("chdb://")
    assert settings.clickhouse_dsn.endswith("/.leadflow/clickhouse")
    assert settings.normalize.default_phone_region == "CN"


def test_documented_variables_reach_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("CLICKHOUSE_DSN", "https://u:p@ch.example.com:8443/leadflow")
    monkeypatch.setenv("HTTP_PORT", "9000")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "acme.")
    monkeypatch.setenv("NORMALIZE_DEFAULT_PHONE_REGION", "us")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")  # another program's variable
    settings = load_settings()
    assert settings.kafka.bootstrap == "broker-1:9092,broker-2:9092"
    assert settings.clickhouse_dsn == "https://u:p@ch.example.com:8443/leadflow"
    assert settings.http.port == 9000
    assert settings.kafka.topic_prefix == "acme."
    assert settings.normalize.default_phone_region == "US"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("HTTP_PORT", "not-a-port", "http.port"),
        ("NORMALIZE_DEFAULT_PHONE_REGION", "China", "normalize.default_phone_region"),
        ("CLICKHOUSE_DATABASE", "lead-flow; DROP", "clickhouse.database"),
        ("KAFKA_PARTITIONS", "0", "kafka.partitions"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        load_settings()


def test_every_variable_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [name for name in environment_variables() if f"`{name}`" not in doc]
    assert missing == []
