"""Schemathesis against /openapi.json: generated requests to every operation, no 5xx.

Webhook bodies are signed the way Meta and LinkedIn sign them, so the
generated payloads reach the parsers behind the signature checks.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from ingest_adapters.social.linkedin import linkedin_signature
from ingest_adapters.social.meta import meta_signature
from leadflow.auth import env_line, new_key
from leadflow.settings import SCOPES
from leadflow_app import openapi
from leadflow_tools.broker.local import free_port
from leadflow_tools.stack import spawn, wait_healthy

META_SECRET = "schemathesis-meta-secret"
LINKEDIN_SECRET = "schemathesis-linkedin-secret"
schema = schemathesis.openapi.from_dict(openapi.document("test"))


@pytest.fixture(scope="module")
def server(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("schemathesis")
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": f"st{uuid.uuid4().hex[:8]}.",
        "LEADFLOW_DATA_DIR": str(home),
        "HTTP_PORT": str(port),
        "WEB_RATE_PER_S": "100000",
        "WEB_RATE_BURST": "100000",
        "HTTP_WRITE_RATE_PER_S": "100000",
        "HTTP_WRITE_RATE_BURST": "100000",
        # Every scope but admin: the fuzz reaches every parser, and never erases.
        "AUTH_KEYS": env_line([FUZZ_ENTRY]).removeprefix("AUTH_KEYS="),
        "SOCIAL_META_APP_SECRET": META_SECRET,
        "SOCIAL_META_VERIFY_TOKEN": "verify",
        "SOCIAL_LINKEDIN_CLIENT_SECRET": LINKEDIN_SECRET,
        "CALLS_TWILIO_AUTH_TOKEN": "twilio",
        "CALLS_TWILIO_PUBLIC_URL": f"http://127.0.0.1:{port}/v1/calls/twilio",
    }
    env.pop("CLICKHOUSE_DSN", None)
    child = spawn("serve", ["serve", "--roles", "adapters,sink,query"], env, home / "logs")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, [child], timeout_s=90)
        yield base_url
    finally:
        child.stop()
        log = Path(home / "logs" / "serve.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


FUZZ_KEY, FUZZ_ENTRY = new_key("fuzzer", [s for s in SCOPES if s != "admin"])


def _signed(path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Sign a webhook body as its provider would, so the fuzz reaches the parser."""
    if kwargs["method"].upper() != "POST" or not path.startswith("/v1/social/"):
        return kwargs
    body = kwargs.pop("json", None)
    data = kwargs.pop("data", None)
    raw = json.dumps(body).encode() if body is not None else (data or b"")
    if isinstance(raw, str):
        raw = raw.encode()
    headers = dict(kwargs.get("headers") or {})
    headers["Content-Type"] = "application/json"
    if path.endswith("/meta"):
        headers["X-Hub-Signature-256"] = meta_signature(META_SECRET, raw)
    else:
        headers["X-LI-Signature"] = linkedin_signature(LINKEDIN_SECRET, raw)
    return {**kwargs, "data": raw, "headers": headers}


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    # The same examples on every CI run; SCHEMATHESIS_EXPLORE=1 draws new ones.
    derandomize=not os.environ.get("SCHEMATHESIS_EXPLORE"),
)
def test_no_server_errors(case: Any, server: str) -> None:
    kwargs = _signed(case.path, case.as_transport_kwargs(base_url=server))
    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {FUZZ_KEY}"}
    response = requests.request(**kwargs, timeout=60)
    assert response.status_code < 500, f"{case.as_curl_command()}\n{response.text[:500]}"
