"""Trade-show uploads over HTTP: the file streams to disk, then goes through `upload`."""

from __future__ import annotations

import io
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from rich.console import Console

from ingest_adapters import tradeshow
from ingest_adapters.answers import STATUS_BY_REASON, error_body
from leadflow.errors import BadRecordError
from leadflow.settings import Settings
from leadflow.upload import upload

# (error, body, stage, detail, key) -> the dead letter's id, once Kafka has it.
DeadLetterSink = Callable[[BadRecordError, bytes, str, str, str | None], Awaitable[str]]


class _TooLarge(Exception):
    """An upload went past HTTP_MAX_UPLOAD_BYTES while streaming."""


class UploadRoutes:
    """`POST /v1/uploads/tradeshow`: a badge-scanner export over HTTP."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None,
        dead_letter: DeadLetterSink,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._dead_letter = dead_letter

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/uploads/tradeshow", self.post_tradeshow_upload)

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
            return error_body(
                415, "unsupported_media_type", "send multipart/form-data with file and event"
            )
        folder = self._settings.data_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        limit = self._settings.http.max_upload_bytes
        path: Path | None = None
        try:
            try:
                received = await self._receive_upload(request, folder, limit)
            except (ValueError, HttpProcessingError) as exc:  # malformed multipart
                return await self._refuse_upload(
                    400, BadRecordError("invalid_form", f"body is not valid multipart: {exc}")
                )
            if received is None:
                return await self._refuse_upload(
                    413,
                    BadRecordError(
                        "body_too_large", f"files larger than {limit} bytes are not accepted"
                    ),
                )
            path, name, texts = received
            if path is None or not texts.get("event", "").strip():
                return await self._refuse_upload(
                    422,
                    BadRecordError(
                        "invalid_fields",
                        "send a file part named file and a text part named event",
                        {"file": "required", "event": "required"},
                    ),
                )
            mapping_file = None
            if texts.get("mapping"):
                mapping_file = path.with_suffix(".mapping.yaml")
                mapping_file.write_text(texts["mapping"], "utf-8")
            try:
                summary = await upload(
                    self._settings,
                    self._bootstrap,
                    path,
                    texts["event"].strip(),
                    mapping_file,
                    Console(file=io.StringIO()),
                    original_name=name,
                )
            except BadRecordError as exc:
                status = STATUS_BY_REASON.get(exc.reason, 422)
                return error_body(status, exc.reason, exc.message, fields=exc.fields)
            return web.json_response(asdict(summary))
        finally:
            for leftover in (path, path.with_suffix(".mapping.yaml") if path else None):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)

    async def _receive_upload(
        self, request: web.Request, folder: Path, limit: int
    ) -> tuple[Path | None, str, dict[str, str]] | None:
        """The file part streamed to disk, its name, and the text parts; None if too large."""
        texts: dict[str, str] = {}
        path: Path | None = None
        name = "upload.csv"
        try:
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader) or not part.name:
                    continue
                if part.name == "file":
                    name = Path(part.filename or name).name
                    path = folder / f"{uuid.uuid4().hex}-{name}"
                    size = 0
                    with path.open("wb") as out:
                        while chunk := await part.read_chunk(1 << 20):
                            size += len(chunk)
                            if size > limit:
                                raise _TooLarge
                            out.write(chunk)
                elif part.name in ("event", "mapping"):
                    texts[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")
        except _TooLarge:
            if path is not None:
                path.unlink(missing_ok=True)
            return None
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
        return path, name, texts

    async def _refuse_upload(self, status: int, error: BadRecordError) -> web.Response:
        """A refused upload: its answer, and a dead letter with the reason (the file itself
        was streamed to disk and deleted, so the letter carries no body)."""
        letter_id = await self._dead_letter(
            error, b"", tradeshow.STAGE, "POST /v1/uploads/tradeshow", None
        )
        return error_body(
            status, error.reason, error.message, fields=error.fields, dead_letter_id=letter_id
        )
