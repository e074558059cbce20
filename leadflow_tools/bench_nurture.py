"""`leadflow bench nurture`: the nurture agent's timers and the mailer, at scale.

On a broker of its own, one worker and a server running the mailer against a
local SMTP server (aiosmtpd, in this process), it enrols `enrolled` leads in a
5-step sequence (email, wait, email, wait, email) by publishing their
snapshots on `leads.identified`, as the lead step would, and reports:

- **timer firing lag**: for every email the stage emits, the time its record
  reached `nurture.sends` minus its due time; p50, p99 and max per step. The
  first email is due at enrolment (the tick after it); the later ones after
  their waits, so they show the timers alone;
- **enrolment**: how long the stage took to take in every snapshot;
- **sends per second** through the mailer and the SMTP server, over the
  measured window;
- **state bytes per enrolled lead**: the worker's `nurture_state` stores
  (RocksDB folders) over the number of leads, with every lead mid-sequence.

That is the burst: every lead enrolled at once, so their later emails fall
due as fast as the stage took them in (about 250 a second), while the mailer
sends the first ones on the same two cores.

With `fire_rate` (`--fire-rate R`), the steady case instead: the `enrolled`
leads go into a sequence that holds them (a 6-hour wait first, so all of
them stay pending in the timer index for the whole run), and once the stage
has taken them all in, a probe cohort of `R × 60 s` leads is enrolled at `R`
a second in the 5-step sequence. The lags of the probes' second and third
emails are the timers firing at `R` a second beside the held ones.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller
from rich.console import Console
from rich.table import Table

from leadflow.kafka_clients import consumer_lag, make_producer
from leadflow.rules import default_rules_dir
from leadflow_tools.bench_pipeline import Run, percentile, save_figures
from leadflow_tools.broker.local import LocalKafka, free_port
from schemas import LeadState, Touch
from schemas.nurture import NurtureEmail

WAIT = timedelta(minutes=2)  # between the emails: the timers the bench measures
STEPS = ("first", "second", "third")


HOLD = timedelta(hours=6)  # the held leads' first wait: longer than any run


def bench_rules(folder: Path, wait: timedelta = WAIT) -> Path:
    """The project's rule files, with a nurture file of two 5-step sequences: `bench`
    (email, wait, email, wait, email) for leads of source `bench`, and `held` (a long
    wait first) for leads of source `held`."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in default_rules_dir().glob("*.yaml"):
        if path.name != "nurture.yaml":
            shutil.copy(path, folder / path.name)
    text = {
        "en": {
            "subject": "Hello {first_name}",
            "body": "Hello {first_name}, see https://www.example.com/a",
        },
        "links": ["https://www.example.com/a"],
    }
    minutes = f"{wait.total_seconds() / 60:g}m"
    nurture = {
        "frequency_cap": {"max_emails": 10, "per": "7d"},
        "templates": {"note": text},
        "sequences": {
            "held": {
                "trigger": {"new_lead": {"sources": ["held"]}},
                "steps": [
                    {"name": "hold", "wait": f"{HOLD.total_seconds() / 3600:g}h"},
                    {"name": "held_first", "email": "note"},
                    {"name": "held_pause", "wait": minutes},
                    {"name": "held_second", "email": "note"},
                    {"name": "held_third", "email": "note"},
                ],
            },
            "bench": {
                "trigger": {"new_lead": {"sources": ["bench"]}},
                "steps": [
                    {"name": "first", "email": "note"},
                    {"name": "pause_1", "wait": minutes},
                    {"name": "second", "email": "note"},
                    {"name": "pause_2", "wait": minutes},
                    {"name": "third", "email": "note"},
                ],
            },
        },
    }
    (folder / "nurture.yaml").write_text(yaml.safe_dump(nurture), "utf-8")
    return folder


