"""Input domains: each hostile value the security review found is refused, naming the field.

Times outside [LIMITS_EARLIEST_TIME, now + LIMITS_FUTURE_SKEW_S], amounts that
are not finite or beyond LIMITS_MAX_AMOUNT, durations below 0 or above
LIMITS_MAX_CALL_DURATION_S, names of any length, NaN/Infinity and deep nesting
in JSON, and records too large for Kafka. Boundary values are accepted.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from pydantic import BaseModel, ValidationError

from ingest_adapters.publisher import DEFAULT_MAX_MESSAGE_BYTES, Publisher, record_size
from ingest_adapters.social.linkedin import parse_linkedin_notification
from leadflow.dead_letters import (
    KEEP_WHOLE_MAX_BYTES,
    MAX_PROBLEMS,
    TRUNCATED_KEEP_BYTES,
    dead_letter_for,
)
from leadflow.errors import BadRecordError, RetriableError, TooLargeError
from leadflow.metrics import Metrics
from leadflow.settings import LimitsSettings
from leadflow.strict_json import MAX_DEPTH, load_object, nesting_depth
from schemas import CallEvent, CrmEvent, DeadLetter, DeadLetterRow, EngagementEvent, RawLead, limits
from schemas.limits import InputLimits, configure, limits_in_force
from schemas.rows import TRUNCATED_PROBLEM

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SOCIAL_DATA = Path(__file__).parents[1] / "data" / "social"
WHEN = "2026-03-02T09:00:00Z"


@pytest.fixture(autouse=True)
def fixed_now() -> Any:
    """The default limits, with NOW as now, so boundaries are exact."""
    with limits_in_force(InputLimits(), clock=lambda: NOW) as active:
        yield active


def crm(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": "crm-1",
        "lead_id": "lead-1",
        "action": "convert",
        "occurred_at": WHEN,
        "amount": 1200.0,
        "currency": "EUR",
        **changes,
    }


def call(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": "call-1",
        "call_id": "c-1",
        "direction": "inbound",
        "caller": "+8613800138000",
        "status": "completed",
        "started_at": WHEN,
        "duration_s": 60,
        **changes,
    }


def engagement(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": "eng-1",
        "kind": "webinar_attended",
        "occurred_at": WHEN,
        "email": "ada@example.com",
        **changes,
    }


def raw_lead(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": "raw-1",
        "channel": "web",
        "source_system": "web_form",
        "received_at": WHEN,
        "fields": {"email": "ada@example.com"},
        **changes,
    }


def refusal(model: type[BaseModel], data: dict[str, Any]) -> dict[str, str]:
    """The field → message of every problem, validated as the stream does (from JSON bytes)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(json.dumps(data))
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


# --- limits: defaults, configure -----------------------------------------------------------


def test_the_defaults_are_the_settings_defaults() -> None:
    assert InputLimits.of(LimitsSettings()) == InputLimits()


def test_configure_takes_the_settings_and_returns_the_previous_limits() -> None:
    settings = LimitsSettings(
        earliest_time=datetime(2020, 1, 1, tzinfo=UTC),
        future_skew_s=60,
        max_amount=1000,
        max_call_duration_s=3600,
    )
    previous = configure(settings)
    try:
        assert limits.active() == InputLimits.of(settings)
        problems = refusal(CrmEvent, crm(occurred_at="2019-06-01T00:00:00Z", amount=1001))
        assert problems["occurred_at"] == (
            "occurred_at 2019-06-01T00:00:00Z is before 2020-01-01T00:00:00Z (LIMITS_EARLIEST_TIME)"
        )
        assert "LIMITS_MAX_AMOUNT" in problems["amount"]
        assert (
            "LIMITS_MAX_CALL_DURATION_S" in refusal(CallEvent, call(duration_s=3601))["duration_s"]
        )
        assert (
            "LIMITS_FUTURE_SKEW_S"
            in refusal(CrmEvent, crm(occurred_at=(NOW + timedelta(seconds=61)).isoformat()))[
                "occurred_at"
            ]
        )
    finally:
        configure(previous)
    assert limits.active() == previous


