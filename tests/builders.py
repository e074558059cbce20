"""Messages the tests build often, with every field filled and any one overridable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas import Assignment


def make_assignment(team: str, n: int, **overrides: Any) -> Assignment:
    """The `n`th routing decision for `team`, with a rep and the person's contact data."""
    values: dict[str, Any] = {
        "assignment_id": f"{team}-{n}",
        "lead_id": f"lead-{team}-{n}",
        "team": team,
        "owner": "wang.li",
        "owner_name": "王丽",
        "owner_email": "wang.li@example.com",
        "rule": "all",
        "reason": "round-robin",
        "assigned_at": datetime.now(UTC),
        "score": 72.5,
        "grade": "B",
        "full_name": "王小明",
        "company": "示例科技",
        "email": "wang.xm@example.cn",
        "phone": "+8613800138000",
        "source": "baidu",
    }
    return Assignment(**{**values, **overrides})
