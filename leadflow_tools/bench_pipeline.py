"""`leadflow bench pipeline`: leads/s from `leads.raw` to ClickHouse, latency, state, scale-out.

Runs on a broker of its own and the real processes (worker(s) and a
`serve --roles sink,query`), on topics with `--partitions` partitions:

1. **Throughput**: the generated envelopes (every channel, about 30% people
   coming back through another channel, Chinese and English names, UTM
   mixes) are published to `leads.raw`; the time until every consumer group
   has committed to the log end gives leads/s with every step on. Beside it,
   in the same run, a bare aiokafka consumer drains the same topic.
2. **Scale-out**: the same with 2 workers (fresh topics and state).
   `--frames on,off` runs each worker count twice, with the stream core's
   own topics carrying frames of records (streams/frames.py) and with every
   record a message of its own; the Kafka messages written per lead (every
   topic but `leads.raw`, changelogs included) are counted from the log ends.
   `--learning on,off` runs each again with the learned score in use
   (a model that learned 200 outcomes before the clock starts, and one won
   or lost outcome per 10 envelopes published with them, so the learner
   trains, publishes versions and open leads are re-scored during the run)
   and with it switched off in the rules (`model.enabled: false`).
3. **Latency**: after 5 s of warm-up at the same rate (drained, not counted),
   envelopes published at a steady offered rate, stamped when
   sent; a lead's latency is its first row's `inserted_at` minus that stamp.
4. **State**: the worker's peak RSS and the size of its RocksDB folder,
   scaled to 1,000,000 distinct leads.

Figures are printed and written as JSON; nothing is asserted on time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from leadflow.auth import env_line, new_key
from leadflow.errors import BadRecordError
from leadflow.kafka_clients import consumer_lag, ensure_topics, make_producer
from leadflow.normalize import envelope_bytes, normalize_lead
from leadflow.rules import default_rules_dir, load_rules
from leadflow.settings import KafkaSettings, Settings
from leadflow.topics import Topics
from leadflow_app.client import http_json
from leadflow_tools.bench_ingest import cpu_percent, cpu_snapshot
from leadflow_tools.broker.local import LocalKafka, free_port
from leadflow_tools.oracle import differences, expected_survivors
from leadflow_tools.samples.generate import generate
from leadflow_tools.stack import Child, spawn, wait_healthy
from schemas import RawLead
from sinks.clickhouse.client import ClickHouse


def _vm_kib(pid: int, field: str) -> int:
    """VmHWM (peak) or VmRSS of a process, in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# Past this many envelopes the oracle is not worked out: it compares every pair of names
# under a company or domain key, which the generated sample fills by the thousand.
ORACLE_MAX_ENVELOPES = 20_000


def as_published(envelope: RawLead, region: str) -> bytes:
    """The bytes an adapter publishes: the web form and the upload check each lead before
    answering and send it normalized (normalize once); the social and API paths do not."""
    if envelope.channel in ("web", "tradeshow"):
        try:
            lead = normalize_lead(envelope, default_region=region)
        except BadRecordError:
            pass  # refused by the adapter in real life; the stream dead-letters it here
        else:
            return envelope_bytes(envelope, lead, default_region=region)
    return envelope.model_dump_json().encode()


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]


