"""Input domains: what a time, an amount, a duration or a name sent to leadflow may be.

The schemas are validated both by the HTTP adapters and by the stream stages
that read the same topics (outside systems may publish to `events.crm`
directly), and they do no I/O. So the limits in force live here, in one
module-level `InputLimits`: the defaults equal `LimitsSettings`' defaults, and
the server and the worker call `configure(settings.limits)` once at start.

The Annotated types below check a value against the limits active at
validation time, and every refusal names the field, the value and the rule
(with the setting that moves it), e.g.
`started_at 1900-01-01T00:00:00Z is before 2000-01-01T00:00:00Z (LIMITS_EARLIEST_TIME)`.

- `EventTime`: a moment something happened, inside
  [LIMITS_EARLIEST_TIME, now + LIMITS_FUTURE_SKEW_S]. A time without a UTC
  offset is compared as UTC (and kept as sent).
- `Amount`: a finite number (no NaN, no ±Infinity, no 1e400 overflowing to
  infinity) with |amount| <= LIMITS_MAX_AMOUNT; `NonNegativeAmount` also >= 0.
- `Duration`: whole seconds, 0 <= duration <= LIMITS_MAX_CALL_DURATION_S.
- `Identifier` (<= 200 chars: ids of leads, calls, reps, agents), `EventId`
  (<= 300 chars: an event id an adapter may build from a call id and a status),
  `Name` (<= 200 chars: event kinds, stages, outcomes, systems),
  `CampaignName` (<= 500 chars), `Reason` (<= 1,000 chars: a lost or
  disqualify reason), `Notes` (<= 10,000 chars: call notes, recording URLs),
  `PhoneText` (<= 64), `EmailText` (<= 320, RFC 5321's longest address) and
  `Properties` (<= 100 entries, names <= 200 chars, values <= 4,000 chars,
  the normalize step's own bound on a field). Lengths are fixed, not settings:
  they only keep a label a label.

Only the models that carry input (events, `RawLead`, social refs) use these
types. Stored state (`LeadState`, its `Touch`es and `Engagement`s) is built
from validated input and deliberately not re-checked: state written before a
rule existed, or before an operator moved a limit, must still load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

IDENTIFIER_MAX_CHARS = 200
EVENT_ID_MAX_CHARS = 300
NAME_MAX_CHARS = 200
CAMPAIGN_MAX_CHARS = 500
REASON_MAX_CHARS = 1_000
NOTES_MAX_CHARS = 10_000
PHONE_MAX_CHARS = 64
EMAIL_MAX_CHARS = 320
PROPERTY_MAX_ENTRIES = 100
PROPERTY_VALUE_MAX_CHARS = 4_000

DEFAULT_EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_FUTURE_SKEW_S = 86_400.0
DEFAULT_MAX_AMOUNT = 1e12
DEFAULT_MAX_CALL_DURATION_S = 86_400

# The longest skew that still leaves room for arithmetic on `now + skew`.
_MAX_SKEW_S = 100 * 366 * 86_400.0


class LimitsSource(Protocol):
    """What `configure` reads: `leadflow.settings.LimitsSettings` fits as it is."""

    @property
    def earliest_time(self) -> datetime: ...
    @property
    def future_skew_s(self) -> float: ...
    @property
    def max_amount(self) -> float: ...
    @property
    def max_call_duration_s(self) -> int: ...


@dataclass(frozen=True, slots=True)
class InputLimits:
    """The limits input is checked against; the defaults are the settings' defaults."""

    earliest_time: datetime = DEFAULT_EARLIEST_TIME
    future_skew_s: float = DEFAULT_FUTURE_SKEW_S
    max_amount: float = DEFAULT_MAX_AMOUNT
    max_call_duration_s: int = DEFAULT_MAX_CALL_DURATION_S

    def __post_init__(self) -> None:
        if self.earliest_time.tzinfo is None:
            object.__setattr__(self, "earliest_time", self.earliest_time.replace(tzinfo=UTC))
        if not 0 <= self.future_skew_s <= _MAX_SKEW_S:
            raise ValueError(f"LIMITS_FUTURE_SKEW_S must be within 0 and {_MAX_SKEW_S:g} seconds")
        if not (math.isfinite(self.max_amount) and self.max_amount > 0):
            raise ValueError("LIMITS_MAX_AMOUNT must be a finite number above 0")
        if self.max_call_duration_s <= 0:
            raise ValueError("LIMITS_MAX_CALL_DURATION_S must be above 0")

    @classmethod
    def of(cls, source: LimitsSource) -> InputLimits:
        return cls(
            earliest_time=source.earliest_time,
            future_skew_s=float(source.future_skew_s),
            max_amount=float(source.max_amount),
            max_call_duration_s=int(source.max_call_duration_s),
        )

    def latest_time(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.future_skew_s)


_active = InputLimits()
_clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def configure(limits: LimitsSource) -> InputLimits:
    """Make `limits` (e.g. `settings.limits`) the ones in force; returns the previous ones.

    Call it once at start, before any input is validated. Raises ValueError
    for limits no input could be checked against (a negative skew …).
    """
    global _active
    chosen = limits if isinstance(limits, InputLimits) else InputLimits.of(limits)
    previous, _active = _active, chosen
    return previous


def active() -> InputLimits:
    """The limits in force."""
    return _active


@contextmanager
def limits_in_force(
    limits: LimitsSource, clock: Callable[[], datetime] | None = None
) -> Iterator[InputLimits]:
    """Within the block, `limits` (and, for tests, `clock` as "now") are in force."""
    global _clock
    previous, previous_clock = configure(limits), _clock
    if clock is not None:
        _clock = clock
    try:
        yield active()
    finally:
        configure(previous)
        _clock = previous_clock


