"""Factories shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import RawLead


@pytest.fixture
def make_raw_lead() -> Callable[..., RawLead]:
    """A RawLead with sensible fields; any field can be overridden."""
    counter = iter(range(1_000_000))

    def make(fields: dict[str, str] | None = None, **overrides: Any) -> RawLead:
        values: dict[str, Any] = {
            "event_id": f"evt-{next(counter)}",
            "channel": "web",
            "source_system": "web_form",
            "received_at": datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
            "fields": {"name": "Ada Lovelace", "email": "ada@example.com"}
            if fields is None
            else fields,
        }
        values.update(overrides)
        return RawLead(**values)

    return make
