"""`leadflow explain` as a person reads it (`leadflow_app.views.explain_panels`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from leadflow_app.views import explain_panels


def _answer(assignments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "requested_id": "lead-1",
        "lead": {"lead_id": "lead-1", "full_name": "Grace Hopper", "company": "Contoso"},
        "merges": [],
        "score": {"score": 42.0, "grade": "B", "mql_at": None, "rules": {"fit": 42.0}},
        "routing": {
            "team": "emea_inbound",
            "owner": "rep.ben",
            "owner_name": "Ben M.",
            "assignment_rule": "emea",
            "assignment_reason": "sla: anna did not accept within 30 min",
            "assigned_at": "2026-03-01T10:00:00Z",
        },
        "assignments": assignments,
        "touches": [],
        "notes": [],
        "warnings": [],
        "suggested_duplicates": [],
        "stage": {},
    }


def _decision(owner: str, name: str, at: str, reason: str) -> dict[str, Any]:
    return {
        "lead_id": "lead-1",
        "assignment_id": f"asg-{owner}",
        "team": "emea_inbound",
        "owner": owner,
        "owner_name": name,
        "rule": "emea",
        "reason": reason,
        "assigned_at": at,
        "score": 42.0,
        "grade": "B",
    }


def _shown(answer: dict[str, Any]) -> str:
    console = Console(width=200, record=True)
    for part in explain_panels(answer):
        console.print(part)
    return console.export_text()


def test_a_lead_routed_twice_shows_both_decisions_in_order() -> None:
    shown = _shown(
        _answer(
            [
                _decision("rep.anna", "Anna K.", "2026-03-01T09:30:00Z", "round robin"),
                _decision("rep.ben", "Ben M.", "2026-03-01T10:00:00Z", "sla: anna late"),
            ]
        )
    )
    assert "routing history" in shown
    assert shown.index("Anna K.") < shown.index("sla: anna late")


def test_a_single_decision_is_the_routing_panel_alone() -> None:
    shown = _shown(_answer([_decision("rep.ben", "Ben M.", "2026-03-01T10:00:00Z", "rr")]))
    assert "routing history" not in shown
    assert "Ben M." in shown