def _text(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _field(info: ValidationInfo | None, default: str) -> str:
    return (info.field_name if info is not None else None) or default


def check_event_time(field: str, value: datetime) -> datetime:
    """`value` if it lies in [earliest_time, now + future_skew_s]; PydanticCustomError if not.

    PydanticCustomError is a ValueError, so plain code can catch it as one.
    """
    limits = _active
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if aware < limits.earliest_time:
        raise PydanticCustomError(
            "time_too_early",
            "{field} {value} is before {earliest} (LIMITS_EARLIEST_TIME)",
            {"field": field, "value": _text(value), "earliest": _text(limits.earliest_time)},
        )
    now = _clock()
    try:
        latest = limits.latest_time(now)
    except OverflowError:  # now is within the skew of year 9999: nothing can be later
        return value
    if aware > latest:
        raise PydanticCustomError(
            "time_too_late",
            "{field} {value} is more than {skew} s after now ({now}) (LIMITS_FUTURE_SKEW_S)",
            {
                "field": field,
                "value": _text(value),
                "skew": f"{limits.future_skew_s:g}",
                "now": _text(now.replace(microsecond=0)),
            },
        )
    return value


def checked_occurred_at(
    value: datetime | None, received_at: datetime
) -> tuple[datetime | None, str | None]:
    """(the time a person acted, None) when `value` is plausible; (None, why) when not.

    Plausible: in [earliest_time, received_at + future_skew_s]. The bound is the
    arrival, not the clock, so a replay decides as the first run did; a scan time
    in the future of its own upload is a wrong clock, not a visit from the future.
    """
    if value is None:
        return None, None
    limits = _active
    aware = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    if aware < limits.earliest_time:
        return None, (
            f"occurred_at {_text(aware)} is before {_text(limits.earliest_time)} "
            "(LIMITS_EARLIEST_TIME); the arrival time is used"
        )
    try:
        latest = limits.latest_time(received_at)
    except OverflowError:
        return aware, None
    if aware > latest:
        return None, (
            f"occurred_at {_text(aware)} is more than {limits.future_skew_s:g} s after the lead "
            f"arrived ({_text(received_at)}) (LIMITS_FUTURE_SKEW_S); the arrival time is used"
        )
    return aware, None


def check_amount(field: str, value: float, *, negative: bool = True) -> float:
    """`value` if finite with |value| <= max_amount (and >= 0 unless `negative`).

    PydanticCustomError (a ValueError) naming the field, the value and the rule if not.
    """
    limits = _active
    if not math.isfinite(value):
        raise PydanticCustomError(
            "amount_not_finite",
            "{field} {value} is not a finite number (NaN and Infinity are refused)",
            {"field": field, "value": repr(value)},
        )
    if value < 0 and not negative:
        raise PydanticCustomError(
            "amount_negative",
            "{field} {value} is negative (this amount is 0 or more)",
            {"field": field, "value": f"{value:g}"},
        )
    if abs(value) > limits.max_amount:
        raise PydanticCustomError(
            "amount_too_large",
            "{field} {value} is larger than {limit} in absolute value (LIMITS_MAX_AMOUNT)",
            {"field": field, "value": f"{value:g}", "limit": f"{limits.max_amount:g}"},
        )
    return value


def check_duration(field: str, value: int) -> int:
    """`value` if 0 <= value <= max_call_duration_s; PydanticCustomError if not."""
    limits = _active
    if value < 0:
        raise PydanticCustomError(
            "duration_negative",
            "{field} {value} is negative (durations are 0 or more seconds)",
            {"field": field, "value": _short(value)},
        )
    if value > limits.max_call_duration_s:
        raise PydanticCustomError(
            "duration_too_long",
            "{field} {value} is longer than {limit} s (LIMITS_MAX_CALL_DURATION_S)",
            {"field": field, "value": _short(value), "limit": str(limits.max_call_duration_s)},
        )
    return value


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}… ({len(text.lstrip('-'))} digits)"


def _event_time(value: datetime, info: ValidationInfo) -> datetime:
    return check_event_time(_field(info, "time"), value)


def _amount(value: float, info: ValidationInfo) -> float:
    return check_amount(_field(info, "amount"), value)


def _non_negative_amount(value: float, info: ValidationInfo) -> float:
    return check_amount(_field(info, "amount"), value, negative=False)


def _duration(value: int, info: ValidationInfo) -> int:
    return check_duration(_field(info, "duration"), value)


EventTime = Annotated[datetime, AfterValidator(_event_time)]
Amount = Annotated[float, AfterValidator(_amount)]
NonNegativeAmount = Annotated[float, AfterValidator(_non_negative_amount)]
Duration = Annotated[int, AfterValidator(_duration)]

Identifier = Annotated[str, Field(max_length=IDENTIFIER_MAX_CHARS)]
EventId = Annotated[str, Field(max_length=EVENT_ID_MAX_CHARS)]
Name = Annotated[str, Field(max_length=NAME_MAX_CHARS)]
CampaignName = Annotated[str, Field(max_length=CAMPAIGN_MAX_CHARS)]
Reason = Annotated[str, Field(max_length=REASON_MAX_CHARS)]
Notes = Annotated[str, Field(max_length=NOTES_MAX_CHARS)]
PhoneText = Annotated[str, Field(max_length=PHONE_MAX_CHARS)]
EmailText = Annotated[str, Field(max_length=EMAIL_MAX_CHARS)]
Properties = Annotated[
    dict[
        Annotated[str, Field(max_length=NAME_MAX_CHARS)],
        Annotated[str, Field(max_length=PROPERTY_VALUE_MAX_CHARS)],
    ],
    Field(max_length=PROPERTY_MAX_ENTRIES),
]
