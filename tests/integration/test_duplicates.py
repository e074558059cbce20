"""Suggested duplicates through real processes: listed, merged by hand, unmerged.

Two colleagues at one company with similar names and their own addresses are
two people; `GET /v1/duplicates` lists them; a person who knows better merges
them (`POST /v1/leads/{id}/merge`), and undoes it (`…/unmerge`): both leads
come back with their own touches, notes and owners.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.integration.processes import Stack, run_cli
from tests.keys import KEYS


def wait_until(stack: Stack, what: str, check: Any, timeout_s: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.assert_running()
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout_s}s\n{stack.logs()}")


def owned(stack: Stack, email: str) -> dict[str, Any]:
    def routed() -> dict[str, Any] | None:
        leads = stack.leads(email=email)["leads"]
        return leads[0] if leads and leads[0]["owner"] else None

    return wait_until(stack, f"{email} routed", routed)  # type: ignore[no-any-return]


async def test_suggested_duplicates_are_listed_merged_and_unmerged(stack: Stack) -> None:
    status, _ = stack.post_json(
        {
            "name": "Anna Schmidt",
            "email": "anna@contoso-de.com",
            "company": "Contoso GmbH",
            "message": "Please call after 3pm",
        }
    )
    assert status == 202
    anna = owned(stack, "anna@contoso-de.com")
    status, _ = stack.post_json(
        {
            "name": "Anne Schmidt",
            "email": "anne@contoso-de.com",
            "company": "Contoso",
            "title": "CFO",
        }
    )
    assert status == 202
    anne = owned(stack, "anne@contoso-de.com")
    assert anne["lead_id"] != anna["lead_id"]  # different addresses: two people

    def listed() -> list[dict[str, Any]]:
        status, answer = stack.http("GET", "/v1/duplicates")
        assert status == 200, answer
        return answer["duplicates"]  # type: ignore[no-any-return]

    [pair] = wait_until(stack, "the suggestion", listed)
    table = await asyncio.to_thread(run_cli, "duplicates", "--url", stack.base_url)
    assert anna["lead_id"] in table
    assert anne["lead_id"] in table
    assert "leadflow merge LEAD --with OTHER_LEAD" in table
    assert {pair["lead"]["lead_id"], pair["other"]["lead_id"]} == {anna["lead_id"], anne["lead_id"]}
    assert pair["rule"] == "name_domain_fuzzy"
    assert 0 < pair["score"] < 100

    # Refusals name the problem and leave a dead letter.
    path = f"/v1/leads/{anne['lead_id']}/merge"
    status, answer = stack.http("POST", path, b'{"with": "no-such-lead"}', json_type())
    assert (status, answer["error"]) == (404, "unknown_lead")
    assert answer["dead_letter_id"]
    status, answer = stack.http("POST", path, b'{"with": 1}', json_type())
    assert (status, answer["error"]) == (422, "invalid_fields")
    status, answer = stack.http("POST", path, b"with=x", {"Content-Type": "text/plain"})
    assert status == 415
    status, answer = stack.http("POST", f"/v1/leads/{anne['lead_id']}/unmerge")
    assert (status, answer["error"]) == (409, "not_merged")
    status, answer = stack.http(
        "POST", path, f'{{"with": "{anna["lead_id"]}"}}'.encode(), json_type(), key=KEYS["read:pii"]
    )
    assert status == 403

    # Merge: asked on the later lead, the earlier survives with its id and owner.
    status, answer = stack.http(
        "POST", path, f'{{"with": "{anna["lead_id"]}"}}'.encode(), json_type(), key=KEYS["crm"]
    )
    assert status == 202, answer
    assert (answer["survivor_id"], answer["merged_id"]) == (anna["lead_id"], anne["lead_id"])

    def merged() -> dict[str, Any] | None:
        leads = stack.leads(limit="10")["leads"]
        return leads[0] if len(leads) == 1 and leads[0]["title"] == "CFO" else None

    one = wait_until(stack, "the merge", merged)
    assert (one["lead_id"], one["owner"]) == (anna["lead_id"], anna["owner"])
    assert [n["text"] for n in one["notes"]] == ["Please call after 3pm"]
    status, why = stack.http("GET", f"/v1/leads/{anne['lead_id']}/explain")
    assert status == 200
    assert why["lead"]["lead_id"] == anna["lead_id"]
    [merge] = why["merges"]
    assert (merge["merged_id"], merge["rule"]) == (anne["lead_id"], "manual")
    assert listed() == []  # a merged pair is no longer a suggestion

    # Unmerge, as sales ops type it: both leads back, each with its own touches and owner.
    said = await asyncio.to_thread(run_cli, "unmerge", anne["lead_id"], "--url", stack.base_url)
    assert f"unmerging {anne['lead_id']} from {anna['lead_id']}" in said

    def both() -> list[dict[str, Any]] | None:
        leads = stack.leads(limit="10")["leads"]
        titles = sorted(x["title"] for x in leads)
        return leads if len(leads) == 2 and titles == ["", "CFO"] else None

    after = {x["lead_id"]: x for x in wait_until(stack, "the unmerge", both)}
    for before in (anna, anne):
        now = after[before["lead_id"]]
        assert (now["email"], now["owner"], now["touch_event_ids"]) == (
            before["email"],
            before["owner"],
            before["touch_event_ids"],
        )
    assert after[anna["lead_id"]]["notes"][0]["text"] == "Please call after 3pm"
    assert after[anne["lead_id"]]["notes"] == []
    status, why = stack.http("GET", f"/v1/leads/{anna['lead_id']}/explain")
    assert why["merges"] == []
    assert listed() == []  # a person said they are two: not suggested again

    status, log = stack.http("GET", "/v1/audit?limit=100")
    assert status == 200
    actions = {row["action"] for row in log["entries"]}
    assert {"merge", "unmerge", "read_duplicates"} <= actions


def json_type() -> dict[str, str]:
    return {"Content-Type": "application/json"}
