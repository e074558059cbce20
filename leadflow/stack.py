"""`leadflow up`: the whole local stack, sample leads through it, and the result on screen.

Starts the project's broker (unless KAFKA_BOOTSTRAP names one), a Faust
worker and the HTTP server as child processes, posts the sample leads of
samples/web_forms.json, shows what landed in ClickHouse, and keeps running
until Ctrl-C, then stops every process it started, by pid.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from leadflow.broker.local import LocalKafka
from leadflow.errors import FatalError
from leadflow.settings import Settings
from leadflow.views import funnel_table, lead_table, pipeline_table


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str]
    env: dict[str, str]

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "leadflow", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own session: a terminal's Ctrl-C reaches only `up`, which stops the children
            # in order (server first, so the writer commits what it inserted).
            start_new_session=True,
            # And if `up` itself is killed outright, the children follow it.
            preexec_fn=_die_with_parent,
        )
    (log_dir / f"{name}.pid").write_text(str(process.pid))
    return Child(name, process, log_path, args, env)


def http_json(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_healthy(base_url: str, children: list[Child], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise FatalError(
                    f"{child.name} exited with {child.process.returncode}; see {child.log_path}"
                )
        try:
            status, _ = http_json("GET", f"{base_url}/healthz", timeout_s=2)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise FatalError(f"the server did not answer /healthz within {timeout_s:.0f}s")


def load_samples() -> list[dict[str, Any]]:
    text = resources.files("leadflow").joinpath("samples/web_forms.json").read_text("utf-8")
    samples: list[dict[str, Any]] = json.loads(text)
    return samples


def post_sample(base_url: str, sample: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = dict(sample.get("headers", {}))
    if sample["content_type"] == "application/json":
        body = json.dumps(sample["fields"], ensure_ascii=False).encode()
    else:
        body = urllib.parse.urlencode(sample["fields"]).encode()
    headers["Content-Type"] = sample["content_type"]
    return http_json("POST", f"{base_url}/v1/leads/web", body, headers)


def run_up(settings: Settings, console: Console) -> int:
    bootstrap = settings.kafka.bootstrap
    kafka: LocalKafka | None = None
    children: list[Child] = []
    log_dir = settings.data_dir / "logs"
    # Even when started with SIGINT ignored (a background job), Ctrl-C or kill -INT stops it.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not bootstrap:
            kafka = LocalKafka(
                settings.kafka_home,
                settings.kafka.local_port,
                settings.kafka.local_controller_port,
                settings.kafka.local_heap,
            )
            if kafka.pid() is not None:
                kafka = None  # started by `leadflow kafka start`: leave it running on exit
                bootstrap = f"127.0.0.1:{settings.kafka.local_port}"
            else:
                with console.status("starting the Kafka broker ..."):
                    kafka.start()
                bootstrap = kafka.bootstrap
                console.print(f"[green]✓[/] Kafka broker on {bootstrap} (log: {kafka.log_file})")
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap}
        children.append(spawn("worker", ["worker"], env, log_dir))
        children.append(spawn("serve", ["serve"], env, log_dir))
        base_url = f"http://{settings.http.host}:{settings.http.port}"
        with console.status("starting the worker and the HTTP server ..."):
            wait_healthy(base_url, children)
        console.print(f"[green]✓[/] worker and server up; HTTP on {base_url} (logs: {log_dir})")
        show_samples(base_url, console)
        console.print(
            f"\nThe stack is running. Try:\n  curl -X POST {base_url}/v1/leads/web "
            "-H 'Content-Type: application/json' "
            '-d \'{"name": "Ada", "email": " Ada@Example.COM "}\'\n'
            f"  curl '{base_url}/v1/leads?email=ada@example.com'\n"
            "Press Ctrl-C to stop everything."
        )
        _wait_for_children(children)
    except KeyboardInterrupt:
        pass  # Ctrl-C at any point, even during start-up, is the way to stop
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        console.print("stopping ...")
        for child in reversed(children):
            child.stop()
        if kafka is not None:
            kafka.stop()
        console.print("[green]✓[/] stopped")
    return 0


def show_samples(base_url: str, console: Console, timeout_s: float = 120.0) -> None:
    accepted: list[str] = []
    table = Table(title="sample posts to POST /v1/leads/web")
    for column in ("sample", "status", "answer"):
        table.add_column(column)
    for sample in load_samples():
        status, answer = post_sample(base_url, sample)
        if status == 202 and sample.get("expect_email"):
            accepted.append(sample["expect_email"])
        summary = answer.get("event_id") or f"{answer.get('error')}: {answer.get('message')}"
        table.add_row(sample["label"], str(status), summary)
    console.print(table)
    deadline = time.monotonic() + timeout_s
    leads: list[dict[str, Any]] = []
    with console.status("waiting for the leads to land in ClickHouse ..."):
        while time.monotonic() < deadline:
            _, answer = http_json("GET", f"{base_url}/v1/leads?limit=50")
            leads = answer.get("leads", [])
            # Every sample person exactly once (merges settled), each with an owner.
            emails = [lead["email"] for lead in leads]
            if sorted(emails) == sorted(set(accepted)) and all(lead["owner"] for lead in leads):
                break
            time.sleep(0.3)
    console.print(lead_table(leads, f"leads in ClickHouse ({len(leads)} shown)"))
    with console.status("reps at work: a webinar, a conversion, a demo, a lost deal ..."):
        play_rep_actions(
            base_url,
            {lead["email"]: lead["lead_id"] for lead in leads},
            deadline=time.monotonic() + timeout_s,
        )
    today = datetime.now(UTC).date()
    span = f"from={today}&to={today + timedelta(days=1)}"
    _, funnel = http_json("GET", f"{base_url}/v1/funnel?{span}")
    console.print(funnel_table(funnel, f"today's cohort funnel ({today})"))
    _, pipeline = http_json("GET", f"{base_url}/v1/pipeline")
    console.print(pipeline_table(pipeline))
    _, answer = http_json("GET", f"{base_url}/v1/dead-letters?limit=20")
    dead = Table(title="dead letters in ClickHouse")
    for column in ("stage", "reason", "message", "source_detail"):
        dead.add_column(column)
    for letter in answer.get("dead_letters", []):
        dead.add_row(
            *(str(letter.get(c) or "") for c in ("stage", "reason", "message", "source_detail"))
        )
    console.print(dead)


def play_rep_actions(base_url: str, lead_ids: dict[str, str], deadline: float) -> None:
    """Engagement and CRM events for the sample leads, so the funnel has depth to show."""
    now = datetime.now(UTC).isoformat()
    posts: list[tuple[str, dict[str, object]]] = [
        (
            "/v1/events/engagement",
            {
                "event_id": "sample-webinar-1",
                "kind": "webinar_attended",
                "occurred_at": now,
                "email": "foo@example.com",
            },
        )
    ]
    li_na = lead_ids.get("li.na@example.org")
    grace = lead_ids.get("grace@example.net")
    if li_na:
        posts += [
            (
                "/v1/events/crm",
                {
                    "event_id": "sample-convert-1",
                    "lead_id": li_na,
                    "action": "convert",
                    "amount": 80000,
                    "currency": "CNY",
                    "occurred_at": now,
                },
            ),
            (
                "/v1/events/crm",
                {
                    "event_id": "sample-demo-1",
                    "lead_id": li_na,
                    "action": "set_stage",
                    "stage": "demo",
                    "occurred_at": now,
                },
            ),
        ]
    if grace:
        posts.append(
            (
                "/v1/events/crm",
                {
                    "event_id": "sample-lost-1",
                    "lead_id": grace,
                    "action": "lost",
                    "reason": "chose a competitor",
                    "occurred_at": now,
                },
            )
        )
    for path, event in posts:
        http_json(
            "POST",
            base_url + path,
            json.dumps(event).encode(),
            {"Content-Type": "application/json"},
        )
    while time.monotonic() < deadline:
        _, pipeline = http_json("GET", f"{base_url}/v1/pipeline")
        stages = {row["stage"] for row in pipeline.get("rows", [])}
        if not li_na or "demo" in stages:
            return
        time.sleep(0.3)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _wait_for_children(children: list[Child]) -> None:
    """Sleep until Ctrl-C (KeyboardInterrupt) or until a child dies."""
    while True:
        for child in children:
            if child.process.poll() is not None:
                raise FatalError(
                    f"{child.name} exited with {child.process.returncode}; see {child.log_path}"
                )
        time.sleep(0.5)
