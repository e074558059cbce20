"""Social lead ads: webhook checks, notification parsing, lead conversion, fetching, backfills.

The fetcher runs against tests/standins/social_api.py, a local stand-in for
the Graph API and LinkedIn's REST API; sample payloads are in tests/data/social.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from ingest_adapters.social import common as social
from ingest_adapters.social.common import LeadgenRef, lead_event_id
from ingest_adapters.social.fetcher import SocialFetcher
from ingest_adapters.social.linkedin import (
    linkedin_challenge,
    linkedin_lead,
    linkedin_signature,
    parse_linkedin_notification,
    verify_linkedin_signature,
)
from ingest_adapters.social.meta import (
    lead_from_export_row,
    meta_export_leads,
    meta_lead,
    meta_signature,
    parse_meta_notification,
    read_meta_export,
    verify_meta_signature,
    verify_meta_subscription,
)
from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.settings import SocialSettings
from schemas import RawLead
from tests.standins.social_api import SocialApiStandIn, running

DATA = Path(__file__).resolve().parents[1] / "data" / "social"
RECEIVED = datetime(2026, 2, 27, 3, 41, tzinfo=UTC)
APP_SECRET = "meta-app-secret-4f1c"
CLIENT_SECRET = "li-client-secret-9b2e"
META_TOKEN = "EAAGm0PX4ZCpsBAMetaPageToken123456"
LI_TOKEN = "AQVliLinkedInAccessToken987654"
META_LEAD_ID = "1020304050607080"
LI_LEAD_ID = "3d7a4c9e-5b21-4f0a-9c11-2e8f6a1b0d44-7"


def data_bytes(name: str) -> bytes:
    return (DATA / name).read_bytes()


def data_json(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(data_bytes(name))
    return loaded


def hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def refusal(call: Callable[[], object]) -> BadRecordError:
    with pytest.raises(BadRecordError) as caught:
        call()
    return caught.value


def meta_ref(lead_id: str = META_LEAD_ID) -> LeadgenRef:
    return LeadgenRef.for_lead("meta", lead_id, received_at=RECEIVED, page_id="112233445566778")


def linkedin_ref(lead_id: str = LI_LEAD_ID) -> LeadgenRef:
    return parse_linkedin_notification(
        data_bytes("linkedin_notification_created.json"), received_at=RECEIVED
    )[0].model_copy(update={"lead_ref": lead_id, "event_id": lead_event_id("linkedin", lead_id)})


# --- Meta verify-token handshake ---------------------------------------------------------


def handshake(**overrides: str) -> dict[str, str]:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": "s3cret-token",
        "hub.challenge": "1158201444",
    }
    params.update(overrides)
    return params


def test_meta_handshake_echoes_the_challenge() -> None:
    assert verify_meta_subscription(handshake(), SecretStr("s3cret-token")) == "1158201444"
    assert verify_meta_subscription(handshake(), "s3cret-token") == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        handshake(**{"hub.verify_token": "wrong"}),
        handshake(**{"hub.verify_token": ""}),
        handshake(**{"hub.verify_token": "s3cret-tokén"}),
        handshake(**{"hub.mode": "unsubscribe"}),
        {"hub.challenge": "1158201444"},
    ],
)
def test_meta_handshake_refuses_wrong_token_or_mode(params: dict[str, str]) -> None:
    error = refusal(lambda: verify_meta_subscription(params, SecretStr("s3cret-token")))
    assert error.reason == "bad_signature"


@pytest.mark.parametrize("token", [None, "", SecretStr("")])
def test_meta_handshake_without_a_configured_token(token: str | SecretStr | None) -> None:
    assert refusal(lambda: verify_meta_subscription(handshake(), token)).reason == "not_configured"


def test_meta_handshake_needs_a_challenge() -> None:
    params = handshake(**{"hub.challenge": ""})
    assert refusal(lambda: verify_meta_subscription(params, "s3cret-token")).reason == (
        "invalid_fields"
    )


# --- X-Hub-Signature-256 ------------------------------------------------------------------


def test_meta_signature_is_sha256_hmac_of_the_raw_body() -> None:
    body = data_bytes("meta_webhook_leadgen.json")
    expected = "sha256=" + hmac_hex(APP_SECRET, body)
    assert meta_signature(APP_SECRET, body) == expected
    verify_meta_signature(body, expected, SecretStr(APP_SECRET))
    verify_meta_signature(body, expected.upper().replace("SHA256=", "sha256="), APP_SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=" + hmac_hex("another-secret", b"{}"),
        hmac_hex(APP_SECRET, b"{}"),
        "sha1=" + hmac.new(APP_SECRET.encode(), b"{}", hashlib.sha1).hexdigest(),
        "sha256=",
        "sha256=ünïcode",
    ],
)
def test_meta_signature_refuses_missing_wrong_or_unprefixed(header: str | None) -> None:
    error = refusal(lambda: verify_meta_signature(b"{}", header, APP_SECRET))
    assert error.reason == "bad_signature"
    assert APP_SECRET not in error.message


def test_meta_signature_refuses_a_changed_body() -> None:
    header = meta_signature(APP_SECRET, b'{"object":"page"}')
    error = refusal(lambda: verify_meta_signature(b'{"object":"page" }', header, APP_SECRET))
    assert error.reason == "bad_signature"


@pytest.mark.parametrize("secret", [None, ""])
def test_meta_signature_without_an_app_secret(secret: str | None) -> None:
    header = meta_signature("x", b"{}")
    assert refusal(lambda: verify_meta_signature(b"{}", header, secret)).reason == "not_configured"


# --- LinkedIn challenge and X-LI-Signature ---------------------------------------------------


def test_linkedin_challenge_answer_matches_an_independent_hmac() -> None:
    code = "890e4665-4dfe-4ab1-b689-ed553bceeed0"
    expected = hmac.new(CLIENT_SECRET.encode(), code.encode(), hashlib.sha256).hexdigest()
    assert linkedin_challenge(code, SecretStr(CLIENT_SECRET)) == {
        "challengeCode": code,
        "challengeResponse": expected,
    }


def test_linkedin_challenge_needs_the_secret_and_a_code() -> None:
    assert refusal(lambda: linkedin_challenge("abc", None)).reason == "not_configured"
    assert refusal(lambda: linkedin_challenge("", CLIENT_SECRET)).reason == "invalid_fields"


def test_linkedin_signature_signs_the_prefixed_body() -> None:
    body = data_bytes("linkedin_notification_created.json")
    expected = hmac_hex(CLIENT_SECRET, b"hmacsha256=" + body)
    assert linkedin_signature(CLIENT_SECRET, body) == expected
    verify_linkedin_signature(body, expected, SecretStr(CLIENT_SECRET))
    verify_linkedin_signature(body, "hmacsha256=" + expected, CLIENT_SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        hmac_hex(CLIENT_SECRET, b'{"type":"LEAD_ACTION"}'),  # the body alone, without the prefix
        hmac_hex("another-secret", b'hmacsha256={"type":"LEAD_ACTION"}'),
        "sha256=" + hmac_hex(CLIENT_SECRET, b'hmacsha256={"type":"LEAD_ACTION"}'),
    ],
)
def test_linkedin_signature_refuses_missing_or_wrong(header: str | None) -> None:
    body = b'{"type":"LEAD_ACTION"}'
    error = refusal(lambda: verify_linkedin_signature(body, header, CLIENT_SECRET))
    assert error.reason == "bad_signature"


def test_linkedin_signature_without_a_client_secret() -> None:
    header = linkedin_signature("x", b"{}")
    assert refusal(lambda: verify_linkedin_signature(b"{}", header, "")).reason == (
        "not_configured"
    )


# --- Meta notifications ----------------------------------------------------------------------


def test_meta_notification_gives_one_ref_per_leadgen_change() -> None:
    refs = parse_meta_notification(data_bytes("meta_webhook_leadgen.json"), received_at=RECEIVED)
    assert [ref.lead_ref for ref in refs] == [META_LEAD_ID, "1020304050607082"]
    first = refs[0]
    assert first.provider == "meta"
    assert first.event_id == lead_event_id("meta", META_LEAD_ID)
    assert first.form_id == "998877665544332"
    assert first.ad_id == "23850000000000001"
    assert first.page_id == "112233445566778"
    assert first.created_time == datetime(2026, 2, 27, 2, 15, 3, tzinfo=UTC)
    assert first.received_at == RECEIVED
    assert refs[1].ad_id is None


def test_meta_notification_with_numeric_ids_as_in_metas_example() -> None:
    (ref,) = parse_meta_notification(
        data_bytes("meta_webhook_numeric_ids.json"), received_at=RECEIVED
    )
    assert (ref.lead_ref, ref.form_id, ref.ad_id, ref.page_id) == (
        "123123123123",
        "12312312312",
        "12312312312",
        "123123123",
    )


def test_meta_opaque_ids_need_not_be_numeric_only_the_leadgen_id_is_checked() -> None:
    # Real webhooks (test tools, page aliases) carry ids leadflow only passes on; the lead
    # is fetched by its leadgen id alone, so these must not refuse the notification.
    body: dict[str, Any] = {
        "object": "page",
        "entry": [
            {
                "id": "my-page",
                "changes": [
                    {
                        "field": "leadgen",
                        "value": {
                            "leadgen_id": "444555666777",
                            "form_id": "form_abc-1",
                            "ad_id": 23850000000000001,
                            "page_id": ["not", "an", "id"],
                        },
                    }
                ],
            }
        ],
    }
    (ref,) = parse_meta_notification(json.dumps(body).encode(), received_at=RECEIVED)
    assert (ref.lead_ref, ref.form_id, ref.ad_id, ref.page_id) == (
        "444555666777",
        "form_abc-1",
        "23850000000000001",
        None,  # not text or a number: left out, the lead kept
    )
    body["entry"][0]["changes"][0]["value"] = {"leadgen_id": "ab12", "form_id": "1"}
    assert (
        refusal(
            lambda: parse_meta_notification(json.dumps(body).encode(), received_at=RECEIVED)
        ).reason
        == "invalid_fields"
    )


def test_linkedin_opaque_form_and_owner_are_kept_or_left_out_not_refused() -> None:
    changes = {"leadGenForm": "urn:li:somethingElse:1", "owner": "urn:li:sponsoredAccount:1"}
    body = json.dumps({**data_json("linkedin_notification_created.json"), **changes}).encode()
    (ref,) = parse_linkedin_notification(body, received_at=RECEIVED)
    assert (ref.form_id, ref.owner) == ("urn:li:somethingElse:1", None)


def test_redelivered_or_repeated_leads_are_the_same_event() -> None:
    body = data_json("meta_webhook_leadgen.json")
    body["entry"].append(body["entry"][0])
    raw = json.dumps(body).encode()
    refs = parse_meta_notification(raw, received_at=RECEIVED)
    again = parse_meta_notification(raw, received_at=datetime(2026, 2, 28, tzinfo=UTC))
    assert len(refs) == 2
    assert [r.event_id for r in refs] == [r.event_id for r in again]
    assert lead_event_id("meta", META_LEAD_ID) != lead_event_id("linkedin", META_LEAD_ID)


def test_a_notification_without_leadgen_changes_is_no_leads() -> None:
    body = data_bytes("meta_webhook_no_leadgen.json")
    assert refusal(lambda: parse_meta_notification(body, received_at=RECEIVED)).reason == (
        "no_leads"
    )


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b'{"object": "page", "entry": NaN}', "invalid_json", "NaN"),
        (b'{"object": "page", "object": "page", "entry": []}', "invalid_json", "twice"),
        (b"\xff\xfe{}", "invalid_json", "UTF-8"),
        (b'[{"object": "page"}]', "invalid_json", "JSON object"),
        (b"[" * 100_000, "invalid_json", "nested too deeply"),
        (b'{"object": "user", "entry": []}', "invalid_fields", "object"),
        (b'{"object": "page", "entry": {}}', "invalid_fields", "entry"),
        (b'{"object": "page", "entry": [{"changes": [1]}]}', "invalid_fields", "changes[0]"),
        (
            b'{"object":"page","entry":[{"changes":[{"field":"leadgen","value":{}}]}]}',
            "invalid_fields",
            "leadgen_id",
        ),
        (
            b'{"object":"page","entry":[{"changes":[{"field":"leadgen",'
            b'"value":{"leadgen_id":"../../me"}}]}]}',
            "invalid_fields",
            "numeric Meta id",
        ),
        (
            b'{"object":"page","entry":[{"changes":[{"field":"leadgen",'
            b'"value":{"leadgen_id":"12","created_time":"soon"}}]}]}',
            "invalid_fields",
            "created_time",
        ),
    ],
)
def test_meta_notification_refusals_name_the_problem(body: bytes, reason: str, says: str) -> None:
    error = refusal(lambda: parse_meta_notification(body, received_at=RECEIVED))
    assert error.reason == reason
    assert says in error.message


def test_a_ref_round_trips_through_json() -> None:
    (ref,) = parse_linkedin_notification(
        data_bytes("linkedin_notification_created.json"), received_at=RECEIVED
    )
    for original in (ref, meta_ref()):
        encoded = original.model_dump_json()
        assert LeadgenRef.model_validate_json(encoded) == original
    assert set(json.loads(meta_ref().model_dump_json())) == {
        "provider", "lead_ref", "event_id", "received_at", "created_time", "form_id", "ad_id",
        "page_id", "owner", "lead_type", "associated_entity",
    }  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": lead_event_id("meta", "999")},
        {"lead_ref": "../../oauth/access_token", "event_id": lead_event_id("meta", "x")},
        {"provider": "linkedin"},
    ],
)
def test_a_ref_read_from_a_topic_is_checked_again(changes: dict[str, str]) -> None:
    tampered = {**json.loads(meta_ref().model_dump_json()), **changes}
    with pytest.raises(ValidationError):
        LeadgenRef.model_validate_json(json.dumps(tampered))


@given(st.binary(max_size=300))
def test_any_bytes_are_refs_or_a_bad_record(body: bytes) -> None:
    for parse in (parse_meta_notification, parse_linkedin_notification):
        with contextlib.suppress(BadRecordError):
            parse(body, received_at=RECEIVED)


# --- LinkedIn notifications ------------------------------------------------------------------


def test_linkedin_notification_gives_its_ref() -> None:
    body = data_bytes("linkedin_notification_created.json")
    (ref,) = parse_linkedin_notification(body, received_at=RECEIVED)
    assert ref.provider == "linkedin"
    assert ref.lead_ref == LI_LEAD_ID
    assert ref.event_id == lead_event_id("linkedin", LI_LEAD_ID)
    assert ref.form_id == "7412"
    assert ref.ad_id == "293847561"
    assert ref.owner == "urn:li:sponsoredAccount:508912345"
    assert ref.lead_type == "SPONSORED"
    assert ref.associated_entity == "urn:li:sponsoredCreative:293847561"
    assert ref.created_time == datetime(2026, 2, 27, 3, 40, 42, 118000, tzinfo=UTC)


def test_a_deleted_linkedin_lead_is_not_fetched() -> None:
    body = data_bytes("linkedin_notification_deleted.json")
    error = refusal(lambda: parse_linkedin_notification(body, received_at=RECEIVED))
    assert error.reason == "lead_deleted"
    assert "5e1f0a2b-77c4-4d3e-8a90-1b2c3d4e5f60-2" in error.message


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": "ORGANIZATION_SOCIAL_ACTION_NOTIFICATIONS"}, "unsupported_event"),
        ({"leadAction": "UPDATED"}, "unsupported_event"),
        ({"leadGenFormResponse": None}, "invalid_fields"),
        ({"leadGenFormResponse": "urn:li:leadGenFormResponse:a/../b"}, "invalid_fields"),
        ({"occurredAt": -5}, "invalid_fields"),
    ],
)
def test_linkedin_notification_refusals(changes: dict[str, Any], reason: str) -> None:
    body = json.dumps({**data_json("linkedin_notification_created.json"), **changes}).encode()
    assert refusal(lambda: parse_linkedin_notification(body, received_at=RECEIVED)).reason == reason


# --- lead objects → RawLead --------------------------------------------------------------------


def test_graph_lead_becomes_a_social_raw_lead() -> None:
    ref = meta_ref()
    lead = meta_lead(data_json("meta_graph_lead.json"), received_at=RECEIVED, ref=ref)
    assert lead.event_id == ref.event_id
    assert (lead.channel, lead.source_system, lead.form_id) == (
        "social",
        "meta_lead_ads",
        "998877665544332",
    )
    assert lead.received_at == RECEIVED
    assert lead.fields == {
        "full_name": "王小明",
        "email": "wang.xiaoming@example.cn",
        "phone_number": "+8613800138000",
        "company_name": "示例科技有限公司",
        "job_title": "采购经理",
        "city": "上海",
        "which_products_interest_you?": "CRM, Analytics",
    }
    assert lead.context == {
        "provider": "meta",
        "provider_lead_id": META_LEAD_ID,
        "created_time": "2026-02-27T02:15:03+00:00",
        "ad_id": "23850000000000001",
        "ad_name": "春季推广 - 视频",
        "adset_id": "23850000000000002",
        "adset_name": "华东 25-45",
        "campaign_id": "23850000000000003",
        "campaign_name": "2026 Spring Leads",
        "form_id": "998877665544332",
        "is_organic": "false",
        "platform": "fb",
        "page_id": "112233445566778",
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "1020304050607099"},
        {"id": None},
        {"field_data": {"email": "a@b.c"}},
        {"field_data": [{"name": "email", "values": [{"nested": True}]}]},
    ],
)
def test_an_unusable_graph_lead_is_an_invalid_response(changes: dict[str, Any]) -> None:
    data = {**data_json("meta_graph_lead.json"), **changes}
    error = refusal(lambda: meta_lead(data, received_at=RECEIVED, ref=meta_ref()))
    assert error.reason == "invalid_response"


def test_the_graph_leads_created_time_is_when_the_person_acted() -> None:
    lead = meta_lead(data_json("meta_graph_lead.json"), received_at=RECEIVED, ref=meta_ref())
    assert lead.occurred_at == datetime(2026, 2, 27, 2, 15, 3, tzinfo=UTC)
    assert lead.received_at == RECEIVED


@pytest.mark.parametrize(
    "created", ["yesterday", "1900-01-01T00:00:00+0000", "9999-01-01T00:00:00Z"]
)
def test_an_unreadable_created_time_keeps_the_lead_with_a_warning(created: str) -> None:
    data = {**data_json("meta_graph_lead.json"), "created_time": created}
    lead = meta_lead(data, received_at=RECEIVED, ref=meta_ref())
    assert lead.occurred_at is None  # the arrival time stands in
    assert lead.context["warnings"].startswith("created_time")
    assert "the arrival time is used instead" in lead.context["warnings"]


def test_linkedin_submitted_at_is_when_the_person_acted_and_a_bad_one_only_warns() -> None:
    response = data_json("linkedin_form_response.json")
    lead = linkedin_lead(response, form=None, received_at=RECEIVED, ref=linkedin_ref())
    assert lead.occurred_at == datetime.fromtimestamp(response["submittedAt"] / 1000, UTC)
    later = linkedin_lead(
        {**response, "submittedAt": "later"}, form=None, received_at=RECEIVED, ref=linkedin_ref()
    )
    assert later.occurred_at is None
    assert "submittedAt" in later.context["warnings"]


def test_linkedin_response_with_its_form_files_answers_by_field() -> None:
    ref = linkedin_ref()
    lead = linkedin_lead(
        data_json("linkedin_form_response.json"),
        form=data_json("linkedin_lead_form.json"),
        received_at=RECEIVED,
        ref=ref,
    )
    assert lead.event_id == ref.event_id
    assert (lead.channel, lead.source_system, lead.form_id) == (
        "social",
        "linkedin_lead_gen",
        "7412",
    )
    assert lead.fields == {
        "FIRST_NAME": "Grace",
        "LAST_NAME": "Hopper",
        "EMAIL": "grace.hopper@example.com",
        "PHONE_NUMBER": "+1 202 555 0143",
        "COMPANY_NAME": "Compilers Inc.",
        "JOB_TITLE": "Rear Admiral",
        "productsOfInterest": "Analytics, Routing",
        "purchaseTimeline": "Within this quarter",
    }
    assert lead.context["test_lead"] == "false"
    assert lead.context["created_time"] == "2026-02-27T03:40:40.512000+00:00"
    assert lead.context["form_name"] == "Demo request — EMEA"
    assert lead.context["form_version"] == "3"
    assert lead.context["campaign"] == "urn:li:sponsoredCampaign:367378525"
    assert lead.context["owner"] == "urn:li:sponsoredAccount:508912345"
    assert lead.context["lead_type"] == "SPONSORED"
    assert lead.context["ad_id"] == "293847561"


def test_linkedin_test_leads_are_marked_and_unknown_questions_keep_their_id() -> None:
    response = {**data_json("linkedin_form_response.json"), "testLead": True}
    lead = linkedin_lead(response, form=None, received_at=RECEIVED)
    assert lead.context["test_lead"] == "true"
    assert lead.fields["question_103"] == "grace.hopper@example.com"
    assert lead.fields["question_107"] == "2, 3"
    assert lead.event_id == lead_event_id("linkedin", LI_LEAD_ID)


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "another-lead"},
        {"formResponse": {}},
        {"formResponse": {"answers": [{"questionId": 1, "answerDetails": {"fileAnswer": {}}}]}},
    ],
)
def test_an_unusable_linkedin_response_is_an_invalid_response(changes: dict[str, Any]) -> None:
    response = {**data_json("linkedin_form_response.json"), **changes}
    error = refusal(
        lambda: linkedin_lead(response, form=None, received_at=RECEIVED, ref=linkedin_ref())
    )
    assert error.reason == "invalid_response"


# --- the fetcher against the stand-in ------------------------------------------------------------


class RecordedSleep:
    """Stands in for asyncio.sleep: remembers each pause instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def api() -> AsyncIterator[SocialApiStandIn]:
    stand_in = SocialApiStandIn(meta_token=META_TOKEN, linkedin_token=LI_TOKEN)
    stand_in.meta_leads[META_LEAD_ID] = data_json("meta_graph_lead.json")
    stand_in.linkedin_responses[LI_LEAD_ID] = data_json("linkedin_form_response.json")
    stand_in.linkedin_forms["7412"] = data_json("linkedin_lead_form.json")
    async with running(stand_in) as serving:
        yield serving


