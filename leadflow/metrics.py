"""Prometheus metrics of one process, on a registry of its own (no global state).

Served at `GET /metrics` by the HTTP app. Labels use the step names of
leadflow.steps (the label is called `stage`), so a dashboard lines up with
dead-letter topics and logs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "leadflow_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "leadflow_publish_seconds",
            "Time until Kafka acknowledged an adapter's write.",
            ["topic"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.dead_letters = Counter(
            "leadflow_dead_letters",
            "Dead letters emitted, by stage.",
            ["stage"],
            registry=self.registry,
        )
        self.rows_written = Counter(
            "leadflow_clickhouse_rows_written",
            "Rows inserted into ClickHouse, by table.",
            ["table"],
            registry=self.registry,
        )
        self.insert_retries = Counter(
            "leadflow_clickhouse_insert_retries",
            "Failed inserts that were retried, by table.",
            ["table"],
            registry=self.registry,
        )

        self.notifications = Counter(
            "leadflow_notifications",
            "Rep notifications, by channel kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.suppressed = Counter(
            "leadflow_suppressed_rows",
            "Rows not written because they are about an erased person, by table.",
            ["table"],
            registry=self.registry,
        )
        self.quarantined = Counter(
            "leadflow_quarantined_posts",
            "Form posts taken for bots and quarantined, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.social_leads = Counter(
            "leadflow_social_leads",
            "Leads announced by Meta or LinkedIn webhooks, by provider and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