class Run:
    """A broker-backed stack on its own topics: `workers` workers and one sink server."""

    def __init__(
        self,
        broker: LocalKafka,
        home: Path,
        prefix: str,
        partitions: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.home = home
        self.prefix = prefix
        self.partitions = partitions
        self.topics = Topics(prefix)
        self.kafka = KafkaSettings(topic_prefix=prefix, partitions=partitions)
        self.region = Settings().normalize.default_phone_region
        self.port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": broker.bootstrap,
            "KAFKA_TOPIC_PREFIX": prefix,
            "KAFKA_PARTITIONS": str(partitions),
            "LEADFLOW_DATA_DIR": str(home),
            "HTTP_PORT": str(self.port),
            "CLICKHOUSE_FLUSH_INTERVAL_S": "0.2",
            **(extra_env or {}),
        }
        self.env.pop("CLICKHOUSE_DSN", None)
        # A key of its own for reading back (the server refuses every call without one).
        self.key, entry = new_key("bench", ["read:pii"])
        self.env["AUTH_KEYS"] = env_line([entry]).partition("=")[2]
        self.children: list[Child] = []
        # The learner's input too: a run that feeds it outcomes is drained once it
        # learned them.
        self.sources = [*self.topics.worker_sources(), self.topics.scoring_outcomes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self, workers: int, roles: str = "sink,query") -> Iterator[Run]:
        asyncio.run(ensure_topics(self.kafka, self.broker.bootstrap))
        logs = self.home / "logs"
        try:
            for n in range(1, workers + 1):
                env = {**self.env, "LEADFLOW_DATA_DIR": str(self.home / f"worker{n}")}
                self.children.append(spawn(f"worker{n}", ["worker"], env, logs))
            serve = spawn("serve", ["serve", "--roles", roles], self.env, logs)
            self.children.append(serve)
            wait_healthy(self.base_url, self.children, timeout_s=120)
            self.wait_workers_ready(workers)
            yield self
        finally:
            for child in reversed(self.children):
                child.stop()

    def wait_workers_ready(self, workers: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = sum(
                "Worker]: Ready" in c.log_path.read_text(errors="replace")
                for c in self.children
                if c.name.startswith("worker")
            )
            if ready >= workers:
                time.sleep(2)  # let the group settle after the last join
                return
            time.sleep(0.5)
        raise RuntimeError("workers did not become ready")

    async def publish(self, envelopes: list[RawLead], rate: float) -> float:
        """Publish every envelope at `rate` per second, stamped and normalized as an adapter
        does when it takes it; seconds it took."""

        async def paced(started: float) -> AsyncIterator[tuple[bytes, bytes]]:
            for n, envelope in enumerate(envelopes):
                if (wait := started + n / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                envelope = envelope.model_copy(update={"received_at": datetime.now(UTC)})
                yield envelope.event_id.encode(), as_published(envelope, self.region)

        return await self._send(paced)

    async def publish_prepared(self, payloads: list[tuple[bytes, bytes]]) -> float:
        """Publish (key, value) pairs made before the clock started; seconds it took."""

        async def ready(_: float) -> AsyncIterator[tuple[bytes, bytes]]:
            for payload in payloads:
                yield payload

        return await self._send(ready)

    async def publish_outcomes(self, values: list[bytes]) -> float:
        """Won and lost outcomes on `scoring.outcomes`, under the learner's one key."""

        async def ready(_: float) -> AsyncIterator[tuple[bytes, bytes]]:
            for value in values:
                yield b"model", value

        return await self._send(ready, self.topics.scoring_outcomes)

    async def _send(
        self,
        source: Callable[[float], AsyncIterator[tuple[bytes, bytes]]],
        topic: str | None = None,
    ) -> float:
        producer = make_producer(self.kafka, self.broker.bootstrap, linger_ms=20)
        await producer.start()
        started = time.perf_counter()
        try:
            pending = []
            async for key, value in source(started):
                pending.append(await producer.send(topic or self.topics.leads_raw, value, key=key))
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return time.perf_counter() - started

    async def lag(self) -> int:
        """Messages not yet committed past, over the worker and writer groups."""
        from sinks.clickhouse.writer import routes

        groups = {
            f"{self.prefix}leadflow": self.sources,
            self.topics.group("clickhouse-writer"): list(routes(self.topics)),
        }
        return sum((await consumer_lag(self.kafka, self.broker.bootstrap, groups)).values())

    def wait_drained(
        self, timeout_s: float = 1200, on_lag: Callable[[int], None] | None = None
    ) -> float:
        """Wait until every group committed to the log end (twice in a row); the time.
        `on_lag` hears how many messages are still behind at each look."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            behind = asyncio.run(self.lag())
            if on_lag is not None:
                on_lag(behind)
            streak = streak + 1 if behind == 0 else 0
            if streak >= 2:
                return time.perf_counter()
            time.sleep(0.5)
        raise RuntimeError("the pipeline did not drain")

    async def messages_written(self) -> dict[str, int]:
        """Messages in each of the run's topics (log end offsets summed over partitions)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        parts = [
            TopicPartition(topic["topic"], part["partition"])
            for topic in described
            for part in topic["partitions"]
        ]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.broker.bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            ends = await consumer.end_offsets(parts) if parts else {}
        finally:
            await consumer.stop()
        written: dict[str, int] = {}
        for tp, end in ends.items():
            name = tp.topic[len(self.prefix) :]
            written[name] = written.get(name, 0) + end
        return written

    def roles(self) -> dict[str, list[int]]:
        """The processes whose CPU a run reports: workers, the sink server, the broker."""
        return {
            "worker": [c.process.pid for c in self.children if "worker" in c.name],
            "serve": [c.process.pid for c in self.children if c.name == "serve"],
            "broker": [pid] if (pid := self.broker.pid()) else [],
            "bench": [os.getpid()],
        }

    def worker_peaks(self) -> tuple[float, float]:
        """(peak RSS MB of the largest worker, RocksDB MB over all workers)."""
        rss = max(_vm_kib(c.process.pid, "VmHWM") for c in self.children if "worker" in c.name)
        state = sum(
            _folder_bytes(self.home / d) for d in os.listdir(self.home) if d.startswith("worker")
        )
        return rss / 1024, state / 1e6

    def people(self, limit: int = 10_000) -> dict[str, set[str]] | None:
        """Each current lead with the event ids of its touches; None past `limit` leads
        (the query API answers at most that many at once)."""
        status, answer = http_json(
            "GET",
            f"{self.base_url}/v1/leads?limit={limit}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout_s=120,
        )
        if status != 200 or answer["total"] > limit:
            return None
        return {lead["lead_id"]: set(lead["touch_event_ids"]) for lead in answer["leads"]}

    def leads(self) -> int:
        status, answer = http_json(
            "GET",
            f"{self.base_url}/v1/leads?limit=1",
            headers={"Authorization": f"Bearer {self.key}"},
        )
        return int(answer["total"]) if status == 200 else -1


async def bare_drain(bootstrap: str, topic: str, partitions: int, expected: int) -> float:
    """Seconds a bare consumer takes to read `expected` records of `topic` from the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # (asking end_offsets before the first fetch
    )  # makes a later seek_to_beginning fetch nothing in aiokafka 0.14)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        started = time.perf_counter()
        remaining = expected
        deadline = started + 300
        while remaining > 0 and time.perf_counter() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            remaining -= sum(len(records) for records in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def _latency_sql(db: str, since: datetime) -> str:
    return (
        "SELECT toFloat64(dateDiff('millisecond', first_seen, min(inserted_at))) AS ms "
        f"FROM {db}.leads WHERE first_seen >= toDateTime64('{since:%Y-%m-%d %H:%M:%S.%f}', 3, "
        "'UTC') GROUP BY lead_id, first_seen"
    )


WARM_OUTCOMES = 200  # learned before the clock: the model is in use from the first lead
LEADS_PER_OUTCOME = 10  # during the run, one won or lost outcome per this many envelopes


def learning_rules(folder: Path, learned: bool) -> Path:
    """The project's rule files, with the learned score on (as shipped) or off."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in default_rules_dir().glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    if not learned:
        scoring = yaml.safe_load((folder / "scoring.yaml").read_text("utf-8"))
        scoring.setdefault("model", {})["enabled"] = False
        text = yaml.safe_dump(scoring, allow_unicode=True, sort_keys=False)
        (folder / "scoring.yaml").write_text(text, "utf-8")
    return folder


def _publish_run(run: Run, payloads: list[tuple[bytes, bytes]], outcomes: list[bytes]) -> float:
    """The envelopes, and beside them the outcomes; seconds the envelopes took."""

    async def both() -> float:
        published, _ = await asyncio.gather(
            run.publish_prepared(payloads), run.publish_outcomes(outcomes)
        )
        return published

    return asyncio.run(both())


def bench_pipeline(
    persons: int,
    partitions: int,
    latency_rate: float,
    latency_s: float,
    out: Path | None,
    console: Console,
    worker_counts: tuple[int, ...] = (1, 2),
    frame_modes: tuple[bool, ...] = (True,),
    learning_modes: tuple[bool, ...] = (True,),
) -> dict[str, Any]:
    sample = generate(persons, duplicate_share=0.3, seed=11)
    envelopes = sample.envelopes
    report: dict[str, Any] = {
        "persons": persons,
        "envelopes": len(envelopes),
        "partitions": partitions,
        "runs": [],
    }
    region = Settings().normalize.default_phone_region
    expected: dict[str, set[str]] | None = None
    if len(envelopes) <= ORACLE_MAX_ENVELOPES:
        with console.status("the oracle works out the people ..."):
            expected = expected_survivors(envelopes, load_rules(), region)
    report["oracle_people"] = None if expected is None else len(expected)
    with console.status(f"encoding {len(envelopes):,} envelopes as the adapters publish them ..."):
        # Before the clock starts: the adapters' work is not the stream's.
        payloads = [(e.event_id.encode(), as_published(e, region)) for e in envelopes]
    # The learner's lessons, from the scoring bench's history (its module uses this one's).
    from leadflow_tools.bench_scoring import outcome_values

    outcomes = outcome_values(WARM_OUTCOMES + len(envelopes) // LEADS_PER_OUTCOME)
    with tempfile.TemporaryDirectory(prefix="leadflow-bench-pipeline-") as folder:
        home = Path(folder)
        broker = LocalKafka(home / "kafka", port=free_port(), controller_port=free_port())
        with console.status("starting a broker for the run ..."):
            broker.start()
        try:
            runs = product(worker_counts, frame_modes, learning_modes)
            for workers, framed, learned in runs:
                mode = ("frames" if framed else "no-frames") + ("" if learned else "-rules")
                env = {"WORKER_RULES_DIR": str(learning_rules(home / f"rules-{mode}", learned))}
                if not framed:
                    env["WORKER_FRAME_MAX_BYTES"] = "0"
                run = Run(
                    broker, home / f"w{workers}-{mode}", f"bench{workers}{mode}.", partitions, env
                )
                with console.status(f"{workers} worker(s): starting ..."), run.running(workers):
                    if learned:
                        with console.status("the model learns its first outcomes ..."):
                            asyncio.run(run.publish_outcomes(outcomes[:WARM_OUTCOMES]))
                            run.wait_drained()
                    during = outcomes[WARM_OUTCOMES:] if learned else []
                    started = time.perf_counter()
                    cpu_before = cpu_snapshot(run.roles())
                    title = f"{workers} worker(s): {len(envelopes):,} leads"
                    with console.status(f"{title} ...") as status:
                        publish_s = _publish_run(run, payloads, during)

                        def show(
                            behind: int,
                            title: str = title,
                            status: Any = status,
                            started: float = started,
                        ) -> None:
                            spent = time.perf_counter() - started
                            status.update(f"{title}: {behind:,} messages behind, {spent:,.0f} s")

                        finished = run.wait_drained(
                            timeout_s=max(1200.0, len(envelopes) / 50), on_lag=show
                        )
                    elapsed = finished - started
                    cpu_after = cpu_snapshot(run.roles())
                    rss_mb, state_mb = run.worker_peaks()
                    written = asyncio.run(run.messages_written())
                    written.pop("leads.raw", None)
                    people = run.leads()
                    found = run.people()
                    problems = (
                        None
                        if found is None or expected is None
                        else differences(expected, found, shown=10**9)
                    )
                    bare_s = asyncio.run(
                        bare_drain(
                            broker.bootstrap, run.topics.leads_raw, partitions, len(envelopes)
                        )
                    )
                    entry = {
                        "workers": workers,
                        "frames": framed,
                        "learning": learned,
                        "outcomes_during_run": len(during),
                        "messages_per_lead": round(sum(written.values()) / len(envelopes), 2),
                        "messages_by_topic": written,
                        "leads_per_s": round(len(envelopes) / elapsed),
                        "seconds": round(elapsed, 1),
                        "publish_seconds": round(publish_s, 1),
                        "bare_consumer_leads_per_s": round(len(envelopes) / bare_s),
                        "ratio_to_bare": round(bare_s / elapsed, 4),
                        "distinct_leads": people,
                        "worker_peak_rss_mb": round(rss_mb, 1),
                        # What each party spent per lead, and its share of a core: the
                        # worker's is its own ceiling, whoever else runs.
                        "cpu_ms_per_lead": {
                            role: round(
                                1000 * (cpu_after[role] - cpu_before[role]) / len(envelopes), 2
                            )
                            for role in ("worker", "serve", "broker", "bench")
                        },
                        "cpu_percent": cpu_percent(
                            cpu_before, cpu_after, elapsed, os.cpu_count() or 1
                        ),
                        "state_mb": round(state_mb, 1),
                        "state_mb_per_million_leads": round(state_mb * 1e6 / max(people, 1), 1),
                        # None: more leads than one query returns, not checked.
                        "oracle_differences": None if problems is None else len(problems),
                    }
                    report["runs"].append(entry)
                    console.print(entry)
                    for problem in (problems or [])[:10]:
                        console.print(f"[red]differs from the oracle:[/] {problem}")
            run = Run(broker, home / "latency", "latency.", partitions)
            count = int(latency_rate * latency_s)
            warm = max(int(latency_rate * 5), 20)  # 5 s at the rate, before measuring
            steady = generate(count + warm, duplicate_share=0.0, seed=12).envelopes
            label = f"latency run: {latency_rate:,.0f} leads/s for {latency_s:.0f} s ..."
            with console.status(label), run.running(1):
                # A worker's first batches wait for its tables and the writer's first
                # inserts: warm it up at the same rate, then measure the steady state.
                asyncio.run(run.publish(steady[:warm], rate=latency_rate))
                run.wait_drained()
                since = datetime.now(UTC)
                asyncio.run(run.publish(steady[warm : warm + count], rate=latency_rate))
                run.wait_drained()
            # The server has stopped: its embedded ClickHouse can be opened here.
            values = asyncio.run(latencies_ms(run.home / "clickhouse", since))
            report["latency"] = latency_figures(values, latency_rate)
        finally:
            broker.stop()
    print_report(report, console)
    save_figures(report, out, console)
    return report


def save_figures(report: dict[str, Any], out: Path | None, console: Console) -> None:
    """The figures as JSON in `out` (none: printed only)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"figures written to {out}")


async def latencies_ms(chdb_dir: Path, since: datetime) -> list[float]:
    """Per lead sent from `since` on: its first row's insert time minus the moment its
    envelope was sent."""
    clickhouse = ClickHouse(f"chdb://{chdb_dir}", "leadflow")
    try:
        rows = await clickhouse.query(_latency_sql("leadflow", since))
    finally:
        await clickhouse.close()
    return [float(r["ms"]) for r in rows]


def latency_figures(values: list[float], rate: float) -> dict[str, Any]:
    return {
        "offered_leads_per_s": rate,
        "leads": len(values),
        "p50_ms": round(percentile(values, 0.50), 1),
        "p99_ms": round(percentile(values, 0.99), 1),
        "max_ms": round(max(values), 1) if values else None,
        "mean_ms": round(statistics.fmean(values), 1) if values else None,
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"leads.raw → ClickHouse, {report['envelopes']:,} envelopes "
        f"({report['persons']:,} people), {report['partitions']} partitions"
    )
    columns = (
        "workers",
        "frames",
        "learning",
        "leads/s",
        "messages / lead",
        "bare consumer",
        "ratio",
        "peak RSS",
        "state / 1M leads",
        "CPU ms/lead worker / broker",
    )
    for column in (*columns, "people (oracle)", "differences"):
        table.add_column(column, justify="right")
    for r in report["runs"]:
        table.add_row(
            str(r["workers"]),
            "on" if r.get("frames", True) else "off",
            "on" if r.get("learning", True) else "off",
            f"{r['leads_per_s']:,}",
            str(r.get("messages_per_lead", "")),
            f"{r['bare_consumer_leads_per_s']:,}/s",
            f"{r['ratio_to_bare']:.3f}",
            f"{r['worker_peak_rss_mb']} MB",
            f"{r['state_mb_per_million_leads']:,} MB",
            " / ".join(str(r.get("cpu_ms_per_lead", {}).get(k, "-")) for k in ("worker", "broker")),
            f"{r['distinct_leads']:,}"
            + ("" if report["oracle_people"] is None else f" ({report['oracle_people']:,})"),
            "not checked" if r["oracle_differences"] is None else str(r["oracle_differences"]),
        )
    console.print(table)
    latency = report.get("latency", {})
    if "p50_ms" in latency:
        console.print(
            f"latency at {latency['offered_leads_per_s']:,.0f} leads/s offered: "
            f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, max {latency['max_ms']} ms "
            f"({latency['leads']:,} leads)"
        )