def settings_for(api: SocialApiStandIn, **overrides: Any) -> SocialSettings:
    values: dict[str, Any] = {
        "meta_access_token": SecretStr(META_TOKEN),
        "linkedin_access_token": SecretStr(LI_TOKEN),
        "meta_graph_url": api.meta_graph_url,
        "linkedin_api_url": api.linkedin_api_url,
        "fetch_max_tries": 3,
        "fetch_backoff_s": 0.5,
        "fetch_timeout_s": 2.0,
    }
    values.update(overrides)
    return SocialSettings(**values)


async def fetch(
    api: SocialApiStandIn, ref: LeadgenRef, sleep: RecordedSleep, **overrides: Any
) -> RawLead:
    async with SocialFetcher(settings_for(api, **overrides), sleep=sleep) as fetcher:
        return await fetcher.fetch(ref)


async def fetch_refusal(
    api: SocialApiStandIn, ref: LeadgenRef, sleep: RecordedSleep, **overrides: Any
) -> BadRecordError:
    with pytest.raises(BadRecordError) as caught:
        await fetch(api, ref, sleep, **overrides)
    return caught.value


async def test_fetches_a_meta_lead_with_the_token_in_a_header(api: SocialApiStandIn) -> None:
    sleep = RecordedSleep()
    lead = await fetch(api, meta_ref(), sleep)
    assert lead == meta_lead(
        data_json("meta_graph_lead.json"), received_at=RECEIVED, ref=meta_ref()
    )
    (request,) = api.received
    assert request.path == f"/graph/v21.0/{META_LEAD_ID}"
    assert request.headers["Authorization"] == f"Bearer {META_TOKEN}"
    assert "access_token" not in request.query
    assert "appsecret_proof" not in request.query
    assert "field_data" in request.query["fields"].split(",")
    assert sleep.delays == []


