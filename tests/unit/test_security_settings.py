"""Kafka over SASL_SSL (SCRAM) and ClickHouse over HTTPS: settings reach the clients,
and secrets never reach text."""

from __future__ import annotations

import ssl

from pydantic import SecretStr

from leadflow.kafka_clients import security
from leadflow.settings import ClickHouseSettings, KafkaSettings, Settings
from sinks.clickhouse.client import ClickHouse
from streams.app import broker_credentials

SCRAM = KafkaSettings(
    bootstrap="kafka-1.example.com:9096",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="leadflow",
    sasl_password=SecretStr("s3cret-scram"),
)


def test_sasl_ssl_scram_reaches_the_kafka_clients() -> None:
    options = security(SCRAM)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "leadflow"
    assert options["sasl_plain_password"] == "s3cret-scram"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_sasl_ssl_scram_reaches_faust() -> None:
    credentials = broker_credentials(SCRAM)
    assert credentials is not None
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None


def test_clickhouse_over_https_verifies_with_the_given_ca() -> None:
    client = ClickHouse(
        "https://leadflow:pw@ch.example.com:8443/leadflow", "leadflow", None, "/etc/ssl/ca.pem"
    )
    assert client.server_options() == {
        "dsn": "https://leadflow:pw@ch.example.com:8443/leadflow",
        "verify": True,
        "ca_cert": "/etc/ssl/ca.pem",
    }


def test_secrets_never_appear_in_settings_text() -> None:
    settings = Settings(kafka=SCRAM, clickhouse=ClickHouseSettings(ca_cert="/etc/ssl/ca.pem"))
    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert "s3cret-scram" not in text
