"""`leadflow upload FILE --event NAME`: a trade-show export onto `leads.raw`, with a summary.

Rows stream from the file to Kafka (acks=all, idempotent producer), a
thousand writes in flight at most, so memory stays flat. Each bad row is a
dead letter on `dlq.tradeshow_upload` with its row number and reason, and
the upload goes on. A completed upload is recorded (file digest and event)
on the compacted topic `uploads.done`; uploading the same file for the same
event again publishes nothing and says when it was done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiokafka import ConsumerRecord
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest_adapters import tradeshow
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.kafka_clients import ensure_topics, make_producer, replay_topic
from leadflow.settings import Settings
from leadflow.topics import Topics
from streams.normalize import normalize_lead

IN_FLIGHT = 1000


@dataclass
class Summary:
    file: str
    event: str
    digest: str
    rows_read: int = 0
    published: int = 0
    duplicates_in_file: int = 0
    empty_rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    already_uploaded_at: str | None = None
    seconds: float = 0.0


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_mapping(path: Path | None) -> dict[str, str]:
    """A mapping file: `{column in the file: field name leadflow knows}`."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadRecordError("invalid_mapping", f"the mapping is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BadRecordError("invalid_mapping", f"{path}: expected `column: field` pairs")
    return {str(k): v for k, v in data.items()}


async def _previous_upload(
    settings: Settings,
    bootstrap: str,
    topic: str,
    key: str,
) -> str | None:
    """When this event and file were uploaded before, from `uploads.done`; else None."""
    found: list[str] = []

    def remember(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key == key.encode():
            found.append(json.loads(record.value or b"{}").get("finished_at", "?"))

    await replay_topic(settings.kafka, bootstrap, topic, remember)
    return found[-1] if found else None


async def upload(
    settings: Settings,
    bootstrap: str,
    path: Path,
    event: str,
    mapping_file: Path | None,
    console: Console,
    original_name: str | None = None,
) -> Summary:
    """Publish every good row of `path`; `original_name` names it in summaries and dead letters."""
    started = asyncio.get_running_loop().time()
    topics = Topics(settings.kafka.topic_prefix)
    name = original_name or path.name
    summary = Summary(file=name, event=event, digest=file_digest(path))
    done_key = f"{event}|{summary.digest}"
    mapping = load_mapping(mapping_file)
    await ensure_topics(settings.kafka, bootstrap)
    previous = await _previous_upload(settings, bootstrap, topics.uploads_done, done_key)
    if previous is not None:
        summary.already_uploaded_at = previous
        return summary
    producer = make_producer(settings.kafka, bootstrap, linger_ms=20)
    await producer.start()
    rejected: Counter[str] = Counter()
    seen: set[int] = set()
    in_flight: list[asyncio.Future[Any]] = []
    region = settings.normalize.default_phone_region
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} rows"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"uploading {name} for {event}", total=None)
            try:
                for row in tradeshow.read_rows(path, mapping):
                    summary.rows_read += 1
                    progress.advance(task)
                    if not row.cells:
                        summary.empty_rows += 1
                        continue
                    detail = f"{name}: row {row.number}"
                    if "__ragged__" in row.cells:
                        error = BadRecordError(
                            "ragged_row",
                            f"row {row.number} has "
                            f"{row.cells['__ragged__']} cells, more than "
                            "the header",
                        )
                        in_flight.append(await _dead_letter(producer, topics, error, row, detail))
                        rejected[error.reason] += 1
                        continue
                    formula = tradeshow.formula_column(row)
                    if formula is not None:
                        error = BadRecordError(
                            "formula_cell",
                            f"row {row.number}: column {formula!r} holds a spreadsheet formula, "
                            "not a value",
                            {formula: "a formula (=, @, +NAME(…)) is not accepted"},
                        )
                        in_flight.append(await _dead_letter(producer, topics, error, row, detail))
                        rejected[error.reason] += 1
                        continue
                    raw = tradeshow.envelope(row, event, name)
                    fingerprint = hash(raw.event_id)
                    if fingerprint in seen:
                        summary.duplicates_in_file += 1
                        continue
                    seen.add(fingerprint)
                    try:
                        normalize_lead(raw, default_region=region)
                    except BadRecordError as exc:
                        in_flight.append(await _dead_letter(producer, topics, exc, row, detail))
                        rejected[exc.reason] += 1
                        continue
                    in_flight.append(
                        await producer.send(
                            topics.leads_raw,
                            raw.model_dump_json().encode(),
                            key=raw.event_id.encode(),
                        )
                    )
                    summary.published += 1
                    if len(in_flight) >= IN_FLIGHT:
                        await asyncio.gather(*in_flight)
                        in_flight.clear()
            except BadRecordError as exc:
                # The file itself cannot be read: keep its head as the dead letter's body.
                with path.open("rb") as stream:
                    head = stream.read(65536)
                letter = dead_letter_for(
                    exc, head, stage=tradeshow.STAGE, detail=f"{name} ({summary.digest})"
                )
                key, value = letter.record()
                await producer.send_and_wait(topics.dlq(tradeshow.STAGE), value, key=key)
                raise
        await asyncio.gather(*in_flight)
        summary.rejected = dict(rejected)
        summary.seconds = round(asyncio.get_running_loop().time() - started, 2)
        record = {**asdict(summary), "finished_at": datetime.now(UTC).isoformat()}
        await producer.send_and_wait(
            topics.uploads_done, json.dumps(record).encode(), key=done_key.encode()
        )
    finally:
        await producer.stop()
    return summary


async def _dead_letter(
    producer: Any, topics: Topics, error: BadRecordError, row: tradeshow.Row, detail: str
) -> asyncio.Future[Any]:
    original = json.dumps(row.cells, ensure_ascii=False).encode()
    letter = dead_letter_for(error, original, stage=tradeshow.STAGE, detail=detail)
    key, value = letter.record()
    future: asyncio.Future[Any] = await producer.send(topics.dlq(tradeshow.STAGE), value, key=key)
    return future


def summary_table(summary: Summary) -> Table:
    table = Table(title=f"{summary.file} → {summary.event}", show_header=False)
    table.add_column("what")
    table.add_column("how many", justify="right")
    if summary.already_uploaded_at:
        table.add_row("already uploaded at", summary.already_uploaded_at)
        table.add_row("published now", "0")
        return table
    table.add_row("rows read", f"{summary.rows_read:,}")
    table.add_row("leads published", f"{summary.published:,}")
    table.add_row("duplicate rows in the file", f"{summary.duplicates_in_file:,}")
    table.add_row("empty rows", f"{summary.empty_rows:,}")
    for reason, count in sorted(summary.rejected.items()):
        table.add_row(f"rejected: {reason}", f"{count:,}")
    table.add_row("seconds", f"{summary.seconds:,.1f}")
    return table
