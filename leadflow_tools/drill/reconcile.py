"""Reconcile a drill's ledger with what ClickHouse holds (run as its own process).

    python -m leadflow_tools.drill.reconcile CHDB_DIR LEDGER.json

Prints one JSON line: per fault, how many acknowledged event ids are
missing (lost) or present more than once (doubled) among live leads after
FINAL, how many rejected posts have no dead letter, and (over the whole
drill) how many leads moved to an earlier stage.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from leadflow.rules import load_rules
from sinks.clickhouse.client import ClickHouse

SPECIAL = {"lost", "disqualified", "re_engaged", "merged", "won"}


async def reconcile(chdb_dir: Path, ledger: dict[str, dict[str, Any]]) -> dict[str, Any]:
    clickhouse = ClickHouse(f"chdb://{chdb_dir}", "leadflow")
    try:
        touches = await clickhouse.query(
            "SELECT e, count() AS n FROM (SELECT arrayJoin(touch_event_ids) AS e "
            "FROM leadflow.leads FINAL WHERE merged_into = '') GROUP BY e"
        )
        letters = await clickhouse.query(
            "SELECT DISTINCT dead_letter_id FROM leadflow.dead_letters FINAL"
        )
        losses = await clickhouse.query(
            "SELECT lead_id, reason, count() AS n FROM leadflow.lead_transitions FINAL "
            "WHERE to_stage = 'lost' GROUP BY lead_id, reason"
        )
        # Refused CRM actions: their dead letter holds the action (its event id) as sent on.
        refusals = await clickhouse.query(
            "SELECT reason, base64Decode(original_b64) AS original FROM leadflow.dead_letters "
            "FINAL WHERE position(base64Decode(original_b64), '\"crm-') > 0"
        )
        moves = await clickhouse.query(
            "SELECT from_stage, to_stage, count() AS n FROM leadflow.lead_transitions FINAL "
            "GROUP BY from_stage, to_stage"
        )
    finally:
        await clickhouse.close()
    seen = Counter({row["e"]: int(row["n"]) for row in touches})
    lost_moves = Counter({(row["lead_id"], row["reason"]): int(row["n"]) for row in losses})
    refused: dict[str, str] = {}
    for row in refusals:
        for event_id in re.findall(r'"(crm-[^"]+)"', str(row["original"])):
            refused[event_id] = row["reason"]
    stored_letters = {row["dead_letter_id"] for row in letters}
    order = {stage.name: i for i, stage in enumerate(load_rules().stages.stages)}
    # A move backwards: a transition to an earlier funnel stage than the one it left
    # (moves to lost, disqualified, re_engaged or merged are allowed from anywhere).
    backwards = sum(
        int(row["n"])
        for row in moves
        if row["from_stage"] in order
        and row["to_stage"] in order
        and row["to_stage"] not in SPECIAL
        and order[row["to_stage"]] < order[row["from_stage"]]
    )
    result: dict[str, Any] = {}
    for fault, entries in ledger.items():
        acknowledged = entries["acknowledged"]
        result[fault] = {
            "lost": sum(1 for e in acknowledged if seen[e] == 0),
            "doubled": sum(1 for e in acknowledged if seen[e] > 1),
            "rejected_missing": sum(1 for d in entries["rejected"] if d not in stored_letters),
            "backwards": backwards,
            **crm_outcomes(entries.get("crm", {}), lost_moves, refused),
        }
    return result


def crm_outcomes(
    crm: dict[str, list[str]], lost_moves: Counter[tuple[str, str]], refused: dict[str, str]
) -> dict[str, Any]:
    """Each acknowledged CRM `lost`: applied (its move to lost), refused (a dead letter
    with the reason), lost (neither) or doubled (more than one move)."""
    moves = {e: lost_moves[(lead, reason)] for e, (lead, reason) in crm.items()}
    unapplied = [e for e, n in moves.items() if n == 0]
    return {
        "crm_applied": sum(1 for n in moves.values() if n >= 1),
        "crm_refused": dict(Counter(refused[e] for e in unapplied if e in refused)),
        "crm_lost": sum(1 for e in unapplied if e not in refused),
        "crm_doubled": sum(1 for n in moves.values() if n > 1),
    }


if __name__ == "__main__":
    ledger = json.loads(Path(sys.argv[2]).read_text())
    print(json.dumps(asyncio.run(reconcile(Path(sys.argv[1]), ledger))))
