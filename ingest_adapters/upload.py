"""`leadflow upload FILE --event NAME`: a trade-show export onto `leads.raw`, with a summary.

Rows stream from the file to Kafka (acks=all, idempotent producer), a
thousand writes in flight at most, so memory stays flat. Each bad row is a
dead letter on `dlq.tradeshow_upload` with its row number and reason, and
the upload goes on. A completed upload is recorded (file digest and event)
on the compacted topic `uploads.done`; uploading the same file for the same
event again publishes nothing and says when it was done.

The CPU work (reading the file, normalizing each row, building envelopes and
dead letters) runs in a thread of its own, a chunk of rows at a time, one
chunk ahead of the sends; the event loop only sends to Kafka. So an upload
served by `leadflow serve` never holds up the other requests or the
consumers' heartbeats, however large or hostile the file.

A row is rejected only when it cannot be a lead (no valid email or phone, more
cells than the header); any other bad value (an email beside a good phone, a
consent that is not yes/no, an unknown country, an unreadable scan time) is a
warning: the row is published with that cell left out (or the default used)
and the reasons in `context["warnings"]`. The summary counts both by reason
(`rejected`, `warned`) and lists the first `PROBLEMS_LISTED` such rows; every
one of them, its original cells and a `reason` column, can be written as a CSV
to fix and upload again (`errors_out`; cells a spreadsheet would run as a
formula are neutralised with a leading `'`, which a re-upload takes off). A
formula-looking cell in a file is text, kept verbatim: leadflow never evaluates it.
The scan-time column (`Scan Time`, `扫描时间` …) becomes the lead's `occurred_at`.

Limits (`LimitsSettings`): past LIMITS_UPLOAD_MAX_ROWS rows the file is
refused (`too_many_rows`); after LIMITS_UPLOAD_MAX_EMPTY_ROWS empty rows in a
row reading stops and the summary says so (`stopped: empty_rows_limit`), so
a sheet of a million formatted empty rows costs a moment, not minutes. A file
that cannot be read at all raises `UploadRefusedError`, after its dead letter
(the file's first 64 KiB and the reason) is on `dlq.tradeshow_upload`.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import IO, Any

import yaml
from aiokafka import ConsumerRecord
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest_adapters import tradeshow
from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.kafka_clients import ensure_topics, make_producer, replay_topic
from leadflow.normalize import MAX_FIELD_CHARS, envelope_bytes, normalize_lead
from leadflow.settings import LimitsSettings, Settings
from leadflow.topics import Topics

log = logging.getLogger(__name__)

IN_FLIGHT = 1000
CHUNK_ROWS = 1000  # rows the reading thread handles before the event loop sends them
HEAD_BYTES = 65536  # what a refused file's dead letter keeps of it
LETTER_BODY_MAX = 65536  # a rejected row's dead letter keeps at most this of its cells
ROW_MAX_BYTES = 512 * 1024  # one envelope on leads.raw; Kafka refuses messages past ~1 MB
PROBLEMS_LISTED = 20  # rejected or warned rows the summary lists (the error file has them all)
PROBLEM_MESSAGE_MAX = 500
REASON_COLUMN = "reason"


@dataclass
class RowProblem:
    """A rejected or warned row as the summary lists it."""

    row: int
    outcome: str  # "rejected" (not published) or "warned" (published, a cell left out)
    reasons: list[str]
    message: str


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
    warned: dict[str, int] = field(default_factory=dict)  # warnings by reason (rows published)
    problems: list[RowProblem] = field(default_factory=list)  # the first PROBLEMS_LISTED rows
    problem_rows: int = 0  # rows rejected or warned: the rows of the error file
    upload_id: str = ""
    already_uploaded_at: str | None = None
    seconds: float = 0.0
    stopped: str | None = None  # why reading stopped before the end (empty_rows_limit)
    stopped_at_row: int | None = None


class UploadRefusedError(BadRecordError):
    """The file as a whole was refused; its dead letter is on `dlq.tradeshow_upload`.

    `summary` tells what happened before (rows read, leads already published).
    """

    def __init__(self, error: BadRecordError, dead_letter_id: str, summary: Summary) -> None:
        super().__init__(error.reason, error.message, error.fields)
        self.dead_letter_id = dead_letter_id
        self.summary = summary


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_mapping(text: str, source: str = "the mapping") -> dict[str, str]:
    """`{column in the file: field name leadflow knows}` from YAML text."""
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, RecursionError) as exc:
        raise BadRecordError(
            "invalid_mapping", f"{source} is not valid YAML: {str(exc)[:500]}"
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BadRecordError("invalid_mapping", f"{source}: expected `column: field` pairs")
    return {str(k): v for k, v in data.items()}


def load_mapping(path: Path | None) -> dict[str, str]:
    """A mapping file: `{column in the file: field name leadflow knows}`."""
    if path is None:
        return {}
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecordError("invalid_mapping", f"the mapping is not valid YAML: {exc}") from exc
    return parse_mapping(text, str(path))


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


@dataclass
class _Chunk:
    """What the reading thread hands the event loop: records to send, rows it read."""

    rows: int = 0
    leads: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    letters: list[tuple[bytes, bytes]] = field(default_factory=list)
    error: BadRecordError | None = None  # the file cannot be read on (after these records)
    done: bool = False


class _Reading:
    """The CPU side of an upload: rows to envelopes and dead letters, a chunk per call.

    Every method runs in the upload's own single thread, one call after another.
    """

    def __init__(
        self,
        path: Path,
        mapping: Mapping[str, str],
        event: str,
        name: str,
        limits: LimitsSettings,
        region: str,
        tz: tzinfo = UTC,
    ) -> None:
        self._rows = tradeshow.read_rows(path, mapping, limits)
        self._event = event
        self._name = name
        self._limits = limits
        self._region = region
        self._tz = tz
        self._seen: set[int] = set()
        self._empty_run = 0
        self.rows_read = 0
        self.empty_rows = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.warned: Counter[str] = Counter()
        self.problems: list[RowProblem] = []
        self.problem_rows = 0
        self.stopped: str | None = None
        self.stopped_at_row: int | None = None
        # Every rejected or warned row ([cells, reason] as JSON lines) until the error file
        # is written; on disk, so a file of a million bad rows costs no memory.
        self._spool: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self._columns: dict[str, None] = {}  # the spooled rows' columns, in order

    def next_chunk(self) -> _Chunk:
        chunk = _Chunk()
        try:
            for row in self._rows:
                self._take(row, chunk)
                if chunk.done or chunk.rows >= CHUNK_ROWS:
                    break
            else:
                chunk.done = True
        except BadRecordError as exc:
            chunk.error = exc
        except Exception as exc:  # a file no reader foresaw must not take the server down
            log.exception("upload of %s failed while reading", self._name)
            chunk.error = BadRecordError(
                "unreadable_file",
                f"the file could not be read: {type(exc).__name__}: {str(exc)[:300]}",
            )
        if chunk.error is not None:
            chunk.done = True
        return chunk

    def close(self) -> None:
        self._rows.close()  # closes the file (or workbook) the rows came from
        self._spool.close()

    def write_errors(self, path: Path) -> int:
        """Every rejected or warned row as CSV: its cells and a `reason` column, each cell
        neutralised (`'=…`) and cut to MAX_FIELD_CHARS; returns the rows written."""
        columns = list(self._columns)
        reason = REASON_COLUMN
        while reason in self._columns:
            reason = f"leadflow_{reason}"
        self._spool.seek(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        # utf-8-sig: Excel opens it with the Chinese intact (and the upload reads it back)
        with path.open("w", encoding="utf-8-sig", newline="") as out:
            writer = csv.writer(out)
            writer.writerow([tradeshow.neutralise_cell(c) for c in [*columns, reason]])
            for line in self._spool:
                cells, why = json.loads(line)
                values = [cells.get(column, "")[:MAX_FIELD_CHARS] for column in columns]
                writer.writerow([tradeshow.neutralise_cell(v) for v in [*values, why]])
                written += 1
        return written

    def _take(self, row: tradeshow.Row, chunk: _Chunk) -> None:
        chunk.rows += 1
        self.rows_read += 1
        if self.rows_read > self._limits.upload_max_rows:
            raise BadRecordError(
                "too_many_rows",
                f"the file has more than {self._limits.upload_max_rows:,} rows "
                "(LIMITS_UPLOAD_MAX_ROWS); split it and upload the parts "
                "(rows already published are the same events again, not duplicates)",
            )
        if not row.cells and row.problem is None:
            self.empty_rows += 1
            self._empty_run += 1
            if self._empty_run >= self._limits.upload_max_empty_rows:
                self.stopped, self.stopped_at_row = "empty_rows_limit", row.number
                chunk.done = True
            return
        self._empty_run = 0
        detail = f"{self._name}: row {row.number}"
        if row.problem is not None and row.problem.reason != "cell_too_large":
            self._reject(row.problem, row, detail, chunk)  # a cell too large is left out below
            return
        try:
            checked = tradeshow.check_row(
                row, self._event, self._name, default_region=self._region, tz=self._tz
            )
        except ValidationError as exc:
            problems = {".".join(str(p) for p in e["loc"]): e["msg"] for e in exc.errors()}
            message = f"row {row.number}: " + "; ".join(f"{k}: {v}" for k, v in problems.items())
            self._reject(BadRecordError("invalid_fields", message, problems), row, detail, chunk)
            return
        if checked.rejection is not None or checked.raw is None:
            error = checked.rejection or BadRecordError("invalid_fields", f"row {row.number}")
            self._reject(error, row, detail, chunk)
            return
        raw = checked.raw
        fingerprint = hash(raw.event_id)
        if fingerprint in self._seen:
            self.duplicates += 1
            return
        self._seen.add(fingerprint)
        try:
            lead = normalize_lead(raw, default_region=self._region)
        except BadRecordError as exc:
            self._reject(exc, row, detail, chunk)
            return
        value = envelope_bytes(raw, lead, default_region=self._region)
        if len(value) > ROW_MAX_BYTES:
            error = BadRecordError(
                "row_too_large",
                f"row {row.number} makes a lead of {len(value):,} bytes (limit {ROW_MAX_BYTES:,})",
            )
            self._reject(error, row, detail, chunk)
            return
        chunk.leads.append((raw.event_id.encode(), value))
        if checked.warnings:
            reasons = list(dict.fromkeys(w.reason for w in checked.warnings))
            self.warned.update(reasons)
            self._note(row, "warned", reasons, "; ".join(w.message for w in checked.warnings))

    def _reject(
        self, error: BadRecordError, row: tradeshow.Row, detail: str, chunk: _Chunk
    ) -> None:
        letter = dead_letter_for(
            error, _letter_body(row.cells), stage=tradeshow.STEP, detail=detail
        )
        chunk.letters.append(letter.record())
        self.rejected[error.reason] += 1
        message = (
            error.message
            if f"row {row.number}" in error.message
            else (f"row {row.number}: {error.message}")
        )
        self._note(row, "rejected", [error.reason], message)

    def _note(self, row: tradeshow.Row, outcome: str, reasons: list[str], message: str) -> None:
        """A rejected or warned row: listed in the summary (the first few), spooled for the
        error file (all)."""
        self.problem_rows += 1
        if len(self.problems) < PROBLEMS_LISTED:
            shown = (
                message
                if len(message) <= PROBLEM_MESSAGE_MAX
                else (f"{message[:PROBLEM_MESSAGE_MAX]}…")
            )
            self.problems.append(RowProblem(row.number, outcome, reasons, shown))
        for column in row.cells:
            if (
                column not in self._columns
                and len(self._columns) < 2 * self._limits.upload_max_columns
            ):
                self._columns[column] = None
        why = f"{outcome} ({', '.join(reasons)}): {message}"
        self._spool.write(json.dumps([row.cells, why], ensure_ascii=False) + "\n")


def _letter_body(cells: Mapping[str, str]) -> bytes:
    """A rejected row's cells as JSON, cut to LETTER_BODY_MAX (a cell may be huge)."""
    body = json.dumps(cells, ensure_ascii=False).encode()
    if len(body) <= LETTER_BODY_MAX:
        return body
    clipped = {
        name[:200]: value if len(value) <= 1000 else f"{value[:1000]}… ({len(value):,} characters)"
        for name, value in cells.items()
    }
    return json.dumps(clipped, ensure_ascii=False).encode()[:LETTER_BODY_MAX]


