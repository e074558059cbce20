"""Call-center formats: Twilio status callbacks (signed), generic JSON, Asterisk AMI Cdr."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from ingest_adapters.call_center import (
    parse_ami_cdr,
    parse_generic,
    parse_twilio,
    twilio_signature,
)
from leadflow.errors import BadRecordError

URL = "https://leads.example.com/v1/calls/twilio"
TOKEN = "twilio-auth-token"
CALLBACK = {
    "AccountSid": "AC00000000000000000000000000000000", "CallSid": "CA1234567890",
    "From": "+8613800138000", "To": "+862161234567", "CallStatus": "completed",
    "CallDuration": "95", "Direction": "inbound", "SequenceNumber": "3",
    "Timestamp": "Mon, 02 Mar 2026 01:01:35 +0000",
}  # fmt: skip


def signed(params: dict[str, str]) -> tuple[bytes, str]:
    # Written from Twilio's description: URL, then each name and value in name order.
    data = URL + "".join(name + params[name] for name in sorted(params))
    mac = hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    return urlencode(params).encode(), base64.b64encode(mac).decode()


def test_a_signed_completed_callback() -> None:
    body, signature = signed(CALLBACK)
    assert signature == twilio_signature(TOKEN, URL, CALLBACK)
    event = parse_twilio(body, signature, URL, TOKEN, "CN")
    assert (event.caller, event.status, event.duration_s) == ("+8613800138000", "completed", 95)
    assert event.started_at == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 95 s before the end
    assert event.event_id == "twilio:CA1234567890:3"  # a redelivery is the same event
    assert event.connected


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: {**p, "CallDuration": "9500"},  # body changed after signing
        lambda p: {**p, "Extra": "x"},
    ],
)
def test_a_tampered_callback_is_refused(tamper: object) -> None:
    _, signature = signed(CALLBACK)
    body = urlencode(tamper(CALLBACK)).encode()  # type: ignore[operator]
    with pytest.raises(BadRecordError) as caught:
        parse_twilio(body, signature, URL, TOKEN, "CN")
    assert caught.value.reason == "bad_signature"


def test_outbound_calls_key_on_the_number_dialled() -> None:
    params = {
        **CALLBACK,
        "Direction": "outbound-api",
        "From": "+862161234567",
        "To": "+14155552671",
        "CallStatus": "ringing",
    }
    event = parse_twilio(*signed(params), URL, TOKEN, "CN")
    assert (event.direction, event.caller, event.status) == ("outbound", "+14155552671", "ringing")


def test_wrong_or_missing_signature_and_fields() -> None:
    body, _ = signed(CALLBACK)
    with pytest.raises(BadRecordError, match="does not match"):
        parse_twilio(body, None, URL, TOKEN, "CN")
    params = {k: v for k, v in CALLBACK.items() if k != "From"}
    with pytest.raises(BadRecordError, match="missing From"):
        parse_twilio(*signed(params), URL, TOKEN, "CN")


def test_generic_json_call() -> None:
    event = parse_generic(
        b'{"call_id": "c-9", "from": "021 6123 4567", "to": "13800138000", '
        b'"direction": "outbound", "status": "completed", "started_at": "2026-03-02T09:00:00Z",'
        b' "duration_s": 61, "agent_id": "liu.yang", "outcome": "interested"}',
        "CN",
    )
    assert (event.caller, event.outcome, event.agent_id) == (
        "+8613800138000",
        "interested",
        "liu.yang",
    )
    with pytest.raises(BadRecordError, match="missing started_at"):
        parse_generic(
            b'{"call_id": "c", "from": "1", "to": "2", "direction": "inbound", '
            b'"status": "completed"}',
            "CN",
        )
    with pytest.raises(BadRecordError) as caught:
        parse_generic(
            b'{"call_id": "c", "from": "13800138000", "to": "2", '
            b'"direction": "sideways", "status": "completed", '
            b'"started_at": "2026-03-02T09:00:00Z"}',
            "CN",
        )
    assert caught.value.reason == "invalid_fields"


def test_asterisk_cdr_in_the_pbx_time_zone() -> None:
    cdr = (
        b"Event: Cdr\r\nUniqueID: 1772413200.42\r\nSource: 13800138000\r\n"
        b"Destination: 8001\r\nStartTime: 2026-03-02 09:00:00\r\n"
        b"AnswerTime: 2026-03-02 09:00:05\r\nEndTime: 2026-03-02 09:01:40\r\n"
        b"Duration: 100\r\nBillableSeconds: 95\r\nDisposition: ANSWERED\r\n\r\n"
    )
    event = parse_ami_cdr(cdr, "CN", "Asia/Shanghai")
    assert event.started_at == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    assert (event.direction, event.caller, event.status, event.duration_s) == (
        "inbound",
        "+8613800138000",
        "completed",
        95,
    )
    outbound = cdr.replace(b"Source: 13800138000", b"Source: 8001").replace(
        b"Destination: 8001", b"Destination: 13900139000"
    )
    assert parse_ami_cdr(outbound, "CN", "Asia/Shanghai").caller == "+8613900139000"
    with pytest.raises(BadRecordError, match="only AMI Cdr"):
        parse_ami_cdr(b"Event: Hangup\r\n", "CN", "Asia/Shanghai")


# --- input domains: every hostile value is a BadRecordError naming the sender's field ---------


def twilio_refusal(**changes: str) -> BadRecordError:
    params = {**CALLBACK, **changes}
    with pytest.raises(BadRecordError) as caught:
        parse_twilio(*signed(params), URL, TOKEN, "CN")
    return caught.value


@pytest.mark.parametrize(
    ("duration", "says"),
    [
        ("1" * 30, "CallDuration 111111111111… (30 digits) is longer than 86400 s"),
        ("9" * 5000, "(5000 digits)"),
        ("86401", "CallDuration 86401 is longer than 86400 s (LIMITS_MAX_CALL_DURATION_S)"),
        ("-5", "is not whole seconds"),
        ("1e3", "is not whole seconds"),
        ("٣", "is not whole seconds"),  # a digit, but not an ASCII one
    ],
)
def test_twilio_call_duration_out_of_domain_is_422_naming_the_field(
    duration: str, says: str
) -> None:
    error = twilio_refusal(CallDuration=duration)
    assert error.reason == "invalid_fields"
    assert list(error.fields) == ["CallDuration"]
    assert says in error.message


def test_twilio_call_duration_at_the_limit_is_accepted() -> None:
    params = {**CALLBACK, "CallDuration": "86400"}
    assert parse_twilio(*signed(params), URL, TOKEN, "CN").duration_s == 86_400


@pytest.mark.parametrize(
    ("timestamp", "rule"),
    [
        ("Mon, 01 Jan 1900 00:00:00 +0000", "LIMITS_EARLIEST_TIME"),
        ("Wed, 01 Jan 1000 00:00:00 +0000", "LIMITS_EARLIEST_TIME"),
        ("Fri, 01 Jan 2500 00:00:00 +0000", "LIMITS_FUTURE_SKEW_S"),
        ("Fri, 31 Dec 9999 23:59:59 -0000", "LIMITS_FUTURE_SKEW_S"),
        ("tomorrow", "RFC 2822"),
    ],
)
def test_twilio_timestamps_out_of_the_window_are_refused(timestamp: str, rule: str) -> None:
    error = twilio_refusal(Timestamp=timestamp)
    assert error.reason == "invalid_fields"
    assert list(error.fields) == ["Timestamp"]
    assert rule in error.message


def test_twilio_sequence_numbers_are_whole_numbers() -> None:
    error = twilio_refusal(SequenceNumber="3" * 40)
    assert list(error.fields) == ["SequenceNumber"]
    assert twilio_refusal(SequenceNumber="../x").fields.keys() == {"SequenceNumber"}


GENERIC = (
    b'{"call_id": "c-9", "from": "13800138000", "to": "021 6123 4567", '
    b'"direction": "inbound", "status": "completed", "started_at": "2026-03-02T09:00:00Z"'
)


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        (b', "duration_s": -1', "duration_s", "duration_s -1 is negative"),
        (b', "duration_s": ' + b"1" * 30, "duration_s", "(30 digits) is longer than 86400 s"),
        (b', "duration_s": 1e308', "duration_s", ""),
        (b', "ended_at": "9999-12-31T23:59:59Z"', "ended_at", "LIMITS_FUTURE_SKEW_S"),
        (b', "outcome": "' + b"x" * 201 + b'"', "outcome", "at most 200 characters"),
    ],
)
def test_generic_json_out_of_domain_names_the_field(extra: bytes, field: str, says: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        parse_generic(GENERIC + extra + b"}", "CN")
    assert caught.value.reason == "invalid_fields"
    assert field in caught.value.fields
    assert says in caught.value.fields[field]


def test_generic_json_started_at_before_the_window() -> None:
    body = GENERIC.replace(b"2026-03-02T09:00:00Z", b"1000-01-01T00:00:00Z") + b"}"
    with pytest.raises(BadRecordError) as caught:
        parse_generic(body, "CN")
    assert caught.value.fields == {
        "started_at": "started_at 1000-01-01T00:00:00Z is before 2000-01-01T00:00:00Z "
        "(LIMITS_EARLIEST_TIME)"
    }


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"call_id": ' + b"[" * 100_000, "nested too deeply"),
        (GENERIC + b', "duration_s": NaN}', "NaN"),
        (GENERIC + b', "duration_s": Infinity}', "Infinity"),
        (GENERIC + b', "call_id": "again"}', "twice"),
    ],
)
def test_generic_json_is_strict(body: bytes, says: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        parse_generic(body, "CN")
    assert caught.value.reason == "invalid_json"
    assert says in caught.value.message


AMI = (
    b"Event: Cdr\r\nUniqueID: 1772413200.42\r\nSource: 13800138000\r\n"
    b"Destination: 8001\r\nStartTime: 2026-03-02 09:00:00\r\n"
    b"EndTime: 2026-03-02 09:01:40\r\nBillableSeconds: 95\r\nDisposition: ANSWERED\r\n\r\n"
)


@pytest.mark.parametrize(
    ("old", "new", "field", "zone"),
    [
        (b"StartTime: 2026-03-02 09:00:00", b"StartTime: 0001-01-01 00:00:00", "StartTime", ""),
        (b"StartTime: 2026-03-02 09:00:00", b"StartTime: 1900-01-01 00:00:00", "StartTime", ""),
        (b"EndTime: 2026-03-02 09:01:40", b"EndTime: 9999-12-31 23:59:59", "EndTime", "NY"),
        (b"EndTime: 2026-03-02 09:01:40", b"EndTime: 2500-01-01 00:00:00", "EndTime", ""),
        (b"BillableSeconds: 95", b"BillableSeconds: " + b"9" * 30, "BillableSeconds", ""),
        (b"BillableSeconds: 95", b"BillableSeconds: -95", "BillableSeconds", ""),
    ],
)
def test_asterisk_out_of_domain_is_refused_never_an_overflow(
    old: bytes, new: bytes, field: str, zone: str
) -> None:
    with pytest.raises(BadRecordError) as caught:
        parse_ami_cdr(AMI.replace(old, new), "CN", "America/New_York" if zone else "Asia/Shanghai")
    assert caught.value.reason == "invalid_fields"
    assert field in caught.value.fields
