"""Nurture end to end: real broker, real worker and server processes, the embedded
ClickHouse engine and a real SMTP server, with the stage's clock fast-forwarded by
publishing ticks (`NurtureTick` carries the time it stands for).

One run follows seven people through config/nurture.yaml: the welcome at once and the
feature email three days later; a reply that ends the sequence; an unsubscribe that
suppresses for good; a pricing-page lingerer; a call task closed by a real call and
one missed; a lost lead won back, re-engaged and routed to its previous owner; and a
worker killed with SIGKILL mid-sequence that sends nothing twice and skips nothing.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller

from leadflow.kafka_clients import make_producer
from leadflow.settings import KafkaSettings
from leadflow_tools.broker.local import free_port
from leadflow_tools.stack import spawn, wait_healthy
from schemas.nurture import NurtureTick
from tests.integration.processes import Stack, start_stack
from tests.integration.processes import wait_until as poll

BERLIN = ZoneInfo("Europe/Berlin")


class Inbox:
    """What the SMTP server received, parsed."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(message)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails if m["To"] == address]

    def wait(self, address: str, count: int, stack: Stack, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.to(address)) >= count:
                return
            stack.assert_running()
            time.sleep(0.3)
        subjects = [m["Subject"] for m in self.to(address)]
        raise AssertionError(f"{address}: {subjects}, wanted {count}\n{stack.logs()}")


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    received = Inbox()
    port = free_port()
    server = Controller(received, hostname="127.0.0.1", port=port)
    server.start()
    try:
        yield received, port
    finally:
        server.stop()


@pytest.fixture
def nurture_stack(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, inbox: tuple[Inbox, int]
) -> Iterator[Stack]:
    running = start_stack(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        extra_env={
            "NURTURE_SMTP_PORT": str(inbox[1]),
            "NURTURE_TICK_INTERVAL_S": "1",
            "NURTURE_BACKOFF_S": "0.1",
        },
    )
    try:
        yield running
    finally:
        running.stop()


def in_business_hours(at: datetime) -> datetime:
    """The first full hour at or after `at` that is a weekday 10:00-16:00 in Berlin."""
    at = at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    while not (at.astimezone(BERLIN).weekday() < 5 and 10 <= at.astimezone(BERLIN).hour < 16):
        at += timedelta(hours=1)
    return at


async def tick(stack: Stack, now: datetime) -> None:
    """Move the nurture agent's clock: one tick for `now` on every partition."""
    producer = make_producer(KafkaSettings(), stack.bootstrap)
    await producer.start()
    try:
        topic = stack.topics.nurture_commands
        value = NurtureTick(now=now).model_dump_json().encode()
        for partition in sorted(await producer.partitions_for(topic)):
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def person(name: str, phone: str) -> dict[str, Any]:
    return {
        "email": f"{name}@contoso-gmbh.de",
        "phone": phone,
        "first_name": name.title(),
        "last_name": "Muster",
        "company": "Contoso GmbH",
        "country": "DE",
        "consent": "yes",
    }


def lead_of(stack: Stack, address: str) -> dict[str, Any]:
    (lead,) = stack.leads(email=address)["leads"]
    return lead


def wait_until(check: Callable[[], Any], stack: Stack, what: str, timeout_s: float = 60) -> Any:
    return poll(check, what, stack, timeout_s)


def nurture_history(stack: Stack, lead_id: str) -> list[dict[str, Any]]:
    status, answer = stack.http("GET", f"/v1/leads/{lead_id}/explain")
    assert status == 200, answer
    return list(answer["nurture"])


def has(stack: Stack, lead_id: str, kind: str, sequence: str = "") -> Callable[[], bool]:
    return lambda: any(
        e["kind"] == kind and (not sequence or e["sequence"] == sequence)
        for e in nurture_history(stack, lead_id)
    )


def post_event(stack: Stack, path: str, body: dict[str, Any]) -> None:
    status = stack.post(path, body)
    assert status == 202, (path, body, status)