def test_limits_no_input_could_meet_are_refused() -> None:
    with pytest.raises(ValueError, match="LIMITS_FUTURE_SKEW_S"):
        InputLimits(future_skew_s=-1)
    with pytest.raises(ValueError, match="LIMITS_MAX_AMOUNT"):
        InputLimits(max_amount=float("inf"))
    with pytest.raises(ValueError, match="LIMITS_MAX_CALL_DURATION_S"):
        InputLimits(max_call_duration_s=0)
    naive = InputLimits(earliest_time=datetime(2010, 1, 1))
    assert naive.earliest_time == datetime(2010, 1, 1, tzinfo=UTC)


# --- times ----------------------------------------------------------------------------------

HOSTILE_TIMES = [
    "1000-01-01T00:00:00Z",
    "1900-01-01T00:00:00Z",
    "2500-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
]


@pytest.mark.parametrize("when", HOSTILE_TIMES)
@pytest.mark.parametrize(
    ("model", "make", "field"),
    [
        (CrmEvent, crm, "occurred_at"),
        (EngagementEvent, engagement, "occurred_at"),
        (CallEvent, call, "started_at"),
        (CallEvent, call, "ended_at"),
        (RawLead, raw_lead, "received_at"),
    ],
)
def test_times_out_of_the_window_are_refused_naming_the_field(
    model: type[BaseModel], make: Any, field: str, when: str
) -> None:
    problems = refusal(model, make(**{field: when}))
    assert list(problems) == [field]
    message = problems[field]
    assert message.startswith(f"{field} {when} is ")
    rule = "LIMITS_EARLIEST_TIME" if when < "2000" else "LIMITS_FUTURE_SKEW_S"
    assert message.endswith(f"({rule})")


def test_the_messages_name_the_field_the_value_and_the_rule() -> None:
    assert refusal(CallEvent, call(started_at="1900-01-01T00:00:00Z"))["started_at"] == (
        "started_at 1900-01-01T00:00:00Z is before 2000-01-01T00:00:00Z (LIMITS_EARLIEST_TIME)"
    )
    assert refusal(CrmEvent, crm(occurred_at="2500-01-01T00:00:00Z"))["occurred_at"] == (
        "occurred_at 2500-01-01T00:00:00Z is more than 86400 s after now "
        "(2026-11-29T12:00:00Z) (LIMITS_FUTURE_SKEW_S)"
    )


@pytest.mark.parametrize(
    ("when", "accepted"),
    [
        ("2000-01-01T00:00:00Z", True),
        ("1999-12-31T23:59:59.999999Z", False),
        ("2000-01-01T08:00:00+08:00", True),  # the same instant in another zone
        ("2000-01-01T07:59:59+08:00", False),
        ("2000-01-01T00:00:00", True),  # no offset: compared as UTC
        ((NOW + timedelta(days=1)).isoformat(), True),
        ((NOW + timedelta(days=1, microseconds=1)).isoformat(), False),
        (NOW.isoformat(), True),
    ],
)
def test_the_window_boundaries(when: str, accepted: bool) -> None:
    data = crm(occurred_at=when)
    if accepted:
        assert CrmEvent.model_validate_json(json.dumps(data)).occurred_at.year in (2000, 2026, 2027)
    else:
        assert "occurred_at" in refusal(CrmEvent, data)


def test_times_in_python_objects_are_checked_too() -> None:
    with pytest.raises(ValidationError, match="LIMITS_EARLIEST_TIME"):
        CallEvent(**call(started_at=datetime(1900, 1, 1, tzinfo=UTC)))
    assert CallEvent(**call(started_at=datetime(2000, 1, 1, tzinfo=UTC))).duration_s == 60