async def test_sends_appsecret_proof_when_the_app_secret_is_set(api: SocialApiStandIn) -> None:
    await fetch(api, meta_ref(), RecordedSleep(), meta_app_secret=SecretStr(APP_SECRET))
    (request,) = api.received
    assert request.query["appsecret_proof"] == hmac_hex(APP_SECRET, META_TOKEN.encode())


async def test_a_missing_linkedin_form_is_named_in_the_refusal(api: SocialApiStandIn) -> None:
    del api.linkedin_forms["7412"]
    error = await fetch_refusal(api, linkedin_ref(), RecordedSleep())
    assert error.reason == "lead_not_found"
    assert error.message.startswith(f"form 7412 of linkedin lead {LI_LEAD_ID} refused: HTTP 404")


async def test_fetches_a_linkedin_lead_and_its_form_once(api: SocialApiStandIn) -> None:
    sleep = RecordedSleep()
    async with SocialFetcher(settings_for(api), sleep=sleep, linkedin_version="202610") as fetcher:
        lead = await fetcher.fetch(linkedin_ref())
        again = await fetcher.fetch(linkedin_ref())
    assert lead == again
    assert lead.fields["EMAIL"] == "grace.hopper@example.com"
    assert api.paths == [
        f"/linkedin/rest/leadFormResponses/{LI_LEAD_ID}",
        "/linkedin/rest/leadForms/7412",
        f"/linkedin/rest/leadFormResponses/{LI_LEAD_ID}",
    ]
    for request in api.received:
        assert request.headers["Authorization"] == f"Bearer {LI_TOKEN}"
        assert request.headers["LinkedIn-Version"] == "202610"
        assert request.headers["X-Restli-Protocol-Version"] == "2.0.0"


