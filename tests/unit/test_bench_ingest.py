"""The pure parts of `leadflow bench ingest`: percentiles, CPU shares and the form bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ingest_adapters.web_form import WebFormRequest, parse_web_form
from leadflow.errors import BadRecordError
from leadflow.normalize import normalize_lead
from leadflow_tools.bench_ingest import (
    BODY_POOL,
    INVALID_EVERY,
    cpu_percent,
    form_bodies,
    percentile,
    summarize,
)
from schemas import Lead

NOW = datetime(2026, 11, 26, tzinfo=UTC)
BODIES = form_bodies(BODY_POOL)


def accept(body: bytes) -> Lead:
    """What the handler checks before it answers 202."""
    request = WebFormRequest(
        body=body,
        content_type="application/json",
        headers={"Origin": "https://www.example.com"},
        form_id=None,
        received_at=NOW,
        remote="127.0.0.1",
    )
    return normalize_lead(parse_web_form(request), default_region="CN")


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 … 100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0


@pytest.mark.parametrize("q", [0.0, -1.0, 100.5])
def test_percentile_refuses_a_rank_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summary_sorts_and_rates() -> None:
    figures = summarize([30.0, 10.0, 20.0, 40.0], window_s=2.0)
    assert figures == {
        "requests": 4,
        "req_per_s": 2,
        "p50_ms": 20.0,
        "p95_ms": 40.0,
        "p99_ms": 40.0,
        "max_ms": 40.0,
    }
    empty = summarize([], window_s=2.0)
    assert empty["requests"] == 0
    assert empty["p99_ms"] is None


def test_cpu_shares_are_per_core_and_others_are_what_is_left() -> None:
    before = {"server": 1.0, "broker": 5.0, "machine busy": 1000.0, "machine total": 2000.0}
    after = {"server": 9.0, "broker": 7.0, "machine busy": 2500.0, "machine total": 4000.0}
    # 10 s on 2 cores: the server took 80% of one core, the machine was 75% busy (150%).
    assert cpu_percent(before, after, seconds=10.0, cpus=2) == {
        "server": 80,
        "broker": 20,
        "machine": 150,
        "other programs": 50,
    }


def test_bodies_are_json_objects_and_every_person_differs() -> None:
    assert all(isinstance(json.loads(b.body), dict) for b in BODIES)
    valid = [b.body for b in BODIES if b.valid]
    assert len(set(valid)) == len(valid)


def test_one_body_in_twenty_is_wrong_on_purpose() -> None:
    invalid = [n for n, b in enumerate(BODIES) if not b.valid]
    assert invalid == list(range(INVALID_EVERY - 1, len(BODIES), INVALID_EVERY))


def test_valid_bodies_pass_the_handlers_checks() -> None:
    refused = {}
    for n, body in enumerate(BODIES):
        if body.valid:
            try:
                accept(body.body)
            except BadRecordError as exc:
                refused[n] = exc.message
    assert refused == {}


def test_invalid_bodies_are_refused_as_422() -> None:
    reasons = {}
    for n, body in enumerate(BODIES):
        if not body.valid:
            with pytest.raises(BadRecordError) as refused:
                accept(body.body)
            reasons[n] = refused.value.reason
    # Reasons the handler answers with 422 (and a dead letter), not 400 or 415.
    assert set(reasons.values()) == {"invalid_fields", "no_contact"}


def test_bodies_mix_chinese_and_english_names_and_labels() -> None:
    leads = [accept(b.body) for b in BODIES if b.valid]
    names = [lead.full_name or "" for lead in leads]
    assert any(name.isascii() for name in names)
    assert any(not name.isascii() for name in names)
    assert {lead.country for lead in leads} >= {"CN", "US", "SG", "DE"}
    raw_labels = {key for b in BODIES for key in json.loads(b.body)}
    assert {"姓名", "手机", "邮箱", "Email", "mobile", "utm_campaign"} <= raw_labels


def test_the_bench_posts_as_a_browser_the_bundled_form_accepts() -> None:
    """Without the form's token and origin every post is a 401, and the bench would measure
    refusals (it did, for a while)."""
    from ingest_adapters.form_guard import check_credentials
    from leadflow.rules import load_rules
    from leadflow_tools.bench_ingest import BENCH_FORM, BENCH_FORM_ORIGIN, BENCH_FORM_TOKEN

    headers = {"X-Form-Token": BENCH_FORM_TOKEN, "Origin": BENCH_FORM_ORIGIN}
    forms = load_rules().forms
    assert check_credentials(BENCH_FORM, headers, {}, forms, keyed=False) == f"token:{BENCH_FORM}"