class Counter:
    """The SMTP server's side: when each message arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.arrivals.append(time.perf_counter())
        return "250 OK"


def snapshot(n: int, at: datetime, source: str = "bench") -> LeadState:
    return LeadState(
        lead_id=f"{source}-{n:07d}",
        first_seen=at,
        updated_at=at,
        email=f"person{n}@example.com",
        first_name=f"P{n}",
        consent=True,
        country="DE",
        stage="new",
        stage_at=at,
        touches=[Touch(event_id=f"e{n}", channel="web", source=source, medium="form", at=at)],
    )


async def publish_snapshots(
    run: Run, count: int, source: str = "bench", rate: float | None = None
) -> float:
    """`count` new leads of `source` on `leads.identified`, at `rate` a second (None: at
    once); the seconds it took."""
    producer = make_producer(run.kafka, run.broker.bootstrap, linger_ms=20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[Any] = []
        for n in range(count):
            if rate is not None and (ahead := started + n / rate - time.perf_counter()) > 0:
                await asyncio.gather(*pending)
                pending.clear()
                await asyncio.sleep(ahead)
            state = snapshot(n, datetime.now(UTC), source)
            value = state.model_dump_json(exclude_defaults=True).encode()
            pending.append(
                await producer.send(run.topics.leads_identified, value, key=state.lead_id.encode())
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def read_sends(run: Run, expected: int, timeout_s: float) -> list[tuple[str, float, float]]:
    """(step, lag ms, arrival on the topic as epoch s) of every email, until `expected`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=run.broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[tuple[str, float, float]] = []
    try:
        parts = [TopicPartition(run.topics.nurture_sends, p) for p in range(run.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for record in records:
                    email = NurtureEmail.model_validate_json(record.value or b"")
                    lag = record.timestamp - email.due_at.timestamp() * 1000
                    found.append((email.step, lag, record.timestamp / 1000))
    finally:
        await consumer.stop()
    return found


def _state_bytes(home: Path) -> int:
    total = 0
    for folder in home.rglob("*nurture_state*"):
        if folder.is_dir():
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def bench_nurture(
    enrolled: int,
    partitions: int,
    out: Path | None,
    console: Console,
    tick_s: float = 0.5,
    wait: timedelta = WAIT,
    fire_rate: float | None = None,
) -> dict[str, Any]:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line per command
    counter = Counter()
    smtp_port = free_port()
    smtp = Controller(counter, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    report: dict[str, Any] = {
        "enrolled": enrolled,
        "partitions": partitions,
        "tick_interval_s": tick_s,
        "wait_between_emails_s": wait.total_seconds(),
        "mode": "burst" if fire_rate is None else "steady",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="leadflow-bench-nurture-") as folder:
            home = Path(folder)
            broker = LocalKafka(home / "kafka", port=free_port(), controller_port=free_port())
            with console.status("starting a broker for the run ..."):
                broker.start()
            try:
                env = {
                    "WORKER_RULES_DIR": str(bench_rules(home / "rules", wait)),
                    "NURTURE_TICK_INTERVAL_S": str(tick_s),
                    "NURTURE_SMTP_HOST": "127.0.0.1",
                    "NURTURE_SMTP_PORT": str(smtp_port),
                }
                run = Run(broker, home / "run", "benchnurture.", partitions, env)
                with (
                    console.status("starting a worker and the mailer ..."),
                    run.running(1, roles="notifier"),
                ):
                    if fire_rate is None:
                        report.update(_measure(run, enrolled, counter, console, wait))
                    else:
                        figures = _measure_steady(run, enrolled, counter, console, wait, fire_rate)
                        report.update(figures)
            finally:
                broker.stop()
    finally:
        smtp.stop()
    _print(report, console)
    save_figures(report, out, console)
    return report


def _measure(
    run: Run, enrolled: int, counter: Counter, console: Console, wait: timedelta
) -> dict[str, Any]:
    with console.status(f"enrolling {enrolled:,} leads ..."):
        started = time.time()
        publish_s = asyncio.run(publish_snapshots(run, enrolled))
        firsts = asyncio.run(read_sends(run, enrolled, timeout_s=max(600.0, enrolled / 50)))
    enrolled_s = max(at for _, _, at in firsts) - started if firsts else float("nan")
    state_bytes = _state_bytes(run.home)  # every lead mid-sequence: two emails to go
    horizon = 2 * wait.total_seconds() + enrolled_s + 120
    with console.status(f"waiting for the timers: {3 * enrolled:,} emails in all ..."):
        emails = asyncio.run(read_sends(run, 3 * enrolled, timeout_s=horizon))
    figures: dict[str, Any] = {
        "publish_seconds": round(publish_s, 1),
        "enrolment_seconds": round(enrolled_s, 1),
        "enrolled_per_s": round(enrolled / enrolled_s) if enrolled_s else None,
        "state_bytes_per_enrolled_lead": round(state_bytes / enrolled),
    }
    return figures | _email_figures(emails, counter)


PROBE_S = 60  # the steady case enrols its probes over this long


def _measure_steady(
    run: Run, enrolled: int, counter: Counter, console: Console, wait: timedelta, rate: float
) -> dict[str, Any]:
    with console.status(f"enrolling {enrolled:,} leads that stay pending ..."):
        started = time.perf_counter()
        publish_s = asyncio.run(publish_snapshots(run, enrolled, "held"))
        enrolled_s = _taken_in(run, timeout_s=max(600.0, enrolled / 50)) - started
    state_bytes = _state_bytes(run.home)  # every held lead pending, nothing else yet
    probes = int(rate * PROBE_S)
    with console.status(f"{probes:,} probe leads at {rate:g}/s beside {enrolled:,} pending ..."):
        asyncio.run(publish_snapshots(run, probes, "bench", rate))
        horizon = 2 * wait.total_seconds() + 180
        emails = asyncio.run(read_sends(run, 3 * probes, timeout_s=horizon))
    figures: dict[str, Any] = {
        "fire_rate_per_s": rate,
        "probes": probes,
        "held_pending": enrolled,
        "publish_seconds": round(publish_s, 1),
        "enrolment_seconds": round(enrolled_s, 1),
        "enrolled_per_s": round(enrolled / enrolled_s) if enrolled_s else None,
        "state_bytes_per_enrolled_lead": round(state_bytes / enrolled),
    }
    return figures | _email_figures(emails, counter)


def _taken_in(run: Run, timeout_s: float) -> float:
    """When the worker has committed past every snapshot on `leads.identified`."""
    group = {f"{run.prefix}leadflow": [run.topics.leads_identified]}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not asyncio.run(consumer_lag(run.kafka, run.broker.bootstrap, group)):
            return time.perf_counter()
        time.sleep(0.5)
    raise RuntimeError("the nurture agent did not take in every snapshot")


def _email_figures(emails: list[tuple[str, float, float]], counter: Counter) -> dict[str, Any]:
    figures: dict[str, Any] = {"emails_emitted": len(emails), "lag_ms": {}}
    for step in STEPS:
        lags = [lag for name, lag, _ in emails if name == step]
        figures["lag_ms"][step] = {
            "emails": len(lags),
            "p50": round(percentile(lags, 0.5)),
            "p99": round(percentile(lags, 0.99)),
            "max": round(max(lags)) if lags else None,
            "mean": round(statistics.fmean(lags)) if lags else None,
        }
    arrivals = sorted(counter.arrivals)
    if len(arrivals) >= 2:
        window = arrivals[-1] - arrivals[0]
        figures["smtp_sends"] = len(arrivals)
        figures["smtp_sends_per_s"] = round((len(arrivals) - 1) / window, 1) if window else None
    return figures


def _print(report: dict[str, Any], console: Console) -> None:
    title = f"nurture: {report['enrolled']:,} enrolled leads, 5-step sequence"
    if report.get("mode") == "steady":
        title = (
            f"nurture: {report['probes']:,} probe leads firing at {report['fire_rate_per_s']:g}/s "
            f"beside {report['held_pending']:,} pending"
        )
    table = Table(title=title)
    for column in ("email", "emitted", "lag p50 ms", "lag p99 ms", "lag max ms"):
        table.add_column(column, justify="left" if column == "email" else "right")
    for step, lag in report.get("lag_ms", {}).items():
        table.add_row(step, f"{lag['emails']:,}", str(lag["p50"]), str(lag["p99"]), str(lag["max"]))
    console.print(table)
    console.print(
        f"enrolment {report.get('enrolment_seconds')} s "
        f"({report.get('enrolled_per_s')} leads/s); "
        f"state {report.get('state_bytes_per_enrolled_lead')} bytes per enrolled lead; "
        f"SMTP {report.get('smtp_sends_per_s')} sends/s over {report.get('smtp_sends')} emails"
    )