async def test_server_errors_are_retried_with_doubling_pauses(api: SocialApiStandIn) -> None:
    api.fail_next(2, status=500)
    sleep = RecordedSleep()
    lead = await fetch(api, meta_ref(), sleep)
    assert lead.fields["email"] == "wang.xiaoming@example.cn"
    assert len(api.received) == 3
    assert sleep.delays == [0.5, 1.0]


async def test_retry_after_is_honoured_and_capped(api: SocialApiStandIn) -> None:
    api.throttle_next("3")
    api.throttle_next("86400")
    sleep = RecordedSleep()
    await fetch(api, linkedin_ref(), sleep)
    assert sleep.delays == [3.0, social.MAX_RETRY_AFTER_S]


async def test_graph_throttling_codes_are_retried_whatever_the_status(
    api: SocialApiStandIn,
) -> None:
    body = json.dumps({"error": {"message": "(#4) Application request limit reached", "code": 4}})
    api.fail_next(status=400, body=body)
    sleep = RecordedSleep()
    await fetch(api, meta_ref(), sleep)
    assert len(api.received) == 2
    assert sleep.delays == [0.5]


async def test_an_unknown_linkedin_lead_is_not_found_without_retry(api: SocialApiStandIn) -> None:
    sleep = RecordedSleep()
    error = await fetch_refusal(api, linkedin_ref("no-such-lead-1"), sleep)
    assert error.reason == "lead_not_found"
    assert "HTTP 404" in error.message
    assert len(api.received) == 1
    assert sleep.delays == []


