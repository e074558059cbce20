"""API keys for tests: one per scope and one admin, fixed so failures are reproducible.

The server holds only their hashed entries (`ENTRIES`, or `env()` for a child
process); tests send the keys themselves with `bearer(KEY)`.
"""

from __future__ import annotations

import json

from leadflow.auth import digest
from leadflow.settings import SCOPES, ApiKeyEntry


def _key(scope: str) -> str:
    return f"lf_testkey{scope.replace(':', '')[:20]}_" + "s" * 40


KEYS: dict[str, str] = {scope: _key(scope) for scope in SCOPES}
ADMIN_KEY = KEYS["admin"]
WRONG_KEY = "lf_testkeyadmin_" + "w" * 40

ENTRIES = [
    ApiKeyEntry(id=k[3:].partition("_")[0], name=f"test {s}", sha256=digest(k), scopes=(s,))  # type: ignore[arg-type]
    for s, k in KEYS.items()
]


def bearer(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def env() -> dict[str, str]:
    """The AUTH_KEYS variable that makes a child server accept every test key."""
    return {"AUTH_KEYS": json.dumps([json.loads(e.model_dump_json()) for e in ENTRIES])}
