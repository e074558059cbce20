"""Adapter `social_ads`: Meta Lead Ads and LinkedIn Lead Gen leads become `RawLead`s.

A lead-ads webhook carries no answers, only a reference to a lead, so a lead
arrives in two steps:

1. The HTTP handler verifies the webhook (`verify_meta_subscription`,
   `verify_meta_signature`, `linkedin_challenge`, `verify_linkedin_signature`),
   turns the body into `LeadgenRef`s (`parse_meta_notification`,
   `parse_linkedin_notification`) and records each ref as JSON keyed by
   `ref.lead_ref` before it answers, so the provider is acknowledged at once
   and no lead depends on the fetch succeeding during the request.
2. `SocialFetcher.fetch(ref)` reads the lead from the Graph API or LinkedIn's
   REST API and returns the envelope for `leads.raw`. `meta_lead` and
   `linkedin_lead` are the pure conversions it uses.

Backfills read Ads Manager's "Download leads" files (`read_meta_export`,
`lead_from_export_row`, `meta_export_leads`).

Idempotency: a lead's event id is uuid5 of (provider, provider lead id), the
same for a webhook, its redelivery and a backfill row, so downstream sees one
event per lead however often it arrives.

Field names stay as the provider sent them (`full_name`, `FIRST_NAME`); the
normalize stage decides what they mean. Every refusal is a `BadRecordError`
(dead-letter on `dlq.social_ads`, then move on) whose reason names the problem:
`bad_signature`, `not_configured`, `invalid_json`, `invalid_fields`,
`no_leads`, `unsupported_event`, `lead_deleted`, `invalid_response`,
`lead_not_found`, `fetch_refused`, `fetch_failed`, `invalid_row`,
`invalid_encoding`, `invalid_file`, `no_header`. A missing access token is a
`ConfigurationError`: the worker stops instead of dead-lettering every lead.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ingest_adapters.tradeshow import detect_encoding
from leadflow import stages
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from leadflow.strict_json import load_object
from schemas import RawLead
from schemas.limits import EventTime, check_event_time

STAGE = stages.SOCIAL_ADS
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


def verify_meta_subscription(
    params: Mapping[str, str], verify_token: str | SecretStr | None
) -> str:
    """The `hub.challenge` to echo when Meta's subscription request carries our verify token."""
    expected = _secret(verify_token)
    if not expected:
        raise BadRecordError(
            "not_configured", "SOCIAL_META_VERIFY_TOKEN is not set; no subscription is accepted"
        )
    if params.get("hub.mode") != "subscribe":
        raise BadRecordError("bad_signature", "hub.mode must be subscribe")
    if not _same(params.get("hub.verify_token") or "", expected):
        raise BadRecordError("bad_signature", "hub.verify_token does not match")
    challenge = params.get("hub.challenge") or ""
    if not challenge or len(challenge) > MAX_CHALLENGE_CHARS:
        raise BadRecordError(
            "invalid_fields", "hub.challenge is missing or too long", {"hub.challenge": "required"}
        )
    return challenge