async def test_an_unknown_meta_lead_is_not_found_without_retry(api: SocialApiStandIn) -> None:
    sleep = RecordedSleep()
    error = await fetch_refusal(api, meta_ref("1020304050609999"), sleep)
    assert error.reason == "lead_not_found"
    assert "HTTP 400" in error.message
    assert len(api.received) == 1


@pytest.mark.parametrize("status", [401, 403, 400, 301])
async def test_other_refusals_are_not_retried(api: SocialApiStandIn, status: int) -> None:
    api.fail_next(status=status, body=json.dumps({"status": status, "message": "no"}))
    sleep = RecordedSleep()
    error = await fetch_refusal(api, linkedin_ref(), sleep)
    assert error.reason == "fetch_refused"
    assert f"HTTP {status}" in error.message
    assert error.fields["status"] == f"HTTP {status}"
    assert len(api.received) == 1
    assert sleep.delays == []


async def test_gives_up_after_exactly_fetch_max_tries(api: SocialApiStandIn) -> None:
    api.fail_next(10, status=503)
    sleep = RecordedSleep()
    error = await fetch_refusal(api, meta_ref(), sleep, fetch_max_tries=4)
    assert error.reason == "fetch_failed"
    assert "after 4 tries" in error.message
    assert "HTTP 503" in error.message
    assert len(api.received) == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


