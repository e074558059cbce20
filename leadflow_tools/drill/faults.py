"""Fault drills: a load with a ledger, one fault at a time, and a reconciliation at the end.

The drill runs its own broker (so it may kill it) and the real leadflow
processes. A load thread posts leads the way a careful client does: every
post carries an Idempotency-Key and is retried with the same key until it
is acknowledged (a 503 or a refused connection is retried; a 4xx is a final
refusal). The ledger keeps every acknowledged event id and every dead-letter
id the senders were given, per fault.

After each fault the drill waits for quiet (every consumer group's committed
offsets at the log end) and records the recovery time. At the end it stops
the processes and reconciles in a separate process that opens the embedded
ClickHouse (`leadflow_tools.drill.reconcile`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from leadflow.auth import env_line, new_key
from leadflow.kafka_clients import consumer_lag, make_producer
from leadflow.normalize import lead_id_for
from leadflow.settings import KafkaSettings
from leadflow.topics import Topics
from leadflow_tools.broker.local import LocalKafka, free_port, pid_alive
from leadflow_tools.stack import Child, spawn, start_processes

QUIET_TIMEOUT_S = 120.0


@dataclass
class Ledger:
    acknowledged: set[str] = field(default_factory=set)
    # A rep's `lost` per lead that existed before the fault's load began:
    # acknowledged CRM event id -> (lead id, the action's unique reason).
    crm: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Acknowledged new leads, in order: the next runs' CRM actions act on them.
    created: list[str] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    # (sent, answered, status) of posts answered while the broker was down
    during_outage: list[int] = field(default_factory=list)
    unacknowledged: int = 0


@dataclass
class DrillStack:
    """The drill's worker and server, and the one key its clients send."""

    base_url: str
    children: list[Child]
    key: str

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {c.name} ---\n{c.log_path.read_text(errors='replace')[-4000:]}"
            for c in self.children
        )


class Load:
    """Posts leads from a thread at about `rate` a second until stopped, and between
    them a rep's `lost` for one of the `known` leads (created and processed before
    this load began), so a fault also meets CRM actions on their way to the lead."""

    def __init__(
        self,
        base_url: str,
        key: str,
        tag: str,
        ledger: Ledger,
        rng: random.Random,
        known: list[str],
        rate: float = 40.0,
    ) -> None:
        self.base_url = base_url
        self.key = key
        self.tag = tag
        self.ledger = ledger
        self.rng = rng
        self.known = known
        self.rate = rate
        self.broker_down = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{tag}", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def _post(self, path: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(  # noqa: S310 - loopback URL built here
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "Authorization": f"Bearer {self.key}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:  # an HTTPError holds the connection until closed
                return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            return 0, {}

    def _deliver(self, body: dict[str, Any], key: str, path: str = "/v1/leads/web") -> str | None:
        """Until acknowledged or refused, like a client that retries with the same key;
        the acknowledged event id."""
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            down_at_send = self.broker_down.is_set()
            status, answer = self._post(path, body, key)
            self.ledger.statuses[str(status)] += 1
            if down_at_send and self.broker_down.is_set():
                self.ledger.during_outage.append(status)
            if status == 202:
                event_id: str = answer["event_id"]
                return event_id
            if 400 <= status < 500 and status != 429:
                self.ledger.rejected.add(answer["dead_letter_id"])
                return None
            time.sleep(0.3)
        self.ledger.unacknowledged += 1
        return None

    def _lose_one_known(self, n: int) -> None:
        """A rep marks a lead from an earlier run lost: each lead at most once."""
        if not self.known:
            return
        lead_id = lead_id_for(self.known.pop(self.rng.randrange(len(self.known))))
        reason = f"chaos {self.tag}-{n}"
        body = {
            "event_id": f"crm-{self.tag}-{n}",
            "lead_id": lead_id,
            "action": "lost",
            "occurred_at": datetime.now(UTC).isoformat(),
            "reason": reason,
        }
        event_id = self._deliver(body, body["event_id"], "/v1/events/crm")
        if event_id is not None:
            self.ledger.crm[event_id] = (lead_id, reason)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            key = f"{self.tag}-{n}"
            if n % 25 == 0:  # a poison post among good ones
                body = {"name": f"Bad {n}", "email": f"not-an-email-{n}"}
            else:
                body = {
                    "name": f"Chaos Lead {n}",
                    # A domain each: one shared corporate domain would make the fuzzy-name
                    # rule merge "Chaos Lead 1" and "Chaos Lead 2" into one person.
                    "email": f"lead@{key}.example.com",
                    "utm_source": self.rng.choice(["google", "baidu", "linkedin"]),
                }
            # Every tenth is delivered three times, as webhooks are.
            for _ in range(3 if n % 10 == 0 else 1):
                event_id = self._deliver(body, key)
                if event_id is not None:
                    self.ledger.acknowledged.add(event_id)
            if event_id is not None and n % 25 != 0:
                self.ledger.created.append(event_id)
            if n % 2 == 0:
                self._lose_one_known(n)
            time.sleep(1 / self.rate)


