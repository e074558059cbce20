"""LinkedIn Lead Gen: the subscription challenge, signatures, notifications and lead
form responses, as `RawLead`s."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import SecretStr

from ingest_adapters.social.common import (
    _INVALID,
    _LINKEDIN_ID,
    _LINKEDIN_SIGNED_PREFIX,
    _VERSIONED_FORM,
    LINKEDIN_SOURCE,
    MAX_CHALLENGE_CHARS,
    LeadgenRef,
    _answer_text,
    _compact,
    _epoch,
    _flag,
    _hmac_hex,
    _iso,
    _lenient,
    _moment,
    _opaque_id,
    _problem,
    _same,
    _secret,
    _text,
    lead_event_id,
)
from leadflow.errors import BadRecordError
from leadflow.strict_json import load_object
from schemas import RawLead


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