async def test_a_slow_answer_times_out_and_is_retried(api: SocialApiStandIn) -> None:
    api.stall_next(0.5)
    sleep = RecordedSleep()
    lead = await fetch(api, meta_ref(), sleep, fetch_timeout_s=0.05)
    assert lead.event_id == meta_ref().event_id
    assert len(api.received) == 2
    assert sleep.delays == [0.5]


async def test_an_unreachable_api_ends_in_fetch_failed(api: SocialApiStandIn) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sleep = RecordedSleep()
    error = await fetch_refusal(
        api, meta_ref(), sleep, meta_graph_url=f"http://127.0.0.1:{closed_port}/v21.0"
    )
    assert error.reason == "fetch_failed"
    assert "after 3 tries" in error.message
    assert "Connect" in error.message


async def test_tokens_never_reach_errors_or_logs(
    api: SocialApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"message": f"Bad token {META_TOKEN}", "code": 190}})
    api.fail_next(2, status=500, body=echo)
    api.fail_next(status=400, body=echo)
    sleep = RecordedSleep()
    refused = await fetch_refusal(api, meta_ref(), sleep)
    api.fail_next(3, status=502, body=json.dumps({"message": f"upstream saw {LI_TOKEN}"}))
    failed = await fetch_refusal(api, linkedin_ref(), sleep)
    assert (refused.reason, failed.reason) == ("fetch_refused", "fetch_failed")
    for error in (refused, failed):
        text = " ".join([str(error), error.message, *error.fields.values()])
        assert META_TOKEN not in text
        assert LI_TOKEN not in text
    assert "[redacted]" in refused.message
    assert caplog.records, "retries are logged"
    assert META_TOKEN not in caplog.text
    assert LI_TOKEN not in caplog.text


