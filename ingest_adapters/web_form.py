"""Adapter `web_form`: a website form post becomes a `RawLead` on `leads.raw`.

Pure parsing, no I/O: `parse_web_form` takes the body bytes and request facts
and returns the envelope, or raises `BadRecordError` naming what is wrong.
The HTTP handler (ingest_adapters/http_app.py) publishes the envelope and
answers 202 once Kafka acknowledged it; anything refused here gets a 4xx and
a dead letter on `dlq.web_form`.

Idempotency: a request with an `Idempotency-Key` header gets an event id
derived from (form, key), so a retried post is the same event and the same lead.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from leadflow.strict_json import load_object
from schemas import RawLead

STEP = steps.WEB_FORM
SOURCE_SYSTEM = "web_form"
MAX_FIELDS = 200
MAX_KEY_CHARS = 200
_EVENT_NAMESPACE = uuid.UUID("a3c9e1d4-7f2b-4b6a-9e0d-1c5f8a2b3d47")
_CONTEXT_HEADERS = {"origin": "Origin", "referer": "Referer", "user_agent": "User-Agent"}


@dataclass(frozen=True)
class WebFormRequest:
    """What the handler knows about one request, as plain values."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]
    form_id: str | None
    received_at: datetime
    remote: str | None = None


def event_id_for(form_id: str | None, idempotency_key: str | None) -> str:
    """Same (form, key) → same event id; no key → a fresh one."""
    if not idempotency_key:
        return str(uuid.uuid4())
    return stable_id(_EVENT_NAMESPACE, f"{SOURCE_SYSTEM}|{form_id or ''}|{idempotency_key}")


def _as_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    raise BadRecordError(
        "invalid_fields",
        f"field {name!r} must be text, a number or a list",
        {name: "must be text, a number, true/false or a list of those"},
    )


def _parse_json(text: str) -> dict[str, str]:
    return {str(key): _as_text(str(key), value) for key, value in load_object(text).items()}


def _parse_urlencoded(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecordError("invalid_form", f"body is not a valid form: {exc}") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        # A repeated field (checkbox groups) keeps every value.
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """Text parts of a multipart/form-data body; file parts are refused by name."""
    if "boundary=" not in content_type:
        raise BadRecordError("invalid_form", "multipart body without a boundary parameter")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart() or message.defects:
        raise BadRecordError("invalid_form", "body is not valid multipart/form-data")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise BadRecordError("invalid_form", "a multipart part has no field name")
        if part.get_filename() is not None:
            raise BadRecordError(
                "invalid_fields", f"field {name!r} is a file", {name: "files are not accepted"}
            )
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        charset = part.get_content_charset() or "utf-8"
        try:
            value = raw.decode(charset)
        except (LookupError, UnicodeDecodeError) as exc:
            raise BadRecordError(
                "invalid_encoding", f"field {name!r} is not valid {charset}"
            ) from exc
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
        if len(fields) > MAX_FIELDS:
            raise BadRecordError("too_many_fields", f"more than {MAX_FIELDS} fields")
    return fields


def _check_text(fields: Mapping[str, str]) -> None:
    problems: dict[str, str] = {}
    if len(fields) > MAX_FIELDS:
        raise BadRecordError("too_many_fields", f"more than {MAX_FIELDS} fields")
    for key, value in fields.items():
        if len(key) > MAX_KEY_CHARS:
            problems[key[:40] + "…"] = f"field name longer than {MAX_KEY_CHARS} characters"
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                problems[key.encode("utf-8", "replace").decode()] = (
                    "contains invalid Unicode (a lone surrogate)"
                )
    if problems:
        raise BadRecordError(
            "invalid_fields", "; ".join(f"{k}: {v}" for k, v in problems.items()), problems
        )


def parse_web_form(request: WebFormRequest) -> RawLead:
    """The envelope for one form post; raises BadRecordError with the reason and fields."""
    media_type = request.content_type.split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        fields = _parse_multipart(request.body, request.content_type)
    elif media_type in ("application/json", "application/x-www-form-urlencoded"):
        try:
            text = request.body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadRecordError("invalid_encoding", f"body is not UTF-8 ({exc.reason})") from exc
        parse = _parse_json if media_type == "application/json" else _parse_urlencoded
        fields = parse(text)
    else:
        raise BadRecordError(
            "unsupported_media_type",
            f"content type {media_type or '(none)'} is not accepted; send application/json, "
            "application/x-www-form-urlencoded or multipart/form-data",
        )
    _check_text(fields)
    key = request.headers.get("Idempotency-Key") or None
    context = {
        name: request.headers[header]
        for name, header in _CONTEXT_HEADERS.items()
        if request.headers.get(header)
    }
    context["content_type"] = media_type
    if request.remote:
        context["remote"] = request.remote
    return RawLead(
        event_id=event_id_for(request.form_id, key),
        channel="web",
        source_system=SOURCE_SYSTEM,
        received_at=request.received_at,
        idempotency_key=key,
        form_id=request.form_id,
        fields=fields,
        context=context,
    )
