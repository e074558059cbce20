"""Adapter `call_center`: telephony events become `CallEvent`s on `events.calls`.

Three formats, pure parsing, no I/O:

- Twilio Voice status callbacks (form-encoded `CallSid`, `From`, `To`,
  `CallStatus`, `CallDuration`, `Direction`, `Timestamp`, `SequenceNumber`,
  recording fields), verified by `X-Twilio-Signature`: Base64 HMAC-SHA1,
  keyed by the auth token, of the configured public URL followed by every
  POST parameter name and value in name order; compared in constant time.
- A generic JSON call event (`call_id`, `from`, `to`, `direction`, `status`,
  `started_at`, `ended_at`, `duration_s`, `agent_id`, `outcome`, `notes`).
- Asterisk AMI `Cdr` events as relayed text (`UniqueID`, `Source`,
  `Destination`, `StartTime`, `AnswerTime`, `EndTime`, `Duration`,
  `BillableSeconds`, `Disposition`).

The key on `events.calls` is the caller's E.164 number (the lead's side of
the call). Event ids come from the provider's call id and callback, so a
redelivered callback is the same event and changes nothing downstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from leadflow import stages
from leadflow.errors import BadRecordError
from schemas import CallEvent
from streams.normalize import normalize_phone

STAGE = stages.CALL_CENTER

_TWILIO_STATUS = {
    "queued": "ringing", "initiated": "ringing", "ringing": "ringing",
    "in-progress": "in-progress", "answered": "in-progress", "completed": "completed",
    "busy": "busy", "no-answer": "no-answer", "failed": "failed", "canceled": "canceled",
}  # fmt: skip
_AMI_DISPOSITION = {
    "ANSWERED": "completed",
    "NO ANSWER": "no-answer",
    "BUSY": "busy",
    "FAILED": "failed",
    "CONGESTION": "failed",
}


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Twilio sends for `params` posted to `url`."""
    payload = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _e164(number: str, region: str, field: str) -> str:
    try:
        return normalize_phone(number, region)
    except ValueError as exc:
        raise BadRecordError("invalid_fields", f"{field}: {exc}", {field: str(exc)}) from exc


def parse_twilio(
    body: bytes, signature: str | None, url: str, auth_token: str, region: str
) -> CallEvent:
    try:
        params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecordError("invalid_form", f"body is not a form: {exc}") from exc
    expected = twilio_signature(auth_token, url, params)
    if not signature or not hmac.compare_digest(expected, signature):
        raise BadRecordError("bad_signature", "X-Twilio-Signature does not match this body")
    missing = [f for f in ("CallSid", "From", "To", "CallStatus") if not params.get(f)]
    if missing:
        raise BadRecordError(
            "invalid_fields", f"missing {', '.join(missing)}", dict.fromkeys(missing, "required")
        )
    status = _TWILIO_STATUS.get(params["CallStatus"])
    if status is None:
        raise BadRecordError(
            "invalid_fields",
            f"unknown CallStatus {params['CallStatus']!r}",
            {"CallStatus": "not a Twilio call status"},
        )
    inbound = params.get("Direction", "inbound") == "inbound"
    caller = _e164(params["From"] if inbound else params["To"], region, "From" if inbound else "To")
    try:
        at = (
            parsedate_to_datetime(params["Timestamp"])
            if params.get("Timestamp")
            else datetime.now(UTC)
        )
        duration = int(params.get("CallDuration") or 0)
    except (TypeError, ValueError) as exc:
        raise BadRecordError(
            "invalid_fields",
            f"Timestamp or CallDuration: {exc}",
            {"Timestamp": "RFC 2822 date", "CallDuration": "whole seconds"},
        ) from exc
    started = at - timedelta(seconds=duration) if status == "completed" else at
    sequence = params.get("SequenceNumber") or params["CallStatus"]
    return CallEvent(
        event_id=f"twilio:{params['CallSid']}:{sequence}",
        call_id=params["CallSid"],
        direction="inbound" if inbound else "outbound",
        caller=caller,
        status=status,
        started_at=started.astimezone(UTC),
        ended_at=at.astimezone(UTC)
        if status in ("completed", "busy", "no-answer", "failed", "canceled")
        else None,
        duration_s=duration,
        source_system="twilio",
        notes=params.get("RecordingUrl") or None,
    )