async def test_a_wrong_token_is_refused_not_retried(api: SocialApiStandIn) -> None:
    sleep = RecordedSleep()
    error = await fetch_refusal(api, meta_ref(), sleep, meta_access_token=SecretStr("EAAexpired"))
    assert error.reason == "fetch_refused"
    assert "190" in error.message
    assert "EAAexpired" not in error.message


async def test_a_missing_token_stops_the_worker(api: SocialApiStandIn) -> None:
    with pytest.raises(ConfigurationError, match="SOCIAL_LINKEDIN_ACCESS_TOKEN"):
        await fetch(api, linkedin_ref(), RecordedSleep(), linkedin_access_token=None)
    assert api.received == []


async def test_a_non_json_answer_is_an_invalid_response(api: SocialApiStandIn) -> None:
    api.meta_leads[META_LEAD_ID] = {"id": "1020304050607080", "field_data": "oops"}
    error = await fetch_refusal(api, meta_ref(), RecordedSleep())
    assert error.reason == "invalid_response"


# --- Ads Manager lead exports ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["meta_export_utf16.tsv", "meta_export_utf8.csv"])
def test_export_rows_become_leads_and_a_bad_row_stops_nothing(name: str) -> None:
    with (DATA / name).open("rb") as raw:
        results = list(meta_export_leads(raw, received_at=RECEIVED, source=name))
    first, undated, last = results  # row 3 is bad in each file
    assert isinstance(first, RawLead)
    assert isinstance(last, RawLead)
    if name.endswith(".csv"):
        # A created_time leadflow cannot read costs the time, not the person: the lead is
        # kept, stamped with its arrival, and says why.
        assert isinstance(undated, RawLead)
        assert undated.occurred_at is None
        assert undated.context["warnings"].startswith("row 3: created_time")
        assert "the arrival time is used" in undated.context["warnings"]
    else:  # a row without a Meta lead id cannot be the lead the webhook would fetch
        assert isinstance(undated, BadRecordError)
        assert undated.reason == "invalid_row"
        assert undated.message.startswith("row 3: id")
    assert first.occurred_at == datetime(2026, 2, 27, 2, 15, 3, tzinfo=UTC)
    assert first.event_id == lead_event_id("meta", META_LEAD_ID)
    assert last.event_id == lead_event_id("meta", "1020304050607082")
    assert first.fields["phone_number"] == "+8613800138000"
    assert first.fields["full_name"] == "王小明"
    assert first.fields["which_products_interest_you?"] == "CRM, Analytics"
    assert first.form_id == "998877665544332"
    assert first.context["ad_id"] == "23850000000000001"
    assert first.context["campaign_id"] == "23850000000000003"
    assert first.context["created_time"] == "2026-02-27T02:15:03+00:00"
    assert first.context["export_row"] == "2"
    assert last.context["is_organic"] == "true"
    assert last.context["platform"] == "ig"
    assert "ad_id" not in last.context


