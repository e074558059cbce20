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

Every refusal is a BadRecordError naming the sender's own field: times
outside [LIMITS_EARLIEST_TIME, now + LIMITS_FUTURE_SKEW_S], durations that
are not whole seconds within 0 and LIMITS_MAX_CALL_DURATION_S (a 30-digit
`CallDuration` included), JSON that is not strict (`strict_json`), and every
other rule of `CallEvent` (`invalid_fields`, so 422). Nothing here may raise
anything else, so no body can make the endpoint answer 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.normalize import normalize_phone
from leadflow.strict_json import load_object
from schemas import CallEvent
from schemas.limits import active, check_duration, check_event_time

STEP = steps.CALL_CENTER

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


# Seconds and sequence numbers are short: more digits than this are refused before int().
_MAX_DIGITS = 18


def _invalid(field: str, problem: str) -> BadRecordError:
    return BadRecordError("invalid_fields", f"{field}: {problem}", {field: problem})


def _out_of_domain(field: str, exc: ValueError) -> BadRecordError:
    """A limits rule's refusal, whose text already names the field, the value and the rule."""
    return BadRecordError("invalid_fields", str(exc), {field: str(exc)})


def _whole_number(text: str, field: str) -> int:
    """`text` as a non-negative whole number of at most _MAX_DIGITS digits."""
    if not (text.isascii() and text.isdigit()):
        raise _invalid(field, f"{text[:40]!r} is not a whole number (digits only)")
    digits = len(text.lstrip("0"))
    if digits > _MAX_DIGITS:
        raise _invalid(field, f"{text[:12]}… has {digits} digits; at most {_MAX_DIGITS}")
    return int(text)


def _seconds(text: str | None, field: str) -> int:
    """Whole seconds within 0 and LIMITS_MAX_CALL_DURATION_S; absent or empty is 0."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise _invalid(field, f"{text[:40]!r} is not whole seconds (digits only)")
    digits = len(text.lstrip("0"))
    if digits > _MAX_DIGITS:  # far beyond any limit; int() of it could itself be refused
        problem = (
            f"{field} {text.lstrip('0')[:12]}… ({digits} digits) is longer than "
            f"{active().max_call_duration_s} s (LIMITS_MAX_CALL_DURATION_S)"
        )
        raise BadRecordError("invalid_fields", problem, {field: problem})
    try:
        return check_duration(field, int(text))
    except ValueError as exc:
        raise _out_of_domain(field, exc) from exc


def _in_window(moment: datetime, field: str) -> datetime:
    """`moment` if inside the time window; a BadRecordError naming `field` if not."""
    try:
        return check_event_time(field, moment)
    except ValueError as exc:
        raise _out_of_domain(field, exc) from exc


def _call_event(sent_as: Mapping[str, str], **values: Any) -> CallEvent:
    """The CallEvent of `values`; each problem named by the sender's field (`sent_as`)."""
    try:
        return CallEvent(**values)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "body"
            fields.setdefault(sent_as.get(name, name), error["msg"])
        raise BadRecordError(
            "invalid_fields", "; ".join(f"{k}: {v}" for k, v in fields.items()), fields
        ) from exc


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
    party = "From" if inbound else "To"
    caller = _e164(params[party], region, party)
    duration = _seconds(params.get("CallDuration"), "CallDuration")
    sequence = params.get("SequenceNumber") or params["CallStatus"]
    if params.get("SequenceNumber"):
        _whole_number(params["SequenceNumber"], "SequenceNumber")
    at = _in_window(_rfc2822(params.get("Timestamp")), "Timestamp")
    try:
        started = at - timedelta(seconds=duration) if status == "completed" else at
    except OverflowError as exc:
        raise _invalid("Timestamp", "is too close to the start of the calendar") from exc
    sent_as = {
        "event_id": "CallSid",
        "call_id": "CallSid",
        "caller": party,
        "started_at": "Timestamp",
        "ended_at": "Timestamp",
        "duration_s": "CallDuration",
        "notes": "RecordingUrl",
    }
    return _call_event(
        sent_as,
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


def _rfc2822(text: str | None) -> datetime:
    """Twilio's `Timestamp` (RFC 2822; `-0000` is UTC); now when absent."""
    if not text:
        return datetime.now(UTC)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _invalid("Timestamp", f"{text[:60]!r} is not an RFC 2822 date") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_generic(body: bytes, region: str) -> CallEvent:
    data = load_object(body)
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
    return _call_event(
        {"caller": field, "event_id": "call_id"},
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
    started = _ami_time(fields["StartTime"], local, "StartTime")
    ended = _ami_time(fields["EndTime"], local, "EndTime") if fields.get("EndTime") else None
    billable = _seconds(fields.get("BillableSeconds"), "BillableSeconds")
    sent_as = {
        "event_id": "UniqueID",
        "call_id": "UniqueID",
        "caller": field,
        "started_at": "StartTime",
        "ended_at": "EndTime",
        "duration_s": "BillableSeconds",
    }
    return _call_event(
        sent_as,
        event_id=f"ami:{fields['UniqueID']}",
        call_id=fields["UniqueID"],
        direction="outbound" if outbound else "inbound",
        caller=_e164(fields[field], region, field),
        status=status,
        started_at=started,
        ended_at=ended,
        duration_s=billable,
        source_system="asterisk",
    )


def _ami_time(text: str, local: ZoneInfo, field: str) -> datetime:
    """An AMI time (the PBX's local time in `local`) in UTC, inside the time window."""
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=local).astimezone(UTC)
    except ValueError as exc:
        raise _invalid(field, f"{text[:40]!r} is not YYYY-MM-DD HH:MM:SS") from exc
    except OverflowError as exc:  # year 1 or 9999 moved across the date line
        raise _invalid(field, f"{text[:40]!r} is out of the calendar's range") from exc
    return _in_window(moment, field)
