"""The mailer's pure pieces: rendering a nurture email and sorting delivery failures."""

from __future__ import annotations

import email
import re
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest

from leadflow.errors import BadRecordError, RetriableError
from leadflow.settings import NurtureSettings
from leadflow.tracking import verify
from schemas.nurture import NurtureEmail
from sinks.mailer import (
    RecipientRefused,
    checked_address,
    poll_interval_ms,
    render,
    smtp_failure,
    to_message,
    webhook_body,
    webhook_failure,
)

SECRET = b"unit-test-secret"
PUBLIC = "https://t.example.com/"
TOUR = "https://www.example.com/tour"
TOUR_PRICING = "https://www.example.com/tour/pricing"
TOKEN = re.compile(r"https://t\.example\.com/v1/nurture/([ocu])/([\w-]+\.[\w-]+)")


def make_email(**overrides: Any) -> NurtureEmail:
    values: dict[str, Any] = {
        "send_id": "s-1",
        "lead_id": "lead-1",
        "sequence": "welcome",
        "step": "1",
        "template": "welcome",
        "locale": "en",
        "to": "ada@example.com",
        "subject": "Welcome to Acme, Ada",
        "text": f"Hello Ada,\nthe tour: {TOUR}.\nPricing: {TOUR_PRICING}\nAgain: {TOUR}\n",
        "links": [TOUR, TOUR_PRICING],
        "due_at": datetime(2025, 1, 6, 9, tzinfo=UTC),
    }
    return NurtureEmail(**{**values, **overrides})


def tokens(text: str) -> list[tuple[str, str]]:
    return TOKEN.findall(text)


def test_every_occurrence_of_each_link_becomes_its_own_click_link() -> None:
    rendered = render(make_email(), "acme@example.com", PUBLIC, SECRET)
    assert TOUR not in rendered.text
    clicks = [verify(SECRET, t, "click") for kind, t in tokens(rendered.text) if kind == "c"]
    # The longer URL that starts with the shorter one is not cut at the shorter one.
    assert [c.link for c in clicks] == [0, 1, 0]
    assert {c.send_id for c in clicks} == {"s-1"}
    assert "the tour: https://t.example.com/v1/nurture/c/" in rendered.text
    assert re.search(r"/c/[\w-]+\.[\w-]+\.\nPricing", rendered.text), "the full stop stays"


def test_a_url_not_among_the_links_is_left_alone() -> None:
    text = f"See {TOUR}s and https://other.example.com/{TOUR}x"
    rendered = render(make_email(text=text, links=[TOUR]), "a@example.com", PUBLIC, SECRET)
    assert [kind for kind, _ in tokens(rendered.text)] == ["u"]
    assert rendered.text.startswith(text)


def test_a_link_right_before_chinese_text_or_a_bracket_is_tracked() -> None:
    text = f"产品介绍：{TOUR}了解更多。({TOUR}) {TOUR}.html"
    rendered = render(make_email(text=text, links=[TOUR]), "a@example.com", PUBLIC, SECRET)
    assert [kind for kind, _ in tokens(rendered.text)] == ["c", "c", "u"]
    assert rendered.text.startswith("产品介绍：https://t.example.com/v1/nurture/c/")
    assert f" {TOUR}.html" in rendered.text


def test_unsubscribe_line_and_headers_are_signed_for_this_send() -> None:
    rendered = render(make_email(locale="zh"), "acme@example.com", PUBLIC, SECRET)
    [(kind, token)] = tokens(rendered.text.splitlines()[-1])
    assert kind == "u"
    assert rendered.text.rstrip().splitlines()[-1].startswith("退订: ")
    claims = verify(SECRET, token, "unsubscribe")
    assert (claims.send_id, claims.lead_id, claims.link) == ("s-1", "lead-1", None)
    assert rendered.headers["List-Unsubscribe"] == f"<https://t.example.com/v1/nurture/u/{token}>"
    assert rendered.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert rendered.headers["Message-ID"] == "<s-1@leadflow>"


