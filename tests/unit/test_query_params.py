"""Query API parameters and answers: ASCII whole numbers only, and always valid JSON."""

from __future__ import annotations

import json
import math

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from leadflow.errors import BadRecordError
from privacy.erase import EraseRequest, parse_erase_request
from sinks.clickhouse.query_api import _whole, finite, json_answer, limit_param


def request(query: str) -> web.Request:
    return make_mocked_request("GET", f"/v1/leads?{query}")


@pytest.mark.parametrize(
    "raw",
    [
        "²",  # a superscript: str.isdigit() says yes, int() says no
        "%C2%B2",
        "１０",  # full-width digits: int() would read 10
        "%EF%BC%91%EF%BC%90",
        "٣",  # Arabic-Indic three
        "-1",
        "0",
        "10001",
        "99999999999999999999999",
        "1e3",
        "1.0",
        " ",
        "",
        "+5",
        "0x10",
    ],
)
def test_limit_refuses_anything_but_ascii_digits_in_range(raw: str) -> None:
    with pytest.raises(web.HTTPBadRequest) as refused:
        limit_param(request(f"limit={raw}"))
    assert "limit must be a whole number from 1 to 10000" in refused.value.reason


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("10000", 10000), ("0042", 42)])
def test_limit_takes_ascii_whole_numbers(raw: str, expected: int) -> None:
    assert limit_param(request(f"limit={raw}")) == expected


def test_limit_defaults_to_100() -> None:
    assert limit_param(request("")) == 100


@pytest.mark.parametrize("raw", ["²", "１４", "-3", "3651", "1" * 40])
def test_whole_refuses_the_same(raw: str) -> None:
    with pytest.raises(web.HTTPBadRequest):
        _whole(request(f"days={raw}"), "days", 14, 1, 3650)
    assert _whole(request("days=30"), "days", 14, 1, 3650) == 30
    assert _whole(request(""), "days", 14, 1, 3650) == 14


def test_non_finite_floats_become_null_at_any_depth() -> None:
    answer = {
        "total": math.inf,
        "rows": [{"amount": -math.inf, "weighted": math.nan, "ok": 1.5, "n": 3}],
        "pair": (math.nan, "x"),
    }
    assert finite(answer) == {
        "total": None,
        "rows": [{"amount": None, "weighted": None, "ok": 1.5, "n": 3}],
        "pair": [None, "x"],
    }


def test_json_answer_is_always_valid_json() -> None:
    response = json_answer({"amount": 1e308 * 10, "weighted": float("nan"), "fine": 2.25})
    assert response.text is not None
    body = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer"))
    assert body == {"amount": None, "weighted": None, "fine": 2.25}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"email": "a@example.com", "phone": "+8613800138000"}', "phone"),  # two identifiers
        (b"{}", "email"),
        (b'{"email": ""}', "email"),
        (b'{"email": 7}', "email"),
        (b'{"email": "a@example.com", "admin": true}', "admin"),
        (b'{"email": "a@example.com", "dry_run": "yes"}', "dry_run"),
        (b'{"phone": "2125550142", "country": "Atlantis"}', "country"),
        (b'{"email": "a@example.com", "country": "US"}', "country"),
    ],
)
def test_an_erase_request_is_exactly_one_identifier_and_known_options(
    body: bytes, field: str
) -> None:
    with pytest.raises(BadRecordError) as refused:
        parse_erase_request(body)
    assert refused.value.reason == "invalid_fields"
    assert field in refused.value.fields


@pytest.mark.parametrize("body", [b"email=a@example.com", b"[]", b'{"email": "a", "email": "b"}'])
def test_an_erase_request_that_is_not_one_json_object_is_invalid_json(body: bytes) -> None:
    with pytest.raises(BadRecordError) as refused:
        parse_erase_request(body)
    assert refused.value.reason == "invalid_json"


def test_an_erase_request_reads_a_national_phone_with_its_country() -> None:
    wanted = parse_erase_request(b'{"phone": "(212) 555-0142", "country": "us", "dry_run": true}')
    assert wanted == EraseRequest(phone="(212) 555-0142", country="US", dry_run=True)
    assert wanted.identifier("CN") == ("phone", "+12125550142")
    assert parse_erase_request(b'{"email": " A@Example.COM "}').identifier("CN") == (
        "email",
        "a@example.com",
    )