# --- amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("1e308", "amount 1e+308 is larger than 1e+12 in absolute value (LIMITS_MAX_AMOUNT)"),
        ("1000000000000.5", "LIMITS_MAX_AMOUNT"),
        ("1e400", "amount inf is not a finite number"),  # overflows to infinity when parsed
        ("NaN", "amount nan is not a finite number"),
        ("Infinity", "amount inf is not a finite number"),
        ("-Infinity", "amount -inf is not a finite number"),
        ('"nan"', "amount nan is not a finite number"),
        ('"inf"', "amount inf is not a finite number"),
        ("-1", "amount -1 is negative"),
    ],
)
def test_hostile_amounts_are_refused(token: str, says: str) -> None:
    body = json.dumps(crm(amount=0)).replace('"amount": 0', f'"amount": {token}')
    with pytest.raises(ValidationError) as caught:
        CrmEvent.model_validate_json(body)
    [error] = caught.value.errors()
    assert error["loc"] == ("amount",)
    assert says in error["msg"]


@pytest.mark.parametrize("amount", [0, 0.01, 1e12, 999_999_999_999.99])
def test_amounts_up_to_the_limit_are_accepted(amount: float) -> None:
    assert CrmEvent.model_validate_json(json.dumps(crm(amount=amount))).amount == amount


def test_two_largest_amounts_still_sum_to_a_finite_number() -> None:
    largest = CrmEvent.model_validate_json(json.dumps(crm(amount=1e12))).amount
    assert largest is not None
    assert largest + largest < float("inf")


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "says"),
    [
        (-1, "duration_s -1 is negative"),
        (86_401, "duration_s 86401 is longer than 86400 s (LIMITS_MAX_CALL_DURATION_S)"),
        (10**30, "duration_s 100000000000… (31 digits) is longer than 86400 s"),
    ],
)
def test_hostile_durations_are_refused(duration: int, says: str) -> None:
    assert says in refusal(CallEvent, call(duration_s=duration))["duration_s"]


@pytest.mark.parametrize("duration", [0, 1, 86_400])
def test_durations_within_the_limit_are_accepted(duration: int) -> None:
    assert CallEvent.model_validate_json(json.dumps(call(duration_s=duration))).duration_s == (
        duration
    )


# --- names and labels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "make", "field", "limit"),
    [
        (EngagementEvent, engagement, "kind", 200),
        (EngagementEvent, engagement, "event_id", 300),
        (EngagementEvent, engagement, "lead_id", 200),
        (CrmEvent, crm, "stage", 200),
        (CrmEvent, crm, "reason", 1_000),
        (CrmEvent, crm, "rep_id", 200),
        (CallEvent, call, "outcome", 200),
        (CallEvent, call, "agent_id", 200),
        (CallEvent, call, "notes", 10_000),
        (CallEvent, call, "caller", 64),
    ],
)
def test_names_are_bounded(model: type[BaseModel], make: Any, field: str, limit: int) -> None:
    model.model_validate_json(json.dumps(make(**{field: "x" * limit})))
    assert field in refusal(model, make(**{field: "x" * (limit + 1)}))


def test_a_900_kb_event_name_is_refused() -> None:
    problems = refusal(EngagementEvent, engagement(kind="x" * 900_000))
    assert problems == {"kind": "String should have at most 200 characters"}


def test_properties_are_bounded_in_number_and_length() -> None:
    EngagementEvent.model_validate_json(
        json.dumps(engagement(properties={f"p{i}": "v" * 4_000 for i in range(100)}))
    )
    assert "properties" in refusal(
        EngagementEvent, engagement(properties={f"p{i}": "v" for i in range(101)})
    )
    assert "properties.page" in refusal(
        EngagementEvent, engagement(properties={"page": "v" * 4_001})
    )


