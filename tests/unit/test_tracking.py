"""Signed tracking links: what is signed verifies, anything changed or foreign does not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import threading
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from leadflow import tracking
from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.settings import NurtureSettings, Settings
from leadflow.tracking import TrackingClaims, sign, verify

SECRET = b"unit-test-secret"


def _claims(**overrides: object) -> TrackingClaims:
    values: dict[str, object] = {
        "kind": "click",
        "send_id": "send-1",
        "lead_id": "lead-1",
        "sequence": "welcome",
        "step": "welcome",
        "template": "welcome",
        "link": 0,
    }
    values.update(overrides)
    return TrackingClaims.model_validate(values)


def _settings(data_dir: Path, secret: str | None = None) -> Settings:
    nurture = NurtureSettings(secret=SecretStr(secret) if secret is not None else None)
    return Settings(nurture=nurture).model_copy(update={"data_dir": data_dir})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reencoded(token: str, **changes: object) -> str:
    """The token with its claims changed and its old MAC kept: what a tamperer can make."""
    body, _, mac = token.partition(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return f"{_b64(orjson.dumps({**claims, **changes}))}.{mac}"


@pytest.mark.parametrize("kind", ["open", "click", "unsubscribe"])
def test_a_signed_link_verifies_to_its_claims(kind: str) -> None:
    claims = _claims(kind=kind, link=0 if kind == "click" else None)
    assert verify(SECRET, sign(SECRET, claims), kind) == claims  # type: ignore[arg-type]


@pytest.mark.parametrize("tail", [".", ")", ").", ">", ",", "!", '"', "'", "]", ";"])
def test_punctuation_stuck_to_a_link_is_not_part_of_its_token(tail: str) -> None:
    """ "See https://…/c/TOKEN." in a plain-text email: some clients link the full stop too."""
    token = sign(SECRET, _claims())
    assert verify(SECRET, token + tail, "click") == _claims()
    # Only after the token: a changed character inside it is still refused.
    changed = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    with pytest.raises(BadRecordError, match="signature"):
        verify(SECRET, changed + tail, "click")


def test_the_url_names_the_kind_and_carries_a_verifiable_token() -> None:
    url = tracking.link_url("https://t.example.com/", SECRET, _claims(kind="unsubscribe"))
    assert url.startswith("https://t.example.com/v1/nurture/u/")
    token = url.rsplit("/", 1)[1]
    assert verify(SECRET, token, "unsubscribe").lead_id == "lead-1"


@pytest.mark.parametrize(
    "changes",
    [{"link": 1}, {"link": -1}, {"lead_id": "lead-2"}, {"send_id": "x"}, {"kind": "open"}],
)
def test_changed_claims_under_the_old_mac_are_refused(changes: dict[str, object]) -> None:
    tampered = _reencoded(sign(SECRET, _claims()), **changes)
    with pytest.raises(BadRecordError, match="signature") as refused:
        verify(SECRET, tampered, "click")
    assert refused.value.reason == "bad_token"


def test_a_link_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(BadRecordError, match="signature"):
        verify(SECRET, sign(b"another secret", _claims()), "click")


@pytest.mark.parametrize(("made", "used"), [("click", "open"), ("open", "unsubscribe")])
def test_a_link_of_one_kind_is_refused_as_another(made: str, used: str) -> None:
    token = sign(SECRET, _claims(kind=made))
    with pytest.raises(BadRecordError, match=f"a {made} link, not {used}") as refused:
        verify(SECRET, token, used)  # type: ignore[arg-type]
    assert refused.value.reason == "bad_token"


def test_a_validly_signed_body_that_is_no_claims_is_refused() -> None:
    for body in (b"[1, 2]", b"not json", orjson.dumps({"kind": "click", "extra": 1})):
        text = _b64(body)
        mac = hmac.new(SECRET, text.encode(), hashlib.sha256).digest()[:16]  # as sign() cuts it
        with pytest.raises(BadRecordError, match="unreadable"):
            verify(SECRET, f"{text}.{_b64(mac)}", "click")


@pytest.mark.parametrize(
    "token", ["", ".", "nodot", "a.b", "a." + "A" * 3000, "é.é", "%%%.***", "\x00.\x00"]
)
def test_garbage_is_a_bad_token(token: str) -> None:
    with pytest.raises(BadRecordError) as refused:
        verify(SECRET, token, "open")
    assert refused.value.reason == "bad_token"


@given(st.text(max_size=300))
def test_any_text_is_refused_as_a_bad_token_and_nothing_else(token: str) -> None:
    with pytest.raises(BadRecordError):
        verify(SECRET, token, "click")


def test_the_secret_is_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data")
    made = tracking.tracking_secret(settings)
    path = tmp_path / "data" / tracking.SECRET_FILE
    assert len(made) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tracking.tracking_secret(settings) == made
    assert [p.name for p in path.parent.iterdir()] == [tracking.SECRET_FILE]  # no temp left


def test_processes_making_the_secret_at_once_agree(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    found: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: found.append(tracking.tracking_secret(settings)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8
    assert len(set(found)) == 1


def test_nurture_secret_wins_over_the_file(tmp_path: Path) -> None:
    assert tracking.tracking_secret(_settings(tmp_path, "configured")) == b"configured"
    assert not (tmp_path / tracking.SECRET_FILE).exists()


def test_an_empty_secret_is_refused_rather_than_signed_with(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="NURTURE_SECRET is empty"):
        tracking.tracking_secret(_settings(tmp_path, " "))
    (tmp_path / tracking.SECRET_FILE).write_bytes(b"\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        tracking.tracking_secret(_settings(tmp_path))
