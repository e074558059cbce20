"""What Meta Lead Ads and LinkedIn Lead Gen share: event ids, lead references, HMAC
helpers and the readers of ids, times and texts that both providers' payloads use.
(The flow of a lead-ads lead: `ingest_adapters.social`.)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from schemas.limits import EventTime, check_event_time

STEP = steps.SOCIAL_ADS
META_SOURCE = "meta_lead_ads"
LINKEDIN_SOURCE = "linkedin_lead_gen"
# LinkedIn serves a monthly API version for about a year; the version is sent on every call.
LINKEDIN_API_VERSION = "202610"
META_LEAD_FIELDS = (
    "id,created_time,ad_id,ad_name,adset_id,adset_name,campaign_id,campaign_name,"
    "form_id,is_organic,platform,field_data"
)
MAX_RETRY_AFTER_S = 60.0
MAX_CHALLENGE_CHARS = 1024
_FORM_CACHE_SIZE = 256
_EVENT_NAMESPACE = uuid.UUID("b2714fc8-18f8-4925-bd2f-ba1059c2d3f0")
_LINKEDIN_SIGNED_PREFIX = b"hmacsha256="
_META_ID = re.compile(r"\d{1,32}")
OPAQUE_ID_MAX_CHARS = 200
_LINKEDIN_ID = re.compile(r"[A-Za-z0-9._~-]{1,200}")
_VERSIONED_FORM = re.compile(
    r"urn:li:versionedLeadGenForm:\(urn:li:leadGenForm:(\d+),\s*(\d+)\)|urn:li:leadGenForm:(\d+)"
)
_EXPORT_PREFIX = re.compile(r"[a-z]{1,2}:(?=\d+$)")
_PHONE_PREFIX = re.compile(r"p:(?=\+?\d)")
# Graph error codes that mean "not now" (throttling, temporary outage), whatever the HTTP status.
_GRAPH_TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 613})
_EXPORT_CONTEXT_COLUMNS = (
    "created_time", "ad_id", "ad_name", "adset_id", "adset_name", "campaign_id",
    "campaign_name", "form_id", "form_name", "is_organic", "platform", "lead_status",
    "inbox_url",
)  # fmt: skip
_EXPORT_ID_COLUMNS = ("id", "ad_id", "adset_id", "campaign_id", "form_id")
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no", ""})

Provider = Literal["meta", "linkedin"]
Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger(__name__)


def lead_event_id(provider: Provider, lead_ref: str) -> str:
    """The event id of a provider's lead: the same from webhooks, redeliveries and backfills."""
    return stable_id(_EVENT_NAMESPACE, f"{provider}|{lead_ref}")


class LeadgenRef(BaseModel):
    """A lead announced by a webhook, before its answers are fetched.

    Recorded as JSON (`model_dump_json`) keyed by `lead_ref`; a ref read back
    from a topic is re-checked, so a bad producer cannot steer the fetcher.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider
    lead_ref: str = Field(description="Meta leadgen id, or LinkedIn leadGenFormResponse id.")
    event_id: str = Field(description="uuid5 of provider and lead_ref; leads.raw's event id.")
    received_at: datetime = Field(description="When the webhook arrived (UTC).")
    created_time: EventTime | None = Field(
        default=None,
        description="When the lead was made; within [LIMITS_EARLIEST_TIME, now + "
        "LIMITS_FUTURE_SKEW_S].",
    )
    form_id: str | None = None
    ad_id: str | None = Field(default=None, description="Meta ad id or LinkedIn creative id.")
    page_id: str | None = Field(default=None, description="Meta Page that owns the form.")
    owner: str | None = Field(default=None, description="LinkedIn owner URN (ad account/page).")
    lead_type: str | None = Field(default=None, description="LinkedIn leadType, e.g. SPONSORED.")
    associated_entity: str | None = Field(default=None, description="LinkedIn entity URN.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        pattern = _META_ID if self.provider == "meta" else _LINKEDIN_ID
        if not pattern.fullmatch(self.lead_ref):
            raise ValueError(f"lead_ref {self.lead_ref[:40]!r} is not a {self.provider} lead id")
        if self.event_id != lead_event_id(self.provider, self.lead_ref):
            raise ValueError("event_id does not belong to this provider and lead_ref")
        return self

    @classmethod
    def for_lead(cls, provider: Provider, lead_ref: str, **facts: Any) -> LeadgenRef:
        return cls(
            provider=provider,
            lead_ref=lead_ref,
            event_id=lead_event_id(provider, lead_ref),
            **facts,
        )


# --- webhook verification -------------------------------------------------------------


def _secret(value: str | SecretStr | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


def _same(given: str, expected: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str and a sender controls `given`.
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


# --- notifications ----------------------------------------------------------------------


def _problem(reason: str, where: str, problem: str) -> BadRecordError:
    return BadRecordError(reason, f"{where}: {problem}", {where: problem})


def _meta_id(value: Any, where: str, reason: str = "invalid_fields") -> str:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not _META_ID.fullmatch(text):
        raise _problem(reason, where, f"must be a numeric Meta id, not {str(value)[:40]!r}")
    return text


def _opaque_id(value: Any) -> str | None:
    """An id leadflow only passes on (form, ad, page, campaign): text or a whole number,
    kept as a string; anything else (a list, a flag, control characters, past
    `OPAQUE_ID_MAX_CHARS`) is left out rather than refusing the lead. Only the lead's own
    id (`_meta_id`, the LinkedIn response URN) is checked strictly: it is what is fetched."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > OPAQUE_ID_MAX_CHARS or not text.isprintable():
        return None
    return text


def _in_window(moment: datetime, where: str, reason: str) -> datetime:
    """`moment` if within [LIMITS_EARLIEST_TIME, now + LIMITS_FUTURE_SKEW_S]."""
    try:
        return check_event_time(where, moment)
    except ValueError as exc:
        raise BadRecordError(reason, str(exc), {where: str(exc)}) from exc


def _epoch(value: Any, where: str, per_second: int, reason: str = "invalid_fields") -> datetime:
    number = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value
    if isinstance(number, int) and not isinstance(number, bool):
        try:
            moment = datetime.fromtimestamp(number / per_second, UTC)
        except (OverflowError, OSError, ValueError):
            pass
        else:
            return _in_window(moment, where, reason)
    raise _problem(reason, where, "must be an epoch time within the accepted window")


def _text(value: Any, where: str, reason: str = "invalid_fields") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _problem(reason, where, "must be text")
    return value


# --- provider lead objects → RawLead -------------------------------------------------------

_INVALID = "invalid_response"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _iso_text(value: Any, where: str, reason: str) -> str | None:
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise _problem(reason, where, "must be an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise _problem(reason, where, "must carry a UTC offset")
    return _iso(_in_window(moment, where, reason))


def _answer_text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return _flag(value)
    if isinstance(value, str | int | float):
        return str(value)
    raise _problem(_INVALID, where, "must be text or a number")


def _lenient(read: Callable[[], str | None]) -> tuple[str | None, str | None]:
    """(the provider's time of the lead, None), or (None, why) when that time is unreadable
    or implausible: the lead is kept, stamped with its arrival, and says why."""
    try:
        return read(), None
    except BadRecordError as exc:
        return None, f"{exc}; the arrival time is used instead"


def _moment(text: str | None) -> datetime | None:
    """The provider's own time of the lead (already checked ISO text) as a datetime."""
    return None if text is None else datetime.fromisoformat(text)


def _compact(context: Mapping[str, str | None]) -> dict[str, str]:
    return {key: value for key, value in context.items() if value}