def meta_signature(app_secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends with `body`."""
    return "sha256=" + _hmac_hex(app_secret, body)


def verify_meta_signature(
    body: bytes, header: str | None, app_secret: str | SecretStr | None
) -> None:
    """Accept a POST only when `X-Hub-Signature-256` is the HMAC of its raw body."""
    secret = _secret(app_secret)
    if not secret:
        raise BadRecordError("not_configured", "SOCIAL_META_APP_SECRET is not set")
    if not header:
        raise BadRecordError("bad_signature", "X-Hub-Signature-256 is missing")
    scheme, separator, digest = header.strip().partition("=")
    if not separator or scheme.lower() != "sha256":
        raise BadRecordError("bad_signature", "X-Hub-Signature-256 must be sha256=<hex digest>")
    if not _same(digest.lower(), _hmac_hex(secret, body)):
        raise BadRecordError("bad_signature", "X-Hub-Signature-256 does not match this body")


def linkedin_challenge(
    challenge_code: str, client_secret: str | SecretStr | None
) -> dict[str, str]:
    """The JSON body answering LinkedIn's `challengeCode` endpoint validation."""
    secret = _secret(client_secret)
    if not secret:
        raise BadRecordError("not_configured", "SOCIAL_LINKEDIN_CLIENT_SECRET is not set")
    if not challenge_code or len(challenge_code) > MAX_CHALLENGE_CHARS:
        raise BadRecordError(
            "invalid_fields", "challengeCode is missing or too long", {"challengeCode": "required"}
        )
    return {
        "challengeCode": challenge_code,
        "challengeResponse": _hmac_hex(secret, challenge_code.encode("utf-8")),
    }


def linkedin_signature(client_secret: str, body: bytes) -> str:
    """The `X-LI-Signature` LinkedIn sends: hex HMAC-SHA256 of `hmacsha256=` + the raw body."""
    return _hmac_hex(client_secret, _LINKEDIN_SIGNED_PREFIX + body)


def verify_linkedin_signature(
    body: bytes, header: str | None, client_secret: str | SecretStr | None
) -> None:
    """Accept a POST only when `X-LI-Signature` matches `linkedin_signature` of its raw body.

    LinkedIn documents the literal `hmacsha256=` as part of the signed text,
    not of the header; a header that repeats it as a label is accepted too.
    """
    secret = _secret(client_secret)
    if not secret:
        raise BadRecordError("not_configured", "SOCIAL_LINKEDIN_CLIENT_SECRET is not set")
    if not header:
        raise BadRecordError("bad_signature", "X-LI-Signature is missing")
    digest = header.strip().lower().removeprefix("hmacsha256=")
    if not _same(digest, linkedin_signature(secret, body)):
        raise BadRecordError("bad_signature", "X-LI-Signature does not match this body")


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


def parse_meta_notification(body: bytes, *, received_at: datetime) -> list[LeadgenRef]:
    """The leads announced by a Meta Page webhook; changes other than `leadgen` are ignored."""
    data = load_object(body)
    if data.get("object") != "page":
        raise _problem("invalid_fields", "object", "must be 'page' (a Page leadgen subscription)")
    entries = data.get("entry")
    if not isinstance(entries, list):
        raise _problem("invalid_fields", "entry", "must be a list")
    refs: dict[str, LeadgenRef] = {}
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            raise _problem("invalid_fields", f"entry[{i}].changes", "must be a list")
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            if not isinstance(change, dict):
                raise _problem("invalid_fields", where, "must be an object")
            if change.get("field") != "leadgen":
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                raise _problem("invalid_fields", f"{where}.value", "must be an object")
            lead_id = _meta_id(value.get("leadgen_id"), f"{where}.value.leadgen_id")
            created = value.get("created_time")
            refs.setdefault(
                lead_id,
                LeadgenRef.for_lead(
                    "meta",
                    lead_id,
                    received_at=received_at,
                    created_time=None
                    if created is None
                    else _epoch(created, f"{where}.value.created_time", 1),
                    form_id=_opaque_id(value.get("form_id")),
                    ad_id=_opaque_id(value.get("ad_id") or value.get("adgroup_id")),
                    page_id=_opaque_id(value.get("page_id") or entry.get("id")),
                ),
            )
    if not refs:
        raise BadRecordError(
            "no_leads", "the notification has no leadgen change; only leadgen is subscribed"
        )
    return list(refs.values())


def _urn_id(urn: Any, prefix: str, where: str, reason: str = "invalid_fields") -> str:
    if not isinstance(urn, str) or not urn.startswith(prefix):
        raise _problem(reason, where, f"must be a {prefix}<id> URN")
    lead_ref = urn.removeprefix(prefix)
    if not _LINKEDIN_ID.fullmatch(lead_ref):
        raise _problem(reason, where, "has an id with unexpected characters")
    return lead_ref


def _union_urn(value: Any, where: str, reason: str = "invalid_fields") -> tuple[str, str] | None:
    """LinkedIn unions (`{"sponsoredAccount": "urn:li:..."}`) as (member, URN)."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise _problem(reason, where, "must be an object with one URN")
    ((member, urn),) = value.items()
    if not isinstance(urn, str) or not urn.startswith("urn:li:"):
        raise _problem(reason, where, "must hold a urn:li: URN")
    return str(member), urn


def _lenient_union(value: Any) -> tuple[str, str] | None:
    """`_union_urn`, or None when the value is not the expected one-URN object."""
    try:
        return _union_urn(value, "")
    except BadRecordError:
        return None


def _form_parts(urn: str | None) -> tuple[str, str | None] | None:
    """(form id, version) of a (versioned) lead form URN."""
    match = _VERSIONED_FORM.fullmatch(urn or "")
    if match is None:
        return None
    if match.group(3):
        return match.group(3), None
    return match.group(1), match.group(2)


def parse_linkedin_notification(body: bytes, *, received_at: datetime) -> list[LeadgenRef]:
    """The lead announced by a LinkedIn Lead Sync notification (one per notification).

    A `DELETED` action is refused as `lead_deleted`: there is nothing to fetch,
    and the dead letter is the trail for whoever handles erasure.
    """
    data = load_object(body)
    if data.get("type") != "LEAD_ACTION":
        raise BadRecordError(
            "unsupported_event",
            f"type {str(data.get('type'))[:40]!r} is not LEAD_ACTION",
            {"type": "must be LEAD_ACTION"},
        )
    response_urn = data.get("leadGenFormResponse")
    lead_ref = _urn_id(response_urn, "urn:li:leadGenFormResponse:", "leadGenFormResponse")
    action = data.get("leadAction")
    if action == "DELETED":
        raise BadRecordError(
            "lead_deleted",
            f"LinkedIn deleted lead {lead_ref}; nothing to fetch",
            {"leadGenFormResponse": str(response_urn)},
        )
    if action != "CREATED":
        raise BadRecordError(
            "unsupported_event",
            f"leadAction {str(action)[:40]!r} is not CREATED",
            {"leadAction": "must be CREATED or DELETED"},
        )
    # Form, owner and entity are only passed on: an unexpected shape is kept as text or
    # left out, never a reason to refuse the lead (only its response URN is fetched).
    form_urn = _opaque_id(data.get("leadGenForm"))
    form = _form_parts(form_urn) or ((form_urn, None) if form_urn else None)
    owner = _lenient_union(data.get("owner"))
    entity = _lenient_union(data.get("associatedEntity"))
    occurred = data.get("occurredAt")
    return [
        LeadgenRef.for_lead(
            "linkedin",
            lead_ref,
            received_at=received_at,
            created_time=None if occurred is None else _epoch(occurred, "occurredAt", 1000),
            form_id=form[0] if form else None,
            ad_id=entity[1].rsplit(":", 1)[-1]
            if entity and entity[0] == "sponsoredCreative"
            else None,
            owner=owner[1] if owner else None,
            lead_type=_text(data.get("leadType"), "leadType"),
            associated_entity=entity[1] if entity else None,
        )
    ]


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


def meta_lead(
    data: Mapping[str, Any], *, received_at: datetime, ref: LeadgenRef | None = None
) -> RawLead:
    """The envelope of a Graph API lead object; `field_data` names are kept as sent."""
    lead_id = _meta_id(data.get("id"), "id", _INVALID)
    if ref is not None and ref.lead_ref != lead_id:
        raise _problem(_INVALID, "id", f"Graph returned lead {lead_id} for {ref.lead_ref}")
    field_data = data.get("field_data", [])
    if not isinstance(field_data, list):
        raise _problem(_INVALID, "field_data", "must be a list")
    fields: dict[str, str] = {}
    for i, item in enumerate(field_data):
        name = item.get("name") if isinstance(item, dict) else None
        values = item.get("values", []) if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or not isinstance(values, list):
            raise _problem(_INVALID, f"field_data[{i}]", "must have a name and a list of values")
        text = ", ".join(_answer_text(v, f"field_data[{i}].values") for v in values)
        fields[name] = f"{fields[name]}, {text}" if name in fields else text
    organic = data.get("is_organic")
    created, warning = _lenient(
        lambda: _iso_text(data.get("created_time"), "created_time", _INVALID)
    )
    context = {
        "warnings": warning,
        "provider": "meta",
        "provider_lead_id": lead_id,
        "created_time": created,
        "is_organic": _flag(organic) if isinstance(organic, bool) else None,
        "page_id": ref.page_id if ref else None,
        **{
            key: _text(data.get(key), key, _INVALID)
            for key in ("ad_name", "adset_name", "campaign_name", "platform")
        },
        **{
            key: _opaque_id(data.get(key))
            for key in ("ad_id", "adset_id", "campaign_id", "form_id")
        },
    }
    return RawLead(
        event_id=lead_event_id("meta", lead_id),
        channel="social",
        source_system=META_SOURCE,
        received_at=received_at,
        occurred_at=_moment(context["created_time"]),
        idempotency_key=f"meta:{lead_id}",
        form_id=context["form_id"],
        fields=fields,
        context=_compact(context),
    )


def _localized(value: Any) -> str | None:
    """The text of a LinkedIn MultiLocaleString (first locale), or a plain string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        texts = value.get("localized")
        if isinstance(texts, dict):
            return next((t for t in texts.values() if isinstance(t, str)), None)
    return None


@dataclass(frozen=True)
class _Question:
    name: str
    options: dict[str, str]


def _linkedin_questions(form: Mapping[str, Any] | None) -> dict[str, _Question]:
    """questionId → the name answers are filed under, and its choice labels."""
    content = form.get("content") if form else None
    questions = content.get("questions") if isinstance(content, dict) else None
    found: dict[str, _Question] = {}
    for question in questions if isinstance(questions, list) else []:
        if not isinstance(question, dict) or question.get("questionId") is None:
            continue
        details = question.get("questionDetails")
        choices = (
            details.get("multipleChoiceQuestionDetails") if isinstance(details, dict) else None
        )
        options = choices.get("options") if isinstance(choices, dict) else None
        labels = {
            str(option.get("id")): label
            for option in (options if isinstance(options, list) else [])
            if isinstance(option, dict) and (label := _localized(option.get("text")))
        }
        qid = str(question["questionId"])
        name = (
            question.get("predefinedField")
            or question.get("name")
            or _localized(question.get("question"))
            or f"question_{qid}"
        )
        found[qid] = _Question(str(name), labels)
    return found


def linkedin_lead(
    response: Mapping[str, Any],
    *,
    form: Mapping[str, Any] | None,
    received_at: datetime,
    ref: LeadgenRef | None = None,
) -> RawLead:
    """The envelope of a LinkedIn lead form response.

    Answers refer to question ids; with the form definition they are filed
    under the question's `predefinedField` (FIRST_NAME, EMAIL, ...) or, for
    custom questions, its `name`; without it under `question_<id>`. A test lead
    keeps `test_lead=true` in the context so downstream can leave it out.
    """
    raw_id = response.get("id")
    if raw_id is None and ref is None:
        raise _problem(_INVALID, "id", "is missing")
    lead_ref = ref.lead_ref if raw_id is None and ref is not None else str(raw_id)
    if not _LINKEDIN_ID.fullmatch(lead_ref) or (ref is not None and ref.lead_ref != lead_ref):
        raise _problem(_INVALID, "id", f"LinkedIn returned lead {lead_ref[:60]!r} for this ref")
    form_urn = _text(response.get("versionedLeadGenFormUrn"), "versionedLeadGenFormUrn", _INVALID)
    form_parts = _form_parts(form_urn)
    form_response = response.get("formResponse")
    answers = form_response.get("answers") if isinstance(form_response, dict) else None
    if not isinstance(answers, list):
        raise _problem(_INVALID, "formResponse.answers", "must be a list")
    questions = _linkedin_questions(form)
    fields: dict[str, str] = {}
    for i, answer in enumerate(answers):
        details = answer.get("answerDetails") if isinstance(answer, dict) else None
        if not isinstance(details, dict) or not isinstance(answer, dict):
            raise _problem(_INVALID, f"formResponse.answers[{i}]", "must have answerDetails")
        qid = str(answer.get("questionId"))
        question = questions.get(qid, _Question(f"question_{qid}", {}))
        if isinstance(details.get("textQuestionAnswer"), dict):
            raw = details["textQuestionAnswer"].get("answer")
            text = "" if raw is None else _answer_text(raw, f"answers[{i}]")
        elif isinstance(details.get("multipleChoiceAnswer"), dict):
            chosen = details["multipleChoiceAnswer"].get("options") or []
            if not isinstance(chosen, list):
                raise _problem(_INVALID, f"answers[{i}].options", "must be a list")
            text = ", ".join(question.options.get(str(c), str(c)) for c in chosen)
        else:
            raise _problem(_INVALID, f"answers[{i}]", "has an answer type leadflow cannot read")
        fields[question.name] = text
    submitted = response.get("submittedAt")
    metadata = response.get("leadMetadata")
    sponsored = metadata.get("sponsoredLeadMetadata") if isinstance(metadata, dict) else None
    owner = _union_urn(response.get("owner"), "owner", _INVALID)
    test_lead = response.get("testLead")
    created, warning = _lenient(
        lambda: (
            None if submitted is None else _iso(_epoch(submitted, "submittedAt", 1000, _INVALID))
        )
    )
    context = {
        "warnings": warning,
        "provider": "linkedin",
        "provider_lead_id": lead_ref,
        "platform": "linkedin",
        "created_time": created,
        "lead_type": _text(response.get("leadType"), "leadType", _INVALID),
        "test_lead": _flag(test_lead is True),
        "owner": owner[1] if owner else (ref.owner if ref else None),
        "form_urn": form_urn,
        "form_version": form_parts[1] if form_parts else None,
        "form_name": _localized(form.get("name")) if form else None,
        "campaign": _text(sponsored.get("campaign"), "campaign", _INVALID)
        if isinstance(sponsored, dict)
        else None,
        "ad_id": ref.ad_id if ref else None,
        "associated_entity": ref.associated_entity if ref else None,
    }
    form_id = form_parts[0] if form_parts else (ref.form_id if ref else None)
    return RawLead(
        event_id=lead_event_id("linkedin", lead_ref),
        channel="social",
        source_system=LINKEDIN_SOURCE,
        received_at=received_at,
        occurred_at=_moment(context["created_time"]),
        idempotency_key=f"linkedin:{lead_ref}",
        form_id=form_id,
        fields=fields,
        context=_compact({**context, "form_id": form_id}),
    )


# --- Ads Manager "Download leads" files ----------------------------------------------------


@dataclass(frozen=True)
class ExportRow:
    """One data row of a lead export: its 1-based record number (header = 1) and cells."""

    number: int
    cells: dict[str, str]
    ragged: bool = False


def read_meta_export(raw: IO[bytes]) -> Iterator[ExportRow]:
    """Every row of a Meta lead export, streamed; the caller owns and closes `raw`.

    Takes Meta's UTF-16 tab-separated download and the UTF-8 comma-separated
    variant (with or without BOM); file-level problems raise `BadRecordError`.
    """
    head = raw.read(65536)
    raw.seek(0)
    encoding = detect_encoding(head)
    text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
    first_line = head.decode(encoding, errors="ignore").split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    try:
        records = csv.reader(text, delimiter=delimiter)
        header = [cell.strip() for cell in next(records, [])]
        if "id" not in header:
            raise BadRecordError(
                "no_header",
                "the first row must be Meta's export header (id, created_time, ad_id, ...)",
            )
        for number, cells in enumerate(records, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if any(len(cell) > MAX_EXPORT_CELL_CHARS for cell in cells):
                # Bounded here, not by the csv module's limit, which other readers may raise.
                raise BadRecordError(
                    "invalid_file",
                    f"row {number}: a cell holds more than {MAX_EXPORT_CELL_CHARS:,} characters",
                )
            ragged = len(cells) > len(header) and any(c.strip() for c in cells[len(header) :])
            yield ExportRow(
                number,
                {name: cell.strip() for name, cell in zip(header, cells, strict=False) if name},
                ragged,
            )
    except UnicodeDecodeError as exc:
        raise BadRecordError(
            "invalid_encoding", f"the file is not valid {encoding}: {exc.reason}"
        ) from exc
    except csv.Error as exc:
        raise BadRecordError("invalid_file", f"the file cannot be read as CSV/TSV: {exc}") from exc
    finally:
        text.detach()


MAX_EXPORT_CELL_CHARS = 131_072  # the csv module's own default: no lead field is longer


def lead_from_export_row(
    row: ExportRow, *, received_at: datetime, source: str | None = None
) -> RawLead:
    """The envelope of one export row: the same event id the webhook path gives that lead.

    Meta writes ids as `l:123`, `ag:123`, ... and phone answers as `p:+86...`
    so spreadsheets keep them as text; the prefixes are removed.
    """

    def bad(column: str, problem: str) -> BadRecordError:
        return BadRecordError(
            "invalid_row",
            f"row {row.number}: {column} {problem}",
            {"row": str(row.number), column: problem},
        )

    if row.ragged:
        raise bad("cells", "extend past the header")
    cells = {
        name: _EXPORT_PREFIX.sub("", value, count=1) if name in _EXPORT_ID_COLUMNS else value
        for name, value in row.cells.items()
    }
    lead_id = cells.get("id", "")
    if not _META_ID.fullmatch(lead_id):
        raise bad("id", f"{row.cells.get('id', '')[:40]!r} is not a Meta lead id")
    for column in _EXPORT_ID_COLUMNS:
        if cells.get(column) and not _META_ID.fullmatch(cells[column]):
            raise bad(column, "is not a Meta id")
    created_text, warning = _lenient(
        lambda: _iso_text(cells.get("created_time") or None, "created_time", "invalid_row")
    )
    if warning:
        warning = f"row {row.number}: {warning}"
    created = _moment(created_text)
    organic = cells.get("is_organic", "").lower()
    if organic not in _TRUE | _FALSE:
        raise bad("is_organic", "must be 0 or 1")
    context = {
        **{column: cells.get(column) for column in _EXPORT_CONTEXT_COLUMNS},
        "provider": "meta",
        "provider_lead_id": lead_id,
        "created_time": created_text,
        "warnings": warning,
        "is_organic": _flag(organic in _TRUE),
        "export_row": str(row.number),
        "export": source,
    }
    fields = {
        name: _PHONE_PREFIX.sub("", value, count=1)
        for name, value in row.cells.items()
        if value and name != "id" and name not in _EXPORT_CONTEXT_COLUMNS
    }
    return RawLead(
        event_id=lead_event_id("meta", lead_id),
        channel="social",
        source_system=META_SOURCE,
        received_at=received_at,
        occurred_at=created,
        idempotency_key=f"meta:{lead_id}",
        form_id=cells.get("form_id") or None,
        fields=fields,
        context=_compact(context),
    )


def meta_export_leads(
    raw: IO[bytes], *, received_at: datetime, source: str | None = None
) -> Iterator[RawLead | BadRecordError]:
    """Each row as its envelope or, for a bad row, its error: one bad row stops nothing."""
    for row in read_meta_export(raw):
        try:
            yield lead_from_export_row(row, received_at=received_at, source=source)
        except BadRecordError as exc:
            yield exc
