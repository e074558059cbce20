"""The pure normalize step: tables of cases, then properties."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from leadflow.normalize import (
    clean_text,
    lead_id_for,
    normalize_country,
    normalize_email,
    normalize_lead,
    normalize_phone,
    normalize_phone_parts,
    phone_match_key,
)
from schemas import DeadLetter, Lead, RawLead
from streams.normalize_agent import normalize_message


@pytest.mark.parametrize(
    ("given_email", "expected"),
    [
        (" Foo@Example.COM ", "foo@example.com"),
        ("FOO.BAR+tag@EXAMPLE.co.uk", "foo.bar+tag@example.co.uk"),
        (
            "ｆｏｏ＠ｅｘａｍｐｌｅ．ｃｏｍ",
            "foo@example.com",
        ),  # full-width, as typed on a CJK keyboard
        ("wang.xm@Example.cn", "wang.xm@example.cn"),
    ],
)
def test_emails_are_validated_and_lower_cased(given_email: str, expected: str) -> None:
    assert normalize_email(given_email) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "not-an-email",
        "a@",
        "@example.com",
        "a@b",
        "two@@example.com",
        "spaces in@example.com",
    ],
)
def test_bad_emails_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        normalize_email(bad)


@pytest.mark.parametrize(
    ("given_phone", "region", "expected"),
    [
        ("138 0013 8000", "CN", "+8613800138000"),
        ("１３８００１３８０００", "CN", "+8613800138000"),  # full-width digits
        ("0086 138 0013 8000", "CN", "+8613800138000"),  # 00 international prefix
        ("0086 138 0013 8000", "US", "+8613800138000"),  # ... whatever the default region
        ("+86-138-0013-8000", "US", "+8613800138000"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("+1 415 555 2671", "CN", "+14155552671"),
        ("020 7946 0018", "GB", "+442079460018"),
    ],
)
def test_phones_become_e164(given_phone: str, region: str, expected: str) -> None:
    assert normalize_phone(given_phone, region) == expected


@pytest.mark.parametrize(
    ("given_phone", "region", "extension"),
    [
        ("+49 89 1234-0 ext 12", "DE", "12"),
        ("+49 89 1234-0 ext. 12", "DE", "12"),
        ("089 1234-0 x12", "DE", "12"),
        ("+49 89 12340#12", "DE", "12"),
        ("+49 89 12340,12", "DE", "12"),
        ("+49 89 1234-0", "DE", None),
    ],
)
def test_phone_extensions_are_kept_beside_the_e164_number(
    given_phone: str, region: str, extension: str | None
) -> None:
    assert normalize_phone_parts(given_phone, region) == ("+498912340", extension)
    assert normalize_phone(given_phone, region) == "+498912340"  # E.164 stays E.164


def test_the_phone_match_key_carries_the_extension() -> None:
    assert phone_match_key("+498912340", "12") == "+498912340;ext=12"
    assert phone_match_key("+498912340", None) == "+498912340"
    assert phone_match_key(None, "12") is None


def test_a_lead_keeps_its_extension(make_raw_lead: Callable[..., RawLead]) -> None:
    lead = normalize_lead(
        make_raw_lead({"name": "Klaus Berger", "phone": "+49 89 1234-0 ext 12"}),
        default_region="CN",
    )
    assert (lead.phone, lead.phone_extension, lead.country) == ("+498912340", "12", "DE")


@pytest.mark.parametrize("bad", ["12", "hello", "+86 123", "", "555-CALL-NOW-PLEASE"])
def test_bad_phones_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        normalize_phone(bad, "CN")


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("  Foo   Bar ", "Foo Bar"),
        ("王小明", "王小明"),
        ("Zo\u0065\u0301", "Zoé"),  # decomposed é becomes one code point
        ("Ada\u200bLovelace", "Ada Lovelace"),  # a zero-width space is not a name character
        ("Line\nBreak\tTab", "Line Break Tab"),
    ],
)
def test_names_are_trimmed_and_nfc(given_name: str, expected: str) -> None:
    assert clean_text(given_name) == expected


@pytest.mark.parametrize(
    ("given_country", "expected"),
    [
        ("us", "US"),
        ("CN", "CN"),
        ("中国", "CN"),
        ("United Kingdom", "GB"),
        ("Narnia", None),
    ],
)
def test_countries_to_iso_codes(given_country: str, expected: str | None) -> None:
    assert normalize_country(given_country) == expected


def test_a_lead_from_a_chinese_form(make_raw_lead: Callable[..., RawLead]) -> None:
    raw = make_raw_lead(
        {
            "姓名": " 王小明 ",
            "手机": "１３８ ００１３ ８０００",
            "公司": "示例科技有限公司",
            "国家": "中国",
            "utm_source": "baidu",
            "bd_vid": "x1",
        }
    )
    lead = normalize_lead(raw, default_region="US")
    assert lead.full_name == "王小明"
    assert lead.phone == "+8613800138000"  # the lead's country, not the default, picks the region
    assert lead.country == "CN"
    assert lead.company == "示例科技有限公司"
    assert lead.utm_source == "baidu"
    assert lead.attributes == {"bd_vid": "x1"}
    assert lead.lead_id == lead_id_for(raw.event_id)


def test_first_and_last_name_make_the_full_name(make_raw_lead: Callable[..., RawLead]) -> None:
    lead = normalize_lead(
        make_raw_lead({"first_name": "Li", "last_name": "Na", "email": "li.na@example.org"}),
        default_region="CN",
    )
    assert (lead.first_name, lead.last_name, lead.full_name) == ("Li", "Na", "Li Na")


def test_every_bad_field_is_named(make_raw_lead: Callable[..., RawLead]) -> None:
    with pytest.raises(BadRecordError) as caught:
        normalize_lead(
            make_raw_lead({"email": "nope", "phone": "12", "consent": "maybe"}), default_region="CN"
        )
    assert caught.value.reason == "invalid_fields"
    assert set(caught.value.fields) == {"email", "phone", "consent"}


def test_no_contact_is_its_own_reason(make_raw_lead: Callable[..., RawLead]) -> None:
    with pytest.raises(BadRecordError) as caught:
        normalize_lead(make_raw_lead({"name": "Anonymous"}), default_region="CN")
    assert caught.value.reason == "no_contact"
    assert set(caught.value.fields) == {"email", "phone"}


def test_the_first_non_empty_alias_wins(make_raw_lead: Callable[..., RawLead]) -> None:
    lead = normalize_lead(
        make_raw_lead({"phone": " ", "mobile": "13800138000", "email": "a@example.com"}),
        default_region="CN",
    )
    assert lead.phone == "+8613800138000"
    assert lead.attributes == {}  # an empty cell says nothing and is not kept


def test_normalize_message_turns_garbage_into_a_dead_letter() -> None:
    result = normalize_message(
        b"\xff\xfe garbage",
        default_region="CN",
        key=b"k",
        topic="leads.raw",
        partition=2,
        offset=41,
    )
    assert isinstance(result, DeadLetter)
    assert result.stage == "normalize"
    assert result.original == b"\xff\xfe garbage"
    assert (result.source_topic, result.source_partition, result.source_offset) == (
        "leads.raw",
        2,
        41,
    )
    again = normalize_message(
        b"\xff\xfe garbage",
        default_region="CN",
        key=b"k",
        topic="leads.raw",
        partition=2,
        offset=41,
    )
    assert isinstance(again, DeadLetter)
    assert again.dead_letter_id == result.dead_letter_id  # refused twice, one dead letter


def test_normalize_message_returns_the_lead(make_raw_lead: Callable[..., RawLead]) -> None:
    raw = make_raw_lead({"email": " X@Example.com "})
    result = normalize_message(raw.model_dump_json().encode(), default_region="CN")
    assert isinstance(result, Lead)
    assert result.email == "x@example.com"
    assert result.received_at == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


# Properties ---------------------------------------------------------------

local_parts = st.from_regex(r"[a-z][a-z0-9._+-]{0,15}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s and not s.endswith(".")
)
# "--" is reserved in host names (IDNA: `xn--`), so generated labels avoid it.
domains = st.from_regex(
    r"[a-z][a-z0-9-]{0,10}[a-z0-9]\.(com|cn|org|net|io)", fullmatch=True
).filter(lambda d: "--" not in d)
emails = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)


@given(emails)
def test_email_normalization_is_idempotent(email: str) -> None:
    once = normalize_email(email)
    assert normalize_email(once) == once


@given(emails, st.sampled_from([str.upper, str.title, str.swapcase]), st.text(" \t", max_size=3))
def test_email_normalization_ignores_case_and_padding(
    email: str, recase: Callable[[str], str], pad: str
) -> None:
    assert normalize_email(pad + recase(email) + pad) == normalize_email(email)


@given(
    st.text(alphabet=st.characters(codec="utf-8", categories=["L", "M", "Zs", "Nd"]), max_size=40)
)
def test_names_ignore_unicode_form_and_are_idempotent(name: str) -> None:
    composed = clean_text(unicodedata.normalize("NFC", name))
    assert clean_text(unicodedata.normalize("NFD", name)) == composed
    assert clean_text(composed) == composed


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True))
def test_full_width_and_prefixed_phones_agree(digits: str) -> None:
    try:
        expected = normalize_phone(digits, "CN")
    except ValueError:
        return  # not every 11-digit string is an allocated mobile range
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in digits)
    assert normalize_phone(full_width, "CN") == expected
    assert normalize_phone("0086" + digits, "US") == expected
    assert normalize_phone("+86 " + digits, "GB") == expected
    assert normalize_phone(expected, "CN") == expected


# ASCII text shaped like addresses, tricky parts included: dots, hyphens, `--`, digits-only
# and special-use top-level domains, overlong parts, atext symbols.
_address_chars = "abcXYZ019.-_+!#$%&'*/=?^`{|}~@"
address_like = st.one_of(
    st.text(alphabet=_address_chars, min_size=3, max_size=30),
    st.builds(
        lambda local, labels, tld: f"{local}@{'.'.join([*labels, tld])}",
        st.text(alphabet=_address_chars.replace("@", ""), min_size=1, max_size=70),
        st.lists(st.text(alphabet="ab9-X", min_size=1, max_size=66), min_size=1, max_size=4),
        st.sampled_from(
            ["com", "cn", "test", "localhost", "onion", "c", "123", "xn--fiqs8s", "Io"]
        ),
    ),
)


@given(address_like)
def test_the_plain_ascii_shortcut_agrees_with_the_validator(text: str) -> None:
    from email_validator import EmailNotValidError, validate_email

    from leadflow.normalize import _plain_email

    shortcut = _plain_email(text)
    if shortcut is None:
        return  # the validator decides, as before
    try:
        checked = validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        pytest.fail(f"the shortcut accepted {text!r}, the validator refuses it: {exc}")
    assert shortcut == checked


@given(st.uuids(), st.text(max_size=80))
def test_stable_ids_are_version_5_uuids(namespace: uuid.UUID, name: str) -> None:
    # Ids already stored (lead, event, transition ids) must not change with the helper.
    assert stable_id(namespace, name) == str(uuid.uuid5(namespace, name))
