"""Trade-show uploads over HTTP: the file streams to disk, then goes through `upload`.

Every refusal is a JSON 4xx with `error`, `message` and the `dead_letter_id`
of the letter on `dlq.tradeshow_upload` that keeps its reason (and the file's
first 64 KiB when the file was received):

- 415 `unsupported_media_type`: not multipart/form-data.
- 429 `too_many_uploads` with Retry-After: HTTP_UPLOAD_CONCURRENCY uploads are
  already being processed; the body is not read.
- 413 `body_too_large`: the file is past HTTP_MAX_UPLOAD_BYTES (or another part
  past its own small bound).
- 408 `body_too_slow`: after a grace of `BODY_GRACE_S`, the body arrived slower
  on average than HTTP_BODY_MIN_RATE_BYTES_S.
- 400 `invalid_form`: the body is not valid multipart.
- 422 `invalid_fields` (no file, no event, an event longer than
  `EVENT_MAX_CHARS`), `invalid_mapping` (past `MAPPING_MAX_BYTES`, or not
  `column: field` YAML), `invalid_timezone` (the optional `timezone` part, the
  zone of scan times written without an offset, is no IANA zone, UTC or offset),
  and the file's own refusals from `ingest_adapters.upload`
  (`invalid_csv`, `invalid_xlsx`, `too_many_columns`, `cell_too_large`,
  `no_header` …; `too_many_rows` and a zip bomb's `too_large` are 413).

The client's file name is kept only as text (cut to `NAME_MAX_CHARS`); on disk
the file is `<random hex><suffix>` under the data dir, deleted when done.

The answer (the upload's summary) carries an `upload_id`; when rows were rejected
or warned, `errors_url` names `GET /v1/uploads/{upload_id}/errors.csv`: those
rows with their original columns and a `reason`, ready to fix and upload again
(cells a spreadsheet would run as formulas neutralised). The file is kept under
the data dir's `uploads/` as `<upload_id>.errors.csv` for `ERRORS_KEEP_S` (7
days), at most `ERRORS_KEEP` of them (the oldest go first).
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from rich.console import Console

from ingest_adapters import tradeshow
from ingest_adapters.upload import HEAD_BYTES, UploadRefusedError, parse_mapping, upload
from leadflow.errors import BadRecordError
from leadflow.http_shared import STATUS_BY_REASON, error_body
from leadflow.settings import Settings

# (error, body, stage, detail, key) -> the dead letter's id, once Kafka has it.
DeadLetterSink = Callable[[BadRecordError, bytes, str, str, str | None], Awaitable[str]]

ROUTE = "/v1/uploads/tradeshow"
ERRORS_ROUTE = "/v1/uploads/{upload_id}/errors.csv"
ERRORS_SUFFIX = ".errors.csv"
ERRORS_KEEP = 500  # error files kept at most (the oldest deleted first) …
ERRORS_KEEP_S = 7 * 86400.0  # … and none older than this
EVENT_MAX_CHARS = 200
EVENT_MAX_BYTES = 4 * EVENT_MAX_CHARS + 256  # UTF-8 of the longest event, and some space
MAPPING_MAX_BYTES = 64 * 1024
TIMEZONE_MAX_BYTES = 128


@dataclass(frozen=True)
class _TextBound:
    """How much of a text part is read, and what a longer one is told."""

    max_bytes: int
    max_chars: int
    reason: str
    message: str
    expected: str


TEXT_PARTS = {
    "event": _TextBound(
        EVENT_MAX_BYTES,
        EVENT_MAX_CHARS,
        "invalid_fields",
        f"the event name is longer than {EVENT_MAX_CHARS} characters",
        f"at most {EVENT_MAX_CHARS} characters",
    ),
    "timezone": _TextBound(
        TIMEZONE_MAX_BYTES,
        TIMEZONE_MAX_BYTES,
        "invalid_timezone",
        f"the timezone is longer than {TIMEZONE_MAX_BYTES} bytes",
        "an IANA zone name, UTC or an offset",
    ),
    "mapping": _TextBound(
        MAPPING_MAX_BYTES,
        MAPPING_MAX_BYTES,
        "invalid_mapping",
        f"the mapping is larger than {MAPPING_MAX_BYTES:,} bytes",
        f"at most {MAPPING_MAX_BYTES:,} bytes",
    ),
}
OTHER_PART_MAX_BYTES = 64 * 1024  # a part of another name is read (and dropped) up to this
FORM_OVERHEAD_BYTES = 256 * 1024  # what a body may hold besides the file: parts, headers
NAME_MAX_CHARS = 255
BODY_GRACE_S = 10.0  # no rate is asked of a body before this
RATE_CHECK_S = 1.0  # how often the body's average rate is checked
RETRY_AFTER_S = 30

# The reasons of this route beside those every route shares.
UPLOAD_STATUS_BY_REASON = {
    **STATUS_BY_REASON,
    "body_too_large": 413,
    "too_many_rows": 413,
    "body_too_slow": 408,
    "too_many_uploads": 429,
    "invalid_fields": 422,
    "invalid_mapping": 422,
    "invalid_timezone": 422,
    "invalid_csv": 422,
    "invalid_xlsx": 422,
    "cell_too_large": 422,
    "row_too_large": 422,
    "too_many_columns": 422,
    "no_header": 422,
    "unreadable_file": 422,
}

_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class _Refused(Exception):
    """The upload is refused with this status and reason (raised while receiving)."""

    def __init__(self, status: int, error: BadRecordError) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error


@dataclass
class _Received:
    path: Path | None = None  # the file part on disk
    name: str = "upload.csv"  # the client's name for it, as text only
    texts: dict[str, str] = field(default_factory=dict)  # event, mapping


def client_file_name(filename: str | None) -> tuple[str, str]:
    """The client's file name as text (no folders, printable, at most NAME_MAX_CHARS) and
    the suffix the file gets on disk (`.csv`, `.xlsx` …; empty unless short and plain)."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    suffix = Path(base).suffix.lower() if base else ""
    if not _SUFFIX.fullmatch(suffix):
        suffix = ""
    return (base[:NAME_MAX_CHARS] or "upload.csv"), suffix


