"""Normalize once: an adapter's normalized lead travels in the envelope and is reused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from leadflow import normalize
from leadflow.normalize import (
    NORMALIZED_MAX_BYTES,
    envelope_bytes,
    normalize_lead,
)
from schemas import Lead, RawLead
from streams.normalize_agent import normalize_message


def published(raw: RawLead, region: str = "CN") -> tuple[Lead, bytes]:
    lead = normalize_lead(raw, default_region=region)
    return lead, envelope_bytes(raw, lead, default_region=region)


def refuse_to_normalize(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object, **__: object) -> Lead:
        raise AssertionError("normalized a second time")

    monkeypatch.setattr(normalize, "normalize_lead", fail)


def test_the_stream_takes_the_adapters_lead_without_normalizing_again(
    make_raw_lead: Callable[..., RawLead], monkeypatch: pytest.MonkeyPatch
) -> None:
    lead, value = published(make_raw_lead({"email": "Ada@Example.com", "phone": "138 0013 8000"}))
    assert RawLead.model_validate_json(value).normalized == lead
    refuse_to_normalize(monkeypatch)
    assert normalize_message(value, default_region="CN") == lead


@pytest.mark.parametrize(
    "change",
    [
        {"normalized_with": "0/CN"},  # an older normalization
        {"normalized_with": None},
    ],
)
def test_another_normalization_is_done_again(
    make_raw_lead: Callable[..., RawLead], change: dict[str, object]
) -> None:
    lead, value = published(make_raw_lead({"email": "ada@example.com"}))
    stale = RawLead.model_validate_json(value).model_copy(
        update={**change, "normalized": lead.model_copy(update={"email": "old@example.com"})}
    )
    again = normalize_message(stale.model_dump_json().encode(), default_region="CN")
    assert isinstance(again, Lead)
    assert again.email == "ada@example.com"


def test_a_worker_with_another_default_region_normalizes_again(
    make_raw_lead: Callable[..., RawLead],
) -> None:
    # A number without a country code means another thing with another default region.
    lead, value = published(make_raw_lead({"phone": "020 7946 0018"}), region="CN")
    assert lead.phone == "+862079460018"
    again = normalize_message(value, default_region="GB")
    assert isinstance(again, Lead)
    assert again.phone == "+442079460018"


def test_a_lead_of_another_event_is_not_taken(make_raw_lead: Callable[..., RawLead]) -> None:
    lead, value = published(make_raw_lead({"email": "ada@example.com"}, event_id="e1"))
    other = RawLead.model_validate_json(value).model_copy(
        update={"event_id": "e2", "normalized": lead}
    )
    again = normalize_message(other.model_dump_json().encode(), default_region="CN")
    assert isinstance(again, Lead)
    assert again.event_id == "e2"


def test_a_huge_envelope_goes_without_its_lead(make_raw_lead: Callable[..., RawLead]) -> None:
    columns = {f"booth note {n}": "x" * 3_000 for n in range(12)}
    raw = make_raw_lead({"email": "ada@example.com", **columns})
    _, value = published(raw)
    assert len(raw.model_dump_json()) < NORMALIZED_MAX_BYTES < 2 * len(raw.model_dump_json())
    assert value == raw.model_dump_json().encode()
    assert isinstance(normalize_message(value, default_region="CN"), Lead)