def test_html_is_escaped_with_links_as_anchors_and_an_open_pixel() -> None:
    text = f'<b>Tom & "Jerry"</b>\nTour: {TOUR}'
    rendered = render(make_email(text=text, links=[TOUR]), "a@example.com", PUBLIC, SECRET)
    assert "&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt;<br>" in rendered.html
    anchor = re.search(r'<a href="([^"]+)">' + re.escape(TOUR) + "</a>", rendered.html)
    assert anchor is not None
    assert verify(SECRET, anchor.group(1).rsplit("/", 1)[1], "click").link == 0
    pixel = re.search(r'<img src="[^"]+/o/([\w-]+\.[\w-]+)" width="1" height="1"', rendered.html)
    assert pixel is not None
    assert verify(SECRET, pixel.group(1), "open").send_id == "s-1"


def test_the_message_carries_both_parts_and_every_header() -> None:
    rendered = render(
        make_email(subject="Hi\r\nBcc: x@evil.example"), "a@example.com", PUBLIC, SECRET
    )
    parsed = email.message_from_bytes(bytes(to_message(rendered)), policy=default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "Hi Bcc: x@evil.example"
    assert parsed["Bcc"] is None
    assert parsed["To"] == "ada@example.com"
    assert parsed["Message-ID"] == "<s-1@leadflow>"
    assert parsed.get_content_type() == "multipart/alternative"
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content() == rendered.text
    assert html.get_content() == rendered.html
    assert webhook_body(rendered)["headers"]["Message-ID"] == "<s-1@leadflow>"


@pytest.mark.parametrize("to", ["not an address", "a@", "x\n@example.com", "Ada <ada@example.com>"])
def test_a_bad_address_is_a_bad_record(to: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        checked_address(to)
    assert caught.value.reason == "bad_address"


def test_a_good_address_is_normalized() -> None:
    assert checked_address(" Ada@Example.COM ") == "ada@example.com"


@pytest.mark.parametrize(
    ("error", "bounce"),
    [
        (smtplib.SMTPRecipientsRefused({"a@x.com": (550, b"5.1.1 no such user")}), True),
        (smtplib.SMTPRecipientsRefused({"a@x.com": (451, b"4.3.0 try later")}), False),
        (smtplib.SMTPDataError(554, b"5.7.1 message refused"), True),
        (smtplib.SMTPDataError(452, b"4.3.1 no space"), False),
        (smtplib.SMTPSenderRefused(553, b"5.7.1 not our sender", "a@x.com"), False),
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), False),
        (smtplib.SMTPServerDisconnected("gone"), False),
        (ConnectionRefusedError(111, "refused"), False),
        (TimeoutError("timed out"), False),
    ],
)
def test_only_a_5xx_refusal_of_recipient_or_message_is_a_bounce(
    error: smtplib.SMTPException | OSError, bounce: bool
) -> None:
    outcome = smtp_failure(error)
    assert isinstance(outcome, RecipientRefused if bounce else RetriableError)
    if bounce:
        assert isinstance(outcome, RecipientRefused)
        assert outcome.reply.startswith("55")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, None),
        (202, None),
        (400, RecipientRefused),
        (422, RecipientRefused),
        (401, RetriableError),
        (403, RetriableError),
        (404, RetriableError),
        (408, RetriableError),
        (409, RetriableError),
        (429, RetriableError),
        (500, RetriableError),
        (503, RetriableError),
    ],
)
def test_webhook_answers(status: int, outcome: type[Exception] | None) -> None:
    found = webhook_failure(status, "the answer")
    assert (type(found) if found is not None else None) is outcome


def test_the_poll_interval_covers_one_email_with_every_attempt_failing() -> None:
    assert poll_interval_ms(NurtureSettings(max_attempts=1, timeout_s=1)) == 300_000  # the default
    slow = NurtureSettings(max_attempts=10, backoff_s=2, timeout_s=30)
    assert poll_interval_ms(slow) > (10 * 30 + 2 * 511) * 1000
