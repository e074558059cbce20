"""The command line's development verbs: `up`, `kafka` and `bench`. The application's
CLI (`leadflow_app.cli`) plugs them in when this package is installed."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from leadflow.settings import Settings


def _local_kafka(settings: Settings):  # type: ignore[no-untyped-def]
    from leadflow_tools.broker.local import LocalKafka

    return LocalKafka(
        settings.kafka_home,
        settings.kafka.local_port,
        settings.kafka.local_controller_port,
        settings.kafka.local_heap,
    )


def cmd_kafka(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    if settings.kafka.bootstrap:
        console.print(
            f"KAFKA_BOOTSTRAP is set ({settings.kafka.bootstrap}): "
            "that cluster is used and no broker is managed here."
        )
        return 0
    broker = _local_kafka(settings)
    if args.action == "start":
        with console.status("starting the Kafka broker ..."):
            broker.start()
        console.print(f"[green]✓[/] {broker.status()}; log: {broker.log_file}")
    elif args.action == "stop":
        console.print("stopped" if broker.stop() else "was not running")
    elif args.action == "status":
        console.print(broker.status())
        return 0 if broker.pid() is not None else 3
    else:
        console.print(broker.tail_log(args.lines), markup=False, highlight=False)
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_tools.stack import run_up

    return run_up(settings, console, samples=not args.no_samples)


def cmd_bench(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_tools.bench import bench_queries, bench_upload

    queries_out = args.out or Path("bench-results/queries.json")
    if args.suite == "pipeline":
        from leadflow_tools.bench_pipeline import bench_pipeline

        modes = [mode.strip() for mode in args.frames.split(",")]
        learning = [mode.strip() for mode in args.learning.split(",")]
        for option, given in (("--frames", modes), ("--learning", learning)):
            if not given or set(given) - {"on", "off"}:
                console.print(f"[red]{option} takes on, off or on,off; not {','.join(given)!r}[/]")
                return 2
        bench_pipeline(
            args.persons,
            args.partitions,
            args.latency_rate,
            args.latency_seconds,
            args.out or Path("bench-results/pipeline.json"),
            console,
            tuple(int(n) for n in args.workers.split(",")),
            tuple(mode == "on" for mode in modes),
            tuple(mode == "on" for mode in learning),
        )
        return 0
    if args.suite == "scoring":
        from leadflow_tools.bench_scoring import bench_scoring

        bench_scoring(args.outcomes, args.out or Path("bench-results/scoring.json"), console)
        return 0
    if args.suite == "nurture":
        from leadflow_tools.bench_nurture import bench_nurture

        bench_nurture(
            args.enrolled,
            args.partitions,
            args.out or Path("bench-results/nurture.json"),
            console,
            wait=timedelta(seconds=args.wait_seconds),
            fire_rate=args.fire_rate,
        )
        return 0
    if args.suite == "ingest":
        from leadflow_tools.bench_ingest import bench_ingest

        bench_ingest(args.seconds, args.connections, args.out, console)
        return 0
    if args.suite == "upload":
        bench_upload(args.rows, console, queries_out.with_name("upload.json"))
        return 0
    report = bench_queries(args.leads, args.repeat, queries_out, console)
    return 0 if all(r["same_answer"] for r in report["results"]) else 1


def register(verbs: Any) -> None:
    """Add the verbs to the CLI's subparsers."""
    up = verbs.add_parser("up", help="run the local stack with sample leads")
    up.add_argument(
        "--no-samples", action="store_true", help="start the stack empty: post no sample leads"
    )
    up.set_defaults(fn=cmd_up)

    kafka = verbs.add_parser("kafka", help="the project's own Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status", "logs"])
    kafka.add_argument("--lines", type=int, default=50)
    kafka.set_defaults(fn=cmd_kafka)

    bench = verbs.add_parser("bench", help="benchmarks that print figures")
    bench.add_argument(
        "suite", choices=["queries", "upload", "ingest", "pipeline", "nurture", "scoring"]
    )
    bench.add_argument(
        "--outcomes", type=int, default=20_000, help="scoring: won/lost outcomes generated"
    )
    bench.add_argument(
        "--enrolled", type=int, default=100_000, help="nurture: leads in the 5-step sequence"
    )
    bench.add_argument(
        "--wait-seconds", type=float, default=120, help="nurture: the wait between its emails"
    )
    bench.add_argument(
        "--fire-rate",
        type=float,
        default=None,
        help="nurture: hold the enrolled leads pending and measure a probe cohort whose "
        "timers fire at this many a second (default: every lead at once, a burst)",
    )
    bench.add_argument(
        "--persons", type=int, default=20_000, help="pipeline: generated people (~1.3 leads each)"
    )
    bench.add_argument("--partitions", type=int, default=8, help="pipeline: partitions per topic")
    bench.add_argument(
        "--workers",
        default="1,2",
        help="pipeline: worker counts to run, comma-separated (each checked against the oracle)",
    )
    bench.add_argument(
        "--frames",
        default="on",
        help="pipeline: `on`, `off` or `on,off`: records of the stream core's own topics in "
        "frames, or each a message of its own (side by side in one run)",
    )
    bench.add_argument(
        "--learning",
        default="on",
        help="pipeline: `on`, `off` or `on,off`: a learned model in use, learning from "
        "outcomes during the run, or rules alone (side by side in one run)",
    )
    bench.add_argument(
        "--latency-rate",
        type=float,
        default=50.0,
        help="pipeline: offered leads/s for latency (50: about half of one worker's capacity)",
    )
    bench.add_argument(
        "--latency-seconds", type=float, default=15.0, help="pipeline: length of the latency run"
    )
    bench.add_argument("--rows", type=int, default=1_000_000, help="upload: rows in the file")
    bench.add_argument("--leads", type=int, default=1_000_000)
    bench.add_argument("--repeat", type=int, default=5)
    bench.add_argument(
        "--seconds", type=float, default=10.0, help="ingest: measured seconds per endpoint"
    )
    bench.add_argument(
        "--connections", type=int, default=64, help="ingest: concurrent client connections"
    )
    bench.add_argument(
        "--out",
        type=Path,
        help="JSON figures (queries: default bench-results/queries.json, upload: upload.json "
        "beside it; ingest: none)",
    )
    bench.set_defaults(fn=cmd_bench)