async def _read_text(part: BodyPartReader, cap: int) -> str | None:
    """The part's text, or None as soon as it is past `cap` bytes (the rest is not held)."""
    data = bytearray()
    while chunk := await part.read_chunk(8192):
        data += chunk
        if len(data) > cap:
            return None
    try:
        return bytes(data).decode(part.get_charset("utf-8"), "replace")
    except LookupError:
        return bytes(data).decode("utf-8", "replace")


class UploadRoutes:
    """`POST /v1/uploads/tradeshow`: a badge-scanner export over HTTP; and
    `GET /v1/uploads/{upload_id}/errors.csv`: its rejected and warned rows."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None,
        dead_letter: DeadLetterSink,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._dead_letter = dead_letter
        self._active = 0  # uploads being received or processed

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.post_tradeshow_upload)
        app.router.add_get(ERRORS_ROUTE, self.get_upload_errors)

    async def post_tradeshow_upload(self, request: web.Request) -> web.Response:
        """A badge-scanner export as multipart (`file`, `event`, optional `mapping` YAML).

        The file streams to disk under the data dir (at most HTTP_MAX_UPLOAD_BYTES),
        then goes through the same upload as `leadflow upload`; the answer is its summary.
        """
        if self._bootstrap is None:
            return error_body(
                503, "unavailable", "uploads need the adapters role of leadflow serve"
            )
        if request.content_type != "multipart/form-data":
            return await self._refuse(
                415,
                BadRecordError(
                    "unsupported_media_type", "send multipart/form-data with file and event"
                ),
            )
        http = self._settings.http
        if self._active >= http.upload_concurrency:
            response = await self._refuse(
                429,
                BadRecordError(
                    "too_many_uploads",
                    f"{self._active} uploads are being processed (HTTP_UPLOAD_CONCURRENCY); "
                    f"retry in {RETRY_AFTER_S} s",
                ),
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        length = request.content_length
        if length is not None and length > http.max_upload_bytes + FORM_OVERHEAD_BYTES:
            return await self._refuse(413, self._too_large())
        self._active += 1
        try:
            return await self._process(request, self._bootstrap)
        finally:
            self._active -= 1

    async def _process(self, request: web.Request, bootstrap: str) -> web.Response:
        folder = self._settings.data_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        received = _Received()
        try:
            try:
                received = await self._receive_in_time(request, folder)
            except _Refused as refused:
                return await self._refuse(refused.status, refused.error)
            path = received.path
            event = received.texts.get("event", "").strip()
            if path is None or not event:
                missing = {
                    part: "required"
                    for part, absent in (("file", path is None), ("event", not event))
                    if absent
                }
                return await self._refuse(
                    422,
                    BadRecordError(
                        "invalid_fields",
                        "send a file part named file and a text part named event",
                        missing,
                    ),
                    path,
                )
            mapping = None
            if received.texts.get("mapping", "").strip():
                text = received.texts["mapping"]
                try:
                    mapping = await asyncio.to_thread(parse_mapping, text)
                except BadRecordError as exc:
                    letter_id = await self._letter(exc, text.encode())
                    return self._answer(exc, letter_id)
            zone: tzinfo = UTC
            if received.texts.get("timezone", "").strip():
                try:
                    zone = tradeshow.parse_timezone(received.texts["timezone"])
                except BadRecordError as exc:
                    return await self._refuse(422, exc, path)
            upload_id = uuid.uuid4().hex
            errors = errors_path(folder, upload_id)
            try:
                summary = await upload(
                    self._settings,
                    bootstrap,
                    path,
                    event,
                    None,
                    Console(file=io.StringIO()),
                    original_name=received.name,
                    mapping=mapping,
                    errors_out=errors,
                    upload_id=upload_id,
                    timezone=zone,
                )
            except UploadRefusedError as exc:
                return self._answer(
                    exc,
                    exc.dead_letter_id,
                    rows_read=exc.summary.rows_read,
                    published=exc.summary.published,
                    upload_id=upload_id,
                    errors_url=await self._errors_url(errors, upload_id, exc.summary.problem_rows),
                )
            except BadRecordError as exc:
                return await self._refuse(UPLOAD_STATUS_BY_REASON.get(exc.reason, 422), exc, path)
            answer = asdict(summary)
            answer["errors_url"] = await self._errors_url(errors, upload_id, summary.problem_rows)
            return web.json_response(answer)
        finally:
            if received.path is not None:
                received.path.unlink(missing_ok=True)

    async def _errors_url(self, errors: Path, upload_id: str, rows: int) -> str | None:
        """The error file's URL when `rows` were written (older files pruned); else None."""
        if not rows:
            return None
        await asyncio.to_thread(prune_error_files, errors.parent)
        return ERRORS_ROUTE.format(upload_id=upload_id)

    async def get_upload_errors(self, request: web.Request) -> web.StreamResponse:
        """An upload's rejected and warned rows as CSV (original columns and `reason`)."""
        upload_id = request.match_info.get("upload_id", "")
        if not _UPLOAD_ID.fullmatch(upload_id):
            return error_body(404, "not_found", "an upload id is the 32 hex digits of upload_id")
        path = errors_path(self._settings.data_dir / "uploads", upload_id)
        if not await asyncio.to_thread(path.is_file):
            keep = f"{ERRORS_KEEP_S / 86400:g} days"
            return error_body(
                404,
                "not_found",
                f"no error file for upload {upload_id}: none of its rows was rejected or "
                f"warned, or it is older than {keep} or past the last {ERRORS_KEEP:,} kept",
            )
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{upload_id}{ERRORS_SUFFIX}"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def _receive_in_time(self, request: web.Request, folder: Path) -> _Received:
        """The body received, or 408 once it is slower than HTTP_BODY_MIN_RATE_BYTES_S on
        average after BODY_GRACE_S (a body that stops arriving included)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        min_rate = self._settings.http.body_min_rate_bytes_s
        receiving = asyncio.ensure_future(self._receive_upload(request, folder))
        try:
            while True:
                done, _ = await asyncio.wait({receiving}, timeout=RATE_CHECK_S)
                if done:
                    return receiving.result()
                elapsed = loop.time() - started
                got = request.content.total_bytes
                if min_rate and elapsed > BODY_GRACE_S and got < min_rate * elapsed:
                    raise _Refused(
                        408,
                        BadRecordError(
                            "body_too_slow",
                            f"the body arrived at {got / elapsed:,.0f} bytes/s on average "
                            f"over {elapsed:.0f} s; at least {min_rate:,} bytes/s is required "
                            "(HTTP_BODY_MIN_RATE_BYTES_S)",
                        ),
                    )
        finally:
            if not receiving.done():
                receiving.cancel()  # it deletes what it wrote of the file
                await asyncio.wait({receiving})

    async def _receive_upload(self, request: web.Request, folder: Path) -> _Received:
        """The file part streamed to disk, its name, and the text parts (each bounded)."""
        limit = self._settings.http.max_upload_bytes
        received = _Received()
        try:
            reader = await request.multipart()
            async for part in reader:
                if request.content.total_bytes > limit + FORM_OVERHEAD_BYTES:
                    raise _Refused(413, self._too_large())
                if not isinstance(part, BodyPartReader):
                    raise _Refused(
                        400, BadRecordError("invalid_form", "nested multipart is not accepted")
                    )
                if part.name == "file":
                    if received.path is not None:
                        raise _Refused(
                            422,
                            BadRecordError(
                                "invalid_fields",
                                "send one file per upload",
                                {"file": "more than one file part"},
                            ),
                        )
                    received.name, suffix = client_file_name(part.filename)
                    received.path = folder / f"{uuid.uuid4().hex}{suffix}"
                    size = 0
                    with received.path.open("wb") as out:
                        while chunk := await part.read_chunk(1 << 20):
                            size += len(chunk)
                            if size > limit:
                                raise _Refused(413, self._too_large())
                            out.write(chunk)
                elif part.name in TEXT_PARTS:
                    bound = TEXT_PARTS[part.name]
                    text = await _read_text(part, bound.max_bytes)
                    if text is None or len(text.strip()) > bound.max_chars:
                        raise _Refused(
                            422,
                            BadRecordError(
                                bound.reason, bound.message, {part.name: bound.expected}
                            ),
                        )
                    received.texts[part.name] = text
                elif await _read_text(part, OTHER_PART_MAX_BYTES) is None:
                    raise _Refused(
                        413,
                        BadRecordError(
                            "body_too_large",
                            f"part {str(part.name)[:100]!r} is larger than "
                            f"{OTHER_PART_MAX_BYTES:,} bytes (only file, event and mapping "
                            "are read)",
                        ),
                    )
        except (ValueError, HttpProcessingError) as exc:  # malformed multipart
            if received.path is not None:
                received.path.unlink(missing_ok=True)
            raise _Refused(
                400, BadRecordError("invalid_form", f"body is not valid multipart: {exc}")
            ) from exc
        except BaseException:
            if received.path is not None:
                received.path.unlink(missing_ok=True)
            raise
        return received

    def _too_large(self) -> BadRecordError:
        limit = self._settings.http.max_upload_bytes
        return BadRecordError("body_too_large", f"files larger than {limit} bytes are not accepted")

    async def _letter(self, error: BadRecordError, body: bytes) -> str:
        return await self._dead_letter(
            error, body, tradeshow.STEP, f"POST {ROUTE} ({error.reason})", None
        )

    def _answer(self, error: BadRecordError, letter_id: str, **extra: object) -> web.Response:
        status = UPLOAD_STATUS_BY_REASON.get(error.reason, 422)
        return error_body(
            status,
            error.reason,
            error.message,
            fields=error.fields,
            dead_letter_id=letter_id,
            **extra,
        )

    async def _refuse(
        self, status: int, error: BadRecordError, path: Path | None = None
    ) -> web.Response:
        """A refused upload: its answer, and a dead letter with the reason (and the file's
        first 64 KiB when it was received)."""
        body = b""
        if path is not None:
            body = await asyncio.to_thread(_head, path)
        letter_id = await self._letter(error, body)
        return error_body(
            status, error.reason, error.message, fields=error.fields, dead_letter_id=letter_id
        )


def _head(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(HEAD_BYTES)


def errors_path(folder: Path, upload_id: str) -> Path:
    """Where an upload's error file is kept: `<folder>/<upload_id>.errors.csv`."""
    return folder / f"{upload_id}{ERRORS_SUFFIX}"


def prune_error_files(
    folder: Path, *, keep: int = ERRORS_KEEP, keep_s: float = ERRORS_KEEP_S
) -> int:
    """Delete error files older than `keep_s` and all but the newest `keep`; how many went."""
    now = time.time()
    found: list[tuple[float, Path]] = []
    for path in folder.glob(f"*{ERRORS_SUFFIX}"):
        try:
            found.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # another upload pruned it
            continue
    found.sort(reverse=True)
    gone = [path for n, (mtime, path) in enumerate(found) if n >= keep or now - mtime > keep_s]
    for path in gone:
        path.unlink(missing_ok=True)
    return len(gone)