# --- the strict JSON loader -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"amount": NaN}', "NaN"),
        (b'{"amount": Infinity}', "Infinity"),
        (b'{"amount": -Infinity}', "-Infinity"),
        (b'{"amount": [1, 2, NaN]}', "NaN"),
        (b'{"amount": 1e400}', "too large for a finite float"),
        (b'{"amount": -1e400}', "too large for a finite float"),
    ],
)
def test_the_loader_refuses_non_finite_numbers(body: bytes, says: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        load_object(body)
    assert caught.value.reason == "invalid_json"
    assert says in caught.value.message


@pytest.mark.parametrize("opening", [b"[", b'{"a":', b'{"a":['])
def test_100000_levels_of_nesting_are_a_clean_error_and_fast(opening: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(BadRecordError) as caught:
        load_object(opening * 100_000)
    assert time.perf_counter() - started < 1.0
    assert caught.value.reason == "invalid_json"
    assert "nested too deeply" in caught.value.message
    assert not isinstance(caught.value.__cause__, RecursionError)


def test_nesting_up_to_the_limit_is_accepted_and_brackets_in_strings_do_not_count() -> None:
    inner = MAX_DEPTH - 1  # the object itself is one level
    assert load_object(b'{"a": ' + b"[" * inner + b"]" * inner + b"}")
    with pytest.raises(BadRecordError, match="nested too deeply"):
        load_object(b'{"a": ' + b"[" * (inner + 1) + b"]" * (inner + 1) + b"}")
    text = '{"a": "[[[[{{{{' + "[" * 1000 + '\\"[", "b": [{}]}'
    assert nesting_depth(text) == 3
    assert load_object(text)["b"] == [{}]


def test_the_loader_still_refuses_what_it_refused() -> None:
    for body, says in [
        (b'{"a": 1, "a": 2}', "twice"),
        (b"\xff", "UTF-8"),
        (b"[1]", "JSON object"),
        (b"{not json", "not valid JSON"),
    ]:
        with pytest.raises(BadRecordError, match=says):
            load_object(body)


def test_pydantic_json_refuses_deep_nesting_itself() -> None:
    """The HTTP event endpoints parse with model_validate_json: deep JSON is a clean 422 there."""
    started = time.perf_counter()
    for model in (CrmEvent, EngagementEvent):
        with pytest.raises(ValidationError) as caught:
            model.model_validate_json(b"[" * 100_000)
        [error] = caught.value.errors()
        assert error["type"] == "json_invalid"
        assert "recursion limit exceeded" in error["msg"]
    assert time.perf_counter() - started < 1.0


# --- social times ---------------------------------------------------------------------------


@pytest.mark.parametrize("millis", [-5, 0, 946_684_799_999, 32_503_680_000_000, 10**30])
def test_linkedin_occurred_at_outside_the_window_is_refused(millis: int) -> None:
    notification = json.loads((SOCIAL_DATA / "linkedin_notification_created.json").read_text())
    body = json.dumps({**notification, "occurredAt": millis}).encode()
    with pytest.raises(BadRecordError) as caught:
        parse_linkedin_notification(body, received_at=NOW)
    assert caught.value.reason == "invalid_fields"
    assert "occurredAt" in caught.value.fields
    in_window = json.dumps({**notification, "occurredAt": 946_684_800_000}).encode()
    [ref] = parse_linkedin_notification(in_window, received_at=NOW)
    assert ref.created_time == datetime(2000, 1, 1, tzinfo=UTC)


# --- too large for Kafka --------------------------------------------------------------------


class FakeProducer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value, key))

        class Metadata:
            partition = 0
            offset = len(self.sent) - 1

        return Metadata()


async def test_a_record_larger_than_kafka_takes_is_never_sent() -> None:
    producer = FakeProducer()
    publisher = Publisher(producer, Metrics(), 1.0)
    assert publisher.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 1_048_576
    with pytest.raises(TooLargeError) as caught:
        await publisher.publish("leads.raw", "k", b"x" * 1_500_000)
    error = caught.value
    assert isinstance(error, BadRecordError)
    assert not isinstance(error, RetriableError)
    assert (error.reason, error.limit) == ("too_large", DEFAULT_MAX_MESSAGE_BYTES)
    assert error.size is not None
    assert error.size > 1_500_000
    assert producer.sent == []
    # The largest value that fits is sent.
    overhead = record_size(b"k", b"") - 0
    fits = b"x" * (DEFAULT_MAX_MESSAGE_BYTES - overhead - 8)
    assert record_size(b"k", fits) <= DEFAULT_MAX_MESSAGE_BYTES
    assert await publisher.publish("leads.raw", "k", fits) == (0, 0)


