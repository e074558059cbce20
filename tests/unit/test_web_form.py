"""Parsing of web-form posts: pure, no server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest_adapters.web_form import WebFormRequest, event_id_for, parse_web_form
from leadflow.errors import BadRecordError

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def request(
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    form_id: str | None = None,
) -> WebFormRequest:
    return WebFormRequest(
        body=body,
        content_type=content_type,
        headers=headers or {},
        form_id=form_id,
        received_at=NOW,
        remote="127.0.0.1",
    )


def test_json_fields_become_text() -> None:
    raw = parse_web_form(
        request(
            b'{"name": "Ada", "email": "ada@example.com", "employees": 250, "consent": true,'
            b' "interests": ["crm", "bi"], "fax": null}',
            headers={"Origin": "https://www.example.com", "User-Agent": "UA/1"},
        )
    )
    assert raw.fields == {
        "name": "Ada",
        "email": "ada@example.com",
        "employees": "250",
        "consent": "true",
        "interests": "crm, bi",
        "fax": "",
    }
    assert raw.channel == "web"
    assert raw.context["origin"] == "https://www.example.com"
    assert raw.context["content_type"] == "application/json"


def test_urlencoded_with_chinese_labels_and_repeats() -> None:
    body = "姓名=王小明&手机=13800138000&interest=crm&interest=bi".encode()
    raw = parse_web_form(request(body, "application/x-www-form-urlencoded; charset=UTF-8"))
    assert raw.fields == {"姓名": "王小明", "手机": "13800138000", "interest": "crm, bi"}


def test_a_byte_order_mark_is_tolerated() -> None:
    raw = parse_web_form(request(b'\xef\xbb\xbf{"email": "a@example.com"}'))
    assert raw.fields == {"email": "a@example.com"}


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"email": "a@example.com",', "application/json", "invalid_json"),
        (b'["a@example.com"]', "application/json", "invalid_json"),
        (
            b'{"email": "a@example.com", "email": "b@example.com"}',
            "application/json",
            "invalid_json",
        ),
        (b'{"score": NaN, "email": "a@example.com"}', "application/json", "invalid_json"),
        (b'{"email": {"nested": "a@example.com"}}', "application/json", "invalid_fields"),
        (b'{"email": "\\ud800@example.com"}', "application/json", "invalid_fields"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "invalid_json"),
        (b"\xff\xfe\x00e", "application/json", "invalid_encoding"),
        (b"email=a@example.com", "text/plain", "unsupported_media_type"),
        (b"email=a@example.com", "", "unsupported_media_type"),
        (b"email=%ff%fe", "application/x-www-form-urlencoded", "invalid_form"),
    ],
)
def test_refusals_carry_a_reason(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        parse_web_form(request(body, content_type))
    assert caught.value.reason == reason
    assert caught.value.message


def test_idempotency_key_fixes_the_event_id() -> None:
    body = b'{"email": "a@example.com"}'
    first = parse_web_form(request(body, headers={"Idempotency-Key": "k-1"}, form_id="demo"))
    again = parse_web_form(request(body, headers={"Idempotency-Key": "k-1"}, form_id="demo"))
    other_form = parse_web_form(request(body, headers={"Idempotency-Key": "k-1"}, form_id="x"))
    no_key = parse_web_form(request(body))
    assert first.event_id == again.event_id == event_id_for("demo", "k-1")
    assert other_form.event_id != first.event_id
    assert no_key.event_id not in (first.event_id, parse_web_form(request(body)).event_id)
    assert first.idempotency_key == "k-1"