@dataclass
class Outcome:
    fault: str
    runs: int
    seeds: list[int]
    recovery_s: list[float]
    ledger: Ledger
    stalls: int = 0
    stalled: list[str] = field(default_factory=list)  # what was behind, per stall


class Drill:
    """One broker, one stack, faults in sequence; `reconcile()` at the end."""

    def __init__(self, home: Path, seed: int) -> None:
        self.home = home
        self.rng = random.Random(seed)
        self.broker = LocalKafka(home / "kafka", port=free_port(), controller_port=free_port())
        self.stack: DrillStack | None = None
        self.prefix = "chaos."
        self.outcomes: list[Outcome] = []
        # Leads created and processed by earlier runs, not yet acted on by a rep.
        self.known: list[str] = []

    def __enter__(self) -> Drill:
        self.broker.start()
        # One client address sends everything here: lift the per-address rate limit.
        env = {
            "WEB_RATE_PER_S": "100000",
            "WEB_RATE_BURST": "100000",
            "HTTP_WRITE_RATE_PER_S": "100000",
            "HTTP_WRITE_RATE_BURST": "100000",
        }
        # One key for the load's posts: the web form's and the rep's scopes.
        key, entry = new_key("fault drill", ("ingest", "crm"))
        env["AUTH_KEYS"] = env_line([entry]).partition("=")[2]
        base_url, children = start_processes(
            self.broker.bootstrap, self.prefix, self.home / "stack", {**os.environ, **env}
        )
        self.stack = DrillStack(base_url, children, key)
        return self

    def __exit__(self, *_: object) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.broker.stop()

    @property
    def running(self) -> DrillStack:
        assert self.stack is not None
        return self.stack

    # --- processes -------------------------------------------------------------------
    def _child(self, name: str) -> Any:
        return next(c for c in self.running.children if c.name == name)

    def kill(self, name: str, sig: int) -> None:
        child = self._child(name)
        os.kill(child.process.pid, sig)
        child.process.wait(timeout=60)

    def respawn(self, name: str, **env: str) -> None:
        stack = self.running
        index = next(i for i, c in enumerate(stack.children) if c.name == name)
        child = stack.children[index]
        child.stop()
        stack.children[index] = spawn(name, child.args, {**child.env, **env}, child.log_path.parent)
        if name == "serve":
            self._wait_http()

    def _wait_http(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.running.base_url}/healthz", timeout=2):  # noqa: S310
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        raise AssertionError(f"serve did not come back\n{self.running.logs()}")

    # --- quiet -------------------------------------------------------------------------
    def groups(self) -> list[str]:
        topics = Topics(self.prefix)
        return [f"{self.prefix}leadflow", topics.group("clickhouse-writer")]

    async def _lag(self) -> dict[str, int]:
        """What the worker and writer groups have not committed past, by partition."""
        from sinks.clickhouse.writer import routes

        t = Topics(self.prefix)
        groups = {
            f"{self.prefix}leadflow": t.worker_sources(),
            t.group("clickhouse-writer"): [*routes(t)],
        }
        return await consumer_lag(KafkaSettings(), self.broker.bootstrap, groups)

    def wait_quiet(self, since: float) -> float:
        """Seconds from `since` until every group has committed up to the log end twice."""
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        streak = 0
        behind: dict[str, int] = {}
        while time.monotonic() < deadline:
            try:
                behind = asyncio.run(self._lag())
            except Exception as exc:  # the broker may be restarting
                behind = {"unknown": 1, repr(exc): 1}
            streak = streak + 1 if not behind else 0
            if streak >= 3:
                return round(time.monotonic() - since, 1)
            time.sleep(1.0)
        raise AssertionError(f"no quiet after {QUIET_TIMEOUT_S}s: {behind}\n{self.running.logs()}")

    # --- faults ------------------------------------------------------------------------
    def run(self, fault: str, inject: Callable[[Load], None], runs: int = 1) -> Outcome:
        ledger = Ledger()
        outcome = Outcome(fault, runs, [], [], ledger)
        for run in range(runs):
            seed = self.rng.randrange(1 << 30)
            outcome.seeds.append(seed)
            rng = random.Random(seed)
            tag = f"f{len(self.outcomes)}-{run}-{seed}"  # a valid email local part
            created_before = len(ledger.created)
            with Load(
                self.running.base_url, self.running.key, tag, ledger, rng, self.known
            ) as load:
                time.sleep(1.5 + rng.random() * 2)  # mid-load, at a seeded moment
                inject(load)
                ended = time.monotonic()
                time.sleep(2)
            try:
                outcome.recovery_s.append(self.wait_quiet(ended))
            except AssertionError as exc:
                # A stall: counted and reported; a clean worker restart heals it so the
                # drill can go on, and the reconciliation still counts every id.
                outcome.stalls += 1
                outcome.stalled.append(f"run {run} (seed {seed}): {str(exc).splitlines()[0]}")
                # SIGUSR1: the worker writes every thread's stack and asyncio task to its log.
                worker = next(c for c in self.running.children if c.name == "worker")
                os.kill(worker.process.pid, signal.SIGUSR1)
                time.sleep(2)
                self.respawn("worker")
                outcome.recovery_s.append(self.wait_quiet(ended))
            # Processed now (every group is at the log end): later runs may act on them.
            self.known.extend(ledger.created[created_before:])
        self.outcomes.append(outcome)
        return outcome

    def worker_kill9(self, _: Load) -> None:
        self.kill("worker", signal.SIGKILL)
        self.respawn("worker")

    def worker_sigterm(self, _: Load) -> None:
        self.kill("worker", signal.SIGTERM)
        self.respawn("worker")

    def writer_kill9(self, _: Load) -> None:
        self.kill("serve", signal.SIGKILL)
        self.respawn("serve")

    def clickhouse_down(self, seconds: float) -> Callable[[Load], None]:
        def inject(_: Load) -> None:
            self.respawn("serve", CLICKHOUSE_FAULT_FAIL_S=str(seconds))
            time.sleep(seconds)
            # Back to normal for the next fault (the failing window has ended anyway).
            self.respawn("serve", CLICKHOUSE_FAULT_FAIL_S="0")

        return inject

    def broker_kill9(self, load: Load) -> None:
        pid = self.broker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
        # The outage the ledger checks: from a dead broker to the moment it restarts.
        load.broker_down.set()
        time.sleep(5)
        load.broker_down.clear()
        self.broker.start()

    def broker_sigstop(self, _: Load) -> None:
        pid = self.broker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        time.sleep(8)
        os.kill(pid, signal.SIGCONT)

    def poison_on_raw(self, _: Load) -> None:
        async def send() -> None:
            producer = make_producer(KafkaSettings(), self.broker.bootstrap)
            await producer.start()
            try:
                for n in range(3):
                    await producer.send_and_wait(
                        Topics(self.prefix).leads_raw, b"\x00 poison %d" % n, key=b"poison"
                    )
            finally:
                await producer.stop()

        asyncio.run(send())

    def writer_group_reset(self, _: Load) -> None:
        """Stop the writer, move its group back to the start of every topic, start it."""
        self.kill("serve", signal.SIGTERM)

        async def rewind() -> None:
            from sinks.clickhouse.writer import routes

            topics = Topics(self.prefix)
            consumer = AIOKafkaConsumer(
                *routes(topics),
                bootstrap_servers=self.broker.bootstrap,
                group_id=topics.group("clickhouse-writer"),
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                while not consumer.assignment():
                    await consumer.getmany(timeout_ms=200)
                parts = list(consumer.assignment())
                starts = await consumer.beginning_offsets(parts)
                await consumer.commit(dict(starts.items()))
            finally:
                await consumer.stop()

        asyncio.run(rewind())
        self.respawn("serve")

    def rebalance(self, _: Load) -> None:
        """A second worker joins, works a while, and leaves."""
        stack = self.running
        worker = next(c for c in stack.children if c.name == "worker")
        extra = spawn(
            "worker2",
            worker.args,
            {**worker.env, "LEADFLOW_DATA_DIR": str(self.home / "stack" / "worker2")},
            worker.log_path.parent,
        )
        try:
            time.sleep(12)
        finally:
            extra.stop()

    # --- reconciliation ------------------------------------------------------------------
    def reconcile(self) -> list[dict[str, Any]]:
        self.running.stop()
        ledgers = {
            o.fault: {
                "acknowledged": sorted(o.ledger.acknowledged),
                "rejected": sorted(o.ledger.rejected),
                "crm": o.ledger.crm,
            }
            for o in self.outcomes
        }
        path = self.home / "ledger.json"
        path.write_text(json.dumps(ledgers))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "leadflow_tools.drill.reconcile",
                str(self.home / "stack" / "clickhouse"),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        found: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        rows = []
        for outcome in self.outcomes:
            checked = found[outcome.fault]
            rows.append(
                {
                    "fault": outcome.fault,
                    "runs": outcome.runs,
                    "seeds": outcome.seeds,
                    "acknowledged": len(outcome.ledger.acknowledged),
                    "rejected": len(outcome.ledger.rejected),
                    "lost": checked["lost"],
                    "doubled": checked["doubled"],
                    "rejected_missing": checked["rejected_missing"],
                    "backwards": checked["backwards"],
                    "crm_acknowledged": len(outcome.ledger.crm),
                    "crm_applied": checked["crm_applied"],
                    "crm_refused": checked["crm_refused"],
                    "crm_lost": checked["crm_lost"],
                    "crm_doubled": checked["crm_doubled"],
                    "answered_2xx_while_broker_down": sum(
                        1 for s in outcome.ledger.during_outage if 200 <= s < 300
                    ),
                    "unacknowledged": outcome.ledger.unacknowledged,
                    "recovery_s_max": max(outcome.recovery_s),
                    "stalls": outcome.stalls,
                    "stalled": outcome.stalled,
                    "statuses": dict(outcome.ledger.statuses),
                }
            )
        return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| fault | runs | ids acknowledged | lost | doubled "
        "| rejected → dead letters | CRM actions applied / refused / lost / doubled "
        "| recovery (max) | stalls |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        kept = r["rejected"] - r["rejected_missing"]
        refused = sum(r["crm_refused"].values())
        crm = (
            f"{r['crm_applied']}/{r['crm_acknowledged']} / {refused} / {r['crm_lost']} / "
            f"{r['crm_doubled']}"
        )
        lines.append(
            f"| {r['fault']} | {r['runs']} | {r['acknowledged']:,} | {r['lost']} | "
            f"{r['doubled']} | {kept}/{r['rejected']} | {crm} | {r['recovery_s_max']} s | "
            f"{r['stalls']} |"
        )
    return "\n".join(lines)