async def test_kafka_saying_too_large_is_too_large_and_anything_else_is_retriable() -> None:
    metrics = Metrics()
    refused = Publisher(FakeProducer(MessageSizeTooLargeError()), metrics, 1.0)
    with pytest.raises(TooLargeError):
        await refused.publish("events.crm", "k", b"{}")
    down = Publisher(FakeProducer(KafkaTimeoutError()), metrics, 1.0)
    with pytest.raises(RetriableError):
        await down.publish("events.crm", "k", b"{}")
    with pytest.raises(ValueError, match="max_message_bytes"):
        Publisher(FakeProducer(), metrics, 1.0, max_message_bytes=0)


def test_a_small_dead_letter_keeps_the_whole_original_with_size_and_digest() -> None:
    original = b'{"amount": 1e308}'
    letter = dead_letter_for(BadRecordError("invalid_fields", "amount"), original, stage="events")
    assert letter.original == original
    assert not letter.original_truncated
    assert letter.original_bytes == len(original)
    assert letter.original_sha256 == hashlib.sha256(original).hexdigest()
    assert TRUNCATED_PROBLEM not in DeadLetterRow.from_dead_letter(letter).problems


@pytest.mark.parametrize("size", [KEEP_WHOLE_MAX_BYTES + 1, 1_500_000, 5_000_000])
def test_a_large_original_is_kept_truncated_and_the_dead_letter_fits(size: int) -> None:
    original = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
    error = TooLargeError("too large", size=size + 100, limit=DEFAULT_MAX_MESSAGE_BYTES)
    letter = dead_letter_for(error, original, stage="web_form", detail="POST /v1/leads/web")
    assert letter.original_truncated
    assert letter.original == original[:TRUNCATED_KEEP_BYTES]
    assert letter.original_bytes == size
    assert letter.original_sha256 == hashlib.sha256(original).hexdigest()
    assert (letter.reason, letter.error_class) == ("too_large", "TooLargeError")
    key, value = letter.record()
    assert record_size(key, value) <= DEFAULT_MAX_MESSAGE_BYTES
    again = DeadLetter.model_validate_json(value)
    assert again == letter
    row = DeadLetterRow.from_dead_letter(letter)
    assert row.problems[TRUNCATED_PROBLEM] == (
        f"truncated: first {TRUNCATED_KEEP_BYTES} of {size} bytes kept; "
        f"sha256 {letter.original_sha256}"
    )


def test_a_dead_letter_with_hostile_problems_still_fits() -> None:
    fields = {f"\x01{i}" * 1000: "\x00" * 100_000 for i in range(1000)}
    error = BadRecordError("invalid_fields", "\x01" * 1_000_000, fields)
    original = b"\x00" * KEEP_WHOLE_MAX_BYTES  # kept whole were the rest small
    letter = dead_letter_for(error, original, stage="web_form", key=b"k" * 100_000)
    assert len(letter.problems) == MAX_PROBLEMS + 1
    assert record_size(*letter.record()) <= DEFAULT_MAX_MESSAGE_BYTES


def test_dead_letters_written_before_the_size_fields_still_load() -> None:
    old = DeadLetter(
        dead_letter_id="d",
        stage="events",
        reason="invalid_fields",
        error_class="BadRecordError",
        message="m",
        original_b64=DeadLetter.encode_original(b"x"),
        failed_at=NOW,
    ).model_dump_json(exclude={"original_truncated", "original_bytes", "original_sha256"})
    letter = DeadLetter.model_validate_json(old)
    assert (letter.original, letter.original_truncated, letter.original_bytes) == (
        b"x",
        False,
        None,
    )