def test_a_backfill_gives_the_webhooks_event_ids() -> None:
    refs = parse_meta_notification(data_bytes("meta_webhook_leadgen.json"), received_at=RECEIVED)
    with (DATA / "meta_export_utf16.tsv").open("rb") as raw:
        backfilled = [
            lead.event_id
            for lead in meta_export_leads(raw, received_at=RECEIVED)
            if isinstance(lead, RawLead)
        ]
    assert backfilled == [ref.event_id for ref in refs]
    graph = meta_lead(data_json("meta_graph_lead.json"), received_at=RECEIVED, ref=meta_ref())
    assert graph.event_id == backfilled[0]


def test_export_rows_raise_one_at_a_time_with_their_number() -> None:
    text = (
        "id,created_time,is_organic,email\n"
        "l:11,2026-02-27T10:15:03+08:00,0,a@example.com\n"
        "l:12,2026-02-27T10:15:03+08:00,maybe,b@example.com\n"
        "\n"
        "l:13,2026-02-27T10:15:03+08:00,0,c@example.com,surplus\n"
        "14,2026-02-27T10:15:03Z,1,d@example.com\n"
    )
    outcomes: list[str] = []
    for row in read_meta_export(io.BytesIO(text.encode())):
        try:
            outcomes.append(lead_from_export_row(row, received_at=RECEIVED).fields["email"])
        except BadRecordError as exc:
            outcomes.append(f"{exc.reason} {exc.fields['row']}")
    assert outcomes == ["a@example.com", "invalid_row 3", "invalid_row 5", "d@example.com"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"name,email\nAda,ada@example.com\n", "no_header"),
        (b"", "no_header"),
        (b"id,email\n1,\xff\xfe\xfa\n", "invalid_encoding"),
        (b'id,email\n1,"' + b"x" * 200_000 + b'"\n', "invalid_file"),
    ],
)
def test_file_level_problems(data: bytes, reason: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        list(read_meta_export(io.BytesIO(data)))
    assert caught.value.reason == reason
