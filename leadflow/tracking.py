"""Signed tracking links of nurture email: open pixel, click redirect, unsubscribe.

A link carries its claims (which send, which lead, which link of the template)
in clear, base64url-encoded, followed by an HMAC-SHA256 of them under the
nurture secret. The server that answers the link trusts only what the
signature covers; a click never redirects to a URL given in the link, only
to the template's own URL that the claims name (no open redirect).

The secret is NURTURE_SECRET when set; otherwise one is made at first use and
kept in `<data dir>/nurture-secret` (readable by its owner only), so the mailer
and the server of one machine agree without configuration. Several servers
answering links need the same NURTURE_SECRET.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.settings import Settings

SECRET_FILE = "nurture-secret"  # noqa: S105 - a file name, not a secret
_MAC_BYTES = 16
LinkKind = Literal["open", "click", "unsubscribe"]


class TrackingClaims(BaseModel):
    """What a signed link stands for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: LinkKind
    send_id: str
    lead_id: str
    sequence: str
    step: str
    template: str
    link: int | None = None  # for clicks: the index of the URL in the template's links


def tracking_secret(settings: Settings) -> bytes:
    """The key that signs links: NURTURE_SECRET, else the one kept under the data dir.

    An empty key is refused (ConfigurationError): anyone could sign links with it.
    """
    if settings.nurture.secret is not None:
        given = settings.nurture.secret.get_secret_value().encode("utf-8")
        if not given.strip():
            raise ConfigurationError("NURTURE_SECRET is empty: anyone could sign tracking links")
        return given
    path: Path = settings.data_dir / SECRET_FILE
    kept = _kept_secret(path)
    if kept is not None:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a name of its own, then linked into place: a process that finds
    # the file finds it complete. (Created in place, a second process could read it empty
    # between the create and the write, and sign with an empty key.) Of two processes
    # making it at once, one link wins and both read the winner's key.
    temp = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_urlsafe(32).encode())
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    made = _kept_secret(path)
    if made is None:  # deleted between the link and the read: nothing sane to sign with
        raise ConfigurationError(f"{path} vanished while it was being made; start again")
    return made


def _kept_secret(path: Path) -> bytes | None:
    """The key in `path`, None when there is no file; an empty file is refused."""
    try:
        kept = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    if not kept:
        raise ConfigurationError(
            f"{path} is empty: delete it (a new secret is made at start) or set NURTURE_SECRET"
        )
    return kept


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, claims: TrackingClaims) -> str:
    body = _b64(orjson.dumps(claims.model_dump(exclude_none=True)))
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES]
    return f"{body}.{_b64(mac)}"


# What a sentence may leave stuck to a link in a plain-text email: mail clients and
# people copying the link often take it along. A token is base64url with one dot inside,
# so it never ends in one of these.
_TRAILING_PUNCTUATION = ".,;:!?)]}>'\""


def verify(secret: bytes, token: str, kind: LinkKind) -> TrackingClaims:
    """The claims of a link signed with `secret` for `kind`; BadRecordError otherwise.
    Punctuation after the token (`…/c/TOKEN).`) is not part of it and is left out."""
    token = token.rstrip(_TRAILING_PUNCTUATION)
    body, dot, mac = token.partition(".")
    if not dot or len(token) > 2048:
        raise BadRecordError("bad_token", "the tracking link is not one leadflow made")
    try:
        given = _unb64(mac)
    except ValueError as exc:
        raise BadRecordError("bad_token", "the tracking link is not one leadflow made") from exc
    expected = hmac.new(secret, body.encode("ascii", "replace"), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected[:_MAC_BYTES]):
        raise BadRecordError("bad_token", "the tracking link's signature does not match")
    try:
        claims = TrackingClaims.model_validate(orjson.loads(_unb64(body)))
    except (ValueError, ValidationError) as exc:
        raise BadRecordError("bad_token", "the tracking link's content is unreadable") from exc
    if claims.kind != kind:
        raise BadRecordError("bad_token", f"the link is a {claims.kind} link, not {kind}")
    return claims


def link_url(public_url: str, secret: bytes, claims: TrackingClaims) -> str:
    """The URL a recipient follows: `/v1/nurture/{o|c|u}/<token>`."""
    letter = {"open": "o", "click": "c", "unsubscribe": "u"}[claims.kind]
    return f"{public_url.rstrip('/')}/v1/nurture/{letter}/{sign(secret, claims)}"