def engagement(address: str, kind: str) -> dict[str, Any]:
    return {
        "event_id": f"eng-{uuid.uuid4()}",
        "kind": kind,
        "email": address,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


def link_path(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return parsed.path


def one_click(url: str) -> int:
    """An RFC 8058 one-click unsubscribe, as a mail client posts it."""
    request = urllib.request.Request(  # noqa: S310 - the stack's own http URL
        url,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return int(answer.status)


def kill_and_restart_worker(stack: Stack) -> None:
    index = next(i for i, c in enumerate(stack.children) if c.name == "worker")
    child = stack.children[index]
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait(timeout=10)
    stack.children[index] = spawn(child.name, child.args, child.env, child.log_path.parent)
    wait_healthy(stack.base_url, stack.children, timeout_s=60)


@pytest.mark.integration
async def test_sequences_follow_people_up_on_the_stage_clock(
    nurture_stack: Stack, inbox: tuple[Inbox, int]
) -> None:
    stack, mails = nurture_stack, inbox[0]
    people = {
        name: person(name, f"+49 89 2000{n:03d}")
        for n, name in enumerate(["gus", "cai", "ana", "bo", "dai", "eve", "fay"])
    }
    address = {name: fields["email"] for name, fields in people.items()}
    for fields in people.values():
        status, answer = stack.post_json(fields)
        assert status == 202, answer
    # The welcome, at once (the next tick of the real clock), in English for Germany.
    for name in people:
        mails.wait(address[name], 1, stack)
    welcome = mails.to(address["gus"])[0]
    assert welcome["Subject"] == "Welcome to Acme, Gus"
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    leads = {
        name: wait_until(lambda a=address[name]: lead_of(stack, a), stack, name) for name in people
    }

    # cai replies: the welcome sequence ends. ana unsubscribes (one-click, RFC 8058).
    post_event(stack, "/v1/events/engagement", engagement(address["cai"], "email_reply"))
    unsubscribe = mails.to(address["ana"])[0]["List-Unsubscribe"].strip("<>")
    assert one_click(stack.base_url + link_path(unsubscribe)) == 200
    # ana and bo keep looking at the pricing page, without asking for a demo.
    for name in ("ana", "bo"):
        for _ in range(3):
            post_event(
                stack, "/v1/events/engagement", engagement(address[name], "pricing_page_visit")
            )
    # dai and eve become MQLs: a call task each for their owner. fay is lost.
    for name in ("dai", "eve"):
        post_event(
            stack,
            "/v1/events/crm",
            {
                "event_id": f"crm-{name}-mql",
                "lead_id": leads[name]["lead_id"],
                "action": "set_stage",
                "stage": "mql",
                "occurred_at": datetime.now(UTC).isoformat(),
            },
        )
    fay_owner = wait_until(lambda: lead_of(stack, address["fay"])["owner"], stack, "fay owned")
    post_event(
        stack,
        "/v1/events/crm",
        {
            "event_id": "crm-fay-lost",
            "lead_id": leads["fay"]["lead_id"],
            "action": "lost",
            "reason": "no budget",
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
    wait_until(has(stack, leads["cai"]["lead_id"], "exited", "welcome"), stack, "cai exits")
    wait_until(
        has(stack, leads["bo"]["lead_id"], "enrolled", "pricing_lingerer"), stack, "bo enrolled"
    )
    wait_until(
        has(stack, leads["ana"]["lead_id"], "enrolled", "pricing_lingerer"), stack, "ana enrolled"
    )
    for name in ("dai", "eve"):
        wait_until(
            has(stack, leads[name]["lead_id"], "task_created", "first_call"),
            stack,
            f"{name}'s call task",
        )
    # A real call to dai closes dai's task with its outcome; eve is never called.
    post_event(
        stack,
        "/v1/calls/events",
        {
            "call_id": "c-dai-1",
            "from": "+49 89 9999999",
            "to": people["dai"]["phone"],
            "direction": "outbound",
            "status": "completed",
            "started_at": datetime.now(UTC).isoformat(),
            "duration_s": 240,
            "outcome": "interested",
            "agent_id": "rep",
        },
    )
    wait_until(has(stack, leads["dai"]["lead_id"], "task_done"), stack, "dai's task done")

    # A worker killed outright mid-sequence, then three days later (in Berlin's office hours).
    kill_and_restart_worker(stack)
    await tick(stack, in_business_hours(datetime.now(UTC) + timedelta(days=3)))
    for name in ("gus", "bo", "dai", "eve"):
        mails.wait(address[name], 2, stack)
    assert [m["Subject"] for m in mails.to(address["gus"])] == [
        "Welcome to Acme, Gus",
        "What teams like Contoso GmbH do with Acme",
    ]
    mails.wait(address["bo"], 3, stack)
    # Bo's welcome sequence and the pricing one both fall due at this tick: the two emails
    # come in either order.
    assert sorted(m["Subject"] for m in mails.to(address["bo"])[1:3]) == [
        "Still comparing plans, Bo?",
        "What teams like Contoso GmbH do with Acme",
    ]
    wait_until(
        has(stack, leads["ana"]["lead_id"], "skipped", "pricing_lingerer"),
        stack,
        "ana's reasons email skipped",
    )
    assert len(mails.to(address["ana"])) == 1  # unsubscribed: nothing after the welcome
    assert len(mails.to(address["cai"])) == 1  # replied: the sequence ended
    assert len(mails.to(address["fay"])) == 1  # lost: the welcome sequence ended

    # Thirty days after fay was lost: the win-back email; a click on it re-engages fay,
    # who goes back to the same rep.
    win_back_sent = in_business_hours(datetime.now(UTC) + timedelta(days=31))
    await tick(stack, win_back_sent)
    mails.wait(address["fay"], 2, stack)
    win_back = mails.to(address["fay"])[1]
    assert win_back["Subject"] == "A lot has changed at Acme, Fay"
    body = win_back.get_body(("plain",))
    assert body is not None
    click = next(w for w in body.get_content().split() if "/v1/nurture/c/" in w)
    request = urllib.request.Request(stack.base_url + link_path(click))  # noqa: S310
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=10)
    with redirect.value as answer:  # an HTTPError holds the connection until closed
        assert answer.code == 302
        assert answer.headers["Location"] == "https://www.example.com/whats-new"
    fay_id = leads["fay"]["lead_id"]
    wait_until(has(stack, fay_id, "clicked", "win_back"), stack, "fay's click on the win-back")
    fay = wait_until(
        lambda: (lead := lead_of(stack, address["fay"]))["stage"] == "assigned" and lead,
        stack,
        "fay re-engaged and routed again",
    )
    assert fay["owner"] == fay_owner
    # A week after the win-back email: fay clicked, so the sequence asks her rep to call.
    await tick(stack, win_back_sent + timedelta(days=7, hours=1))
    task = wait_until(
        lambda: next(
            (
                e
                for e in nurture_history(stack, fay_id)
                if e["kind"] == "task_created" and e["sequence"] == "win_back"
            ),
            None,
        ),
        stack,
        "the call task after the click",
    )
    assert task["owner"] == fay_owner
    post_event(
        stack,
        "/v1/events/crm",
        {
            "event_id": "crm-fay-won",
            "lead_id": fay_id,
            "action": "won",
            "amount": 12000,
            "currency": "EUR",
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
    wait_until(lambda: lead_of(stack, address["fay"])["stage"] == "won", stack, "fay won")
    today = datetime.now(UTC).date()
    status, funnel = stack.http(
        "GET", f"/v1/funnel?from={today}&to={today + timedelta(days=1)}&kind=activity"
    )
    assert status == 200, funnel
    entered = {row["stage"]: row["leads"] for row in funnel["rows"]}
    assert entered.get("re_engaged", 0) >= 1, entered
    assert entered.get("won", 0) >= 1, entered

    # Nothing sent twice, whatever the kill and the replays did.
    ids = [m["Message-ID"] for m in mails.mails]
    assert len(ids) == len(set(ids)), sorted(ids)
    # The rep report: dai's task done in time; eve's missed (late) once it is due.
    later = (datetime.now(UTC) + timedelta(hours=5)).isoformat()
    status, report = stack.http("GET", f"/v1/nurture/tasks?as_of={urllib.parse.quote(later)}")
    assert status == 200
    by_owner = {row["owner"]: row for row in report["rows"]}
    dai_owner = lead_of(stack, address["dai"])["owner"]
    eve_owner = lead_of(stack, address["eve"])["owner"]
    assert by_owner[dai_owner]["on_time"] >= 1
    assert by_owner[eve_owner]["missed"] >= 1
    assert by_owner[eve_owner]["late"] >= 1
    status, steps = stack.http("GET", "/v1/nurture/sequences")
    assert status == 200
    sent = {(r["sequence"], r["step"]): r["sent"] for r in steps["rows"]}
    assert sent[("welcome", "welcome")] == 7
    assert sent[("welcome", "features")] == 4


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