def parse_generic(body: bytes, region: str) -> CallEvent:
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRecordError("invalid_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRecordError("invalid_json", "body must be a JSON object")
    missing = [
        f
        for f in ("call_id", "from", "to", "direction", "status", "started_at")
        if data.get(f) in (None, "")
    ]
    if missing:
        raise BadRecordError(
            "invalid_fields", f"missing {', '.join(missing)}", dict.fromkeys(missing, "required")
        )
    inbound = data["direction"] == "inbound"
    field = "from" if inbound else "to"
    try:
        return CallEvent(
            event_id=f"call:{data['call_id']}:{data['status']}",
            call_id=str(data["call_id"]),
            direction=data["direction"],
            caller=_e164(str(data[field]), region, field),
            status=data["status"],
            started_at=data["started_at"],
            ended_at=data.get("ended_at"),
            duration_s=data.get("duration_s") or 0,
            agent_id=data.get("agent_id"),
            outcome=data.get("outcome"),
            notes=data.get("notes"),
            source_system="call_center",
        )
    except ValueError as exc:  # pydantic's ValidationError names each field
        raise BadRecordError(
            "invalid_fields", str(exc).splitlines()[0], {"body": str(exc)}
        ) from exc


def parse_ami_cdr(body: bytes, region: str, zone: str) -> CallEvent:
    """One AMI `Cdr` event; AMI times are the PBX's local time in `zone`."""
    try:
        lines = body.decode("utf-8").replace("\r\n", "\n").split("\n")
    except UnicodeDecodeError as exc:
        raise BadRecordError("invalid_encoding", "AMI event is not UTF-8") from exc
    fields = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if k.strip()
    }
    if fields.get("Event") != "Cdr":
        raise BadRecordError(
            "unsupported_event", "only AMI Cdr events are taken", {"Event": "must be Cdr"}
        )
    missing = [
        f
        for f in ("UniqueID", "Source", "Destination", "StartTime", "Disposition")
        if not fields.get(f)
    ]
    if missing:
        raise BadRecordError(
            "invalid_fields", f"missing {', '.join(missing)}", dict.fromkeys(missing, "required")
        )
    status = _AMI_DISPOSITION.get(fields["Disposition"].upper())
    if status is None:
        raise BadRecordError(
            "invalid_fields",
            f"unknown Disposition {fields['Disposition']!r}",
            {"Disposition": "ANSWERED, NO ANSWER, BUSY or FAILED"},
        )
    # A short source is one of our extensions: then the lead is the number dialled.
    outbound = fields["Source"].isdigit() and len(fields["Source"]) <= 5
    field = "Destination" if outbound else "Source"
    local = ZoneInfo(zone)
    try:
        started = datetime.fromisoformat(fields["StartTime"]).replace(tzinfo=local)
        ended = (
            datetime.fromisoformat(fields["EndTime"]).replace(tzinfo=local)
            if fields.get("EndTime")
            else None
        )
        billable = int(fields.get("BillableSeconds") or 0)
    except ValueError as exc:
        raise BadRecordError(
            "invalid_fields", f"times or seconds: {exc}", {"StartTime": "YYYY-MM-DD HH:MM:SS"}
        ) from exc
    return CallEvent(
        event_id=f"ami:{fields['UniqueID']}",
        call_id=fields["UniqueID"],
        direction="outbound" if outbound else "inbound",
        caller=_e164(fields[field], region, field),
        status=status,
        started_at=started.astimezone(UTC),
        ended_at=ended.astimezone(UTC) if ended else None,
        duration_s=billable,
        source_system="asterisk",
    )