def _head(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(HEAD_BYTES)


async def upload(
    settings: Settings,
    bootstrap: str,
    path: Path,
    event: str,
    mapping_file: Path | None,
    console: Console,
    original_name: str | None = None,
    *,
    mapping: Mapping[str, str] | None = None,
    errors_out: Path | None = None,
    upload_id: str | None = None,
    timezone: tzinfo = UTC,
) -> Summary:
    """Publish every good row of `path`; `original_name` names it in summaries and dead letters.

    `mapping` (already parsed) takes the place of `mapping_file`. When rows were rejected
    or warned, `errors_out` gets them as CSV (original columns and a `reason`), also when
    the file is refused part way. Raises `UploadRefusedError` when the file as a whole is
    refused. Scan times written without an offset are read in `timezone`.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    topics = Topics(settings.kafka.topic_prefix)
    name = original_name or path.name
    summary = Summary(file=name, event=event, digest=await asyncio.to_thread(file_digest, path))
    summary.upload_id = upload_id or uuid.uuid4().hex
    done_key = f"{event}|{summary.digest}"
    if mapping is None:
        mapping = await asyncio.to_thread(load_mapping, mapping_file)
    await ensure_topics(settings.kafka, bootstrap)
    previous = await _previous_upload(settings, bootstrap, topics.uploads_done, done_key)
    if previous is not None:
        summary.already_uploaded_at = previous
        return summary
    reading = _Reading(
        path,
        mapping,
        event,
        name,
        settings.limits,
        settings.normalize.default_phone_region,
        timezone,
    )
    # One thread per upload: its chunks, then its close, run in order on it.
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadflow-upload")
    producer = make_producer(settings.kafka, bootstrap, linger_ms=20)
    await producer.start()
    in_flight: list[asyncio.Future[Any]] = []
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
            pending = asyncio.wrap_future(thread.submit(reading.next_chunk))
            while True:
                chunk = await pending
                if not chunk.done:  # the thread reads the next chunk while this one is sent
                    pending = asyncio.wrap_future(thread.submit(reading.next_chunk))
                dlq = topics.dlq(tradeshow.STEP)
                for key, value in chunk.letters:
                    in_flight.append(await producer.send(dlq, value, key=key))
                for key, value in chunk.leads:
                    in_flight.append(await producer.send(topics.leads_raw, value, key=key))
                    summary.published += 1
                    if len(in_flight) >= IN_FLIGHT:
                        await asyncio.gather(*in_flight)
                        in_flight.clear()
                progress.advance(task, chunk.rows)
                if chunk.done:
                    break
        await asyncio.gather(*in_flight)
        in_flight.clear()
        _count(summary, reading)
        if errors_out is not None and reading.problem_rows:
            await asyncio.wrap_future(thread.submit(reading.write_errors, errors_out))
        if chunk.error is not None:
            # The file itself cannot be read on: keep its head as the dead letter's body.
            head = await asyncio.to_thread(_head, path)
            letter = dead_letter_for(
                chunk.error, head, stage=tradeshow.STEP, detail=f"{name} ({summary.digest})"
            )
            key, value = letter.record()
            await producer.send_and_wait(topics.dlq(tradeshow.STEP), value, key=key)
            raise UploadRefusedError(chunk.error, letter.dead_letter_id, summary)
        summary.seconds = round(loop.time() - started, 2)
        record = {**asdict(summary), "finished_at": datetime.now(UTC).isoformat()}
        await producer.send_and_wait(
            topics.uploads_done, json.dumps(record).encode(), key=done_key.encode()
        )
    finally:
        thread.submit(reading.close)
        thread.shutdown(wait=False)
        await producer.stop()
    return summary


def _count(summary: Summary, reading: _Reading) -> None:
    summary.rows_read = reading.rows_read
    summary.empty_rows = reading.empty_rows
    summary.duplicates_in_file = reading.duplicates
    summary.rejected = dict(reading.rejected)
    summary.warned = dict(reading.warned)
    summary.problems = list(reading.problems)
    summary.problem_rows = reading.problem_rows
    summary.stopped = reading.stopped
    summary.stopped_at_row = reading.stopped_at_row


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
    for reason, count in sorted(summary.warned.items()):
        table.add_row(f"warned: {reason}", f"{count:,}")
    if summary.stopped:
        table.add_row(f"stopped reading: {summary.stopped}", f"at row {summary.stopped_at_row:,}")
    table.add_row("seconds", f"{summary.seconds:,.1f}")
    return table


def problems_table(summary: Summary) -> Table | None:
    """The first rejected or warned rows with their reasons; None when there are none."""
    if not summary.problems:
        return None
    more = summary.problem_rows - len(summary.problems)
    title = f"rejected or warned rows (first {len(summary.problems)} of {summary.problem_rows:,})"
    table = Table(title=title if more else "rejected or warned rows")
    table.add_column("row", justify="right")
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("message", overflow="fold")
    for problem in summary.problems:
        table.add_row(
            f"{problem.row:,}", problem.outcome, ", ".join(problem.reasons), problem.message
        )
    return table
