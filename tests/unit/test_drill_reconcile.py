"""The fault drill's reconciliation of CRM actions: each acknowledged action is found
applied, refused with a reason, lost or doubled, and nothing else."""

from __future__ import annotations

from collections import Counter

from leadflow_tools.drill.reconcile import crm_outcomes


def test_each_crm_action_is_applied_refused_lost_or_doubled() -> None:
    crm = {
        "crm-a": ["L1", "chaos a"],
        "crm-b": ["L2", "chaos b"],
        "crm-c": ["L3", "chaos c"],
        "crm-d": ["L4", "chaos d"],
    }
    moves = Counter({("L1", "chaos a"): 1, ("L4", "chaos d"): 2, ("L2", "other reason"): 1})
    refused = {"crm-b": "unknown_lead", "crm-elsewhere": "stage_not_allowed"}
    assert crm_outcomes(crm, moves, refused) == {
        "crm_applied": 2,  # a, and d (twice)
        "crm_refused": {"unknown_lead": 1},
        "crm_lost": 1,  # c: no move, no dead letter
        "crm_doubled": 1,
    }
