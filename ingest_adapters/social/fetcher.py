"""Fetching announced leads from Meta's Graph API and LinkedIn's REST API.

The HTTP client half of the social lead-ads adapter (the pure half, parsing
and verification, is ingest_adapters/social/). Retries, backoff and the
scrubbing of tokens from every message live here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Self
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from ingest_adapters.social.common import (
    _FORM_CACHE_SIZE,
    _GRAPH_TRANSIENT_CODES,
    _INVALID,
    LINKEDIN_API_VERSION,
    MAX_RETRY_AFTER_S,
    META_LEAD_FIELDS,
    LeadgenRef,
    Provider,
    Sleep,
    _hmac_hex,
    _secret,
)
from ingest_adapters.social.linkedin import _form_parts, linkedin_lead
from ingest_adapters.social.meta import meta_lead
from leadflow.errors import BadRecordError, ConfigurationError
from leadflow.settings import SocialSettings
from leadflow.strict_json import load_object
from schemas import RawLead

log = logging.getLogger(__name__)

# --- fetching leads ------------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """Seconds the provider asked us to wait (delta seconds or HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class _Failure:
    """A non-200 answer sorted by what happens next."""

    outcome: Literal["retry", "not_found", "refused"]
    detail: str


def _classify(provider: Provider, status: int, body: str) -> _Failure:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    detail = f"HTTP {status}"
    if provider == "meta" and isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        code, subcode = error.get("code"), error.get("error_subcode")
        detail += f" (Graph error {code}: {str(error.get('message', ''))[:200]})"
        if code in _GRAPH_TRANSIENT_CODES or error.get("is_transient") is True:
            return _Failure("retry", detail)
        if code == 100 and subcode == 33:
            return _Failure("not_found", detail)
    elif isinstance(data, dict) and data.get("message"):
        detail += f" ({data.get('code') or data.get('serviceErrorCode', '')!s}: "
        detail += f"{str(data['message'])[:200]})"
    if status in (408, 429) or status >= 500:
        return _Failure("retry", detail)
    if status in (404, 410):
        return _Failure("not_found", detail)
    return _Failure("refused", detail)


class SocialFetcher:
    """Reads announced leads from Meta's Graph API and LinkedIn's REST API.

    Each request has `fetch_timeout_s`. Network errors, timeouts, 429, 5xx and
    Graph throttling codes are retried up to `fetch_max_tries` times, pausing
    `fetch_backoff_s` and doubling (or what Retry-After asks, capped at
    MAX_RETRY_AFTER_S). Other refusals are not retried. Whatever fails becomes
    a `BadRecordError` for the dead-letter topic; tokens travel in headers
    only and are scrubbed from every message and log line.

    LinkedIn answers name question ids, so the fetcher also reads the lead's
    form definition (cached per form version) to file answers by field name.
    """

    def __init__(
        self,
        settings: SocialSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
        linkedin_version: str = LINKEDIN_API_VERSION,
    ) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._linkedin_version = linkedin_version
        self._forms: dict[str, Mapping[str, Any]] = {}
        self._secrets = tuple(
            secret.get_secret_value()
            for secret in (
                settings.meta_access_token,
                settings.linkedin_access_token,
                settings.meta_app_secret,
                settings.linkedin_client_secret,
                settings.meta_verify_token,
            )
            if secret is not None and secret.get_secret_value()
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, ref: LeadgenRef) -> RawLead:
        """The envelope of the lead `ref` announced; raises BadRecordError when it cannot be had."""
        if ref.provider == "meta":
            token = self._token(self._settings.meta_access_token, "SOCIAL_META_ACCESS_TOKEN")
            url = f"{self._settings.meta_graph_url.rstrip('/')}/{quote(ref.lead_ref, safe='')}"
            params = {"fields": META_LEAD_FIELDS}
            app_secret = _secret(self._settings.meta_app_secret)
            if app_secret:
                # Proves the token is used by our app; Graph demands it when the app says so.
                params["appsecret_proof"] = _hmac_hex(app_secret, token.encode("utf-8"))
            data = await self._get_json(ref, url, {"Authorization": f"Bearer {token}"}, params)
            return meta_lead(data, received_at=ref.received_at, ref=ref)
        token = self._token(self._settings.linkedin_access_token, "SOCIAL_LINKEDIN_ACCESS_TOKEN")
        headers = {
            "Authorization": f"Bearer {token}",
            "LinkedIn-Version": self._linkedin_version,
            "X-Restli-Protocol-Version": "2.0.0",
        }
        base = self._settings.linkedin_api_url.rstrip("/")
        url = f"{base}/leadFormResponses/{quote(ref.lead_ref, safe='')}"
        response = await self._get_json(ref, url, headers)
        form_urn = response.get("versionedLeadGenFormUrn")
        parts = _form_parts(form_urn) if isinstance(form_urn, str) else None
        form: Mapping[str, Any] | None = None
        if isinstance(form_urn, str) and parts is not None:
            form = self._forms.get(form_urn)
            if form is None:
                form = await self._get_json(
                    ref, f"{base}/leadForms/{parts[0]}", headers, what=f"form {parts[0]} of"
                )
                if len(self._forms) >= _FORM_CACHE_SIZE:
                    self._forms.pop(next(iter(self._forms)))
                self._forms[form_urn] = form
        return linkedin_lead(response, form=form, received_at=ref.received_at, ref=ref)

    def _token(self, secret: SecretStr | None, variable: str) -> str:
        token = secret.get_secret_value() if secret is not None else ""
        if not token:
            raise ConfigurationError(f"{variable} is not set; social leads cannot be fetched")
        return token

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _get_json(
        self,
        ref: LeadgenRef,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        """The JSON object at `url`, retried as the class says; `what` names it in errors."""
        subject = f"{what} {ref.provider} lead {ref.lead_ref}".lstrip()
        tries = self._settings.fetch_max_tries
        timeout = aiohttp.ClientTimeout(total=self._settings.fetch_timeout_s)
        last = ""
        for attempt in range(1, tries + 1):
            delay = self._settings.fetch_backoff_s * 2 ** (attempt - 1)
            try:
                async with self._client().get(
                    url, headers=headers, params=params, timeout=timeout, allow_redirects=False
                ) as answer:
                    body = await answer.text(errors="replace")
                    if answer.status == 200:
                        return load_object(body, _INVALID)
                    failure = _classify(ref.provider, answer.status, body)
                    if failure.outcome != "retry":
                        raise self._refusal(ref, subject, failure)
                    last = self._redact(failure.detail)
                    asked = _retry_after(answer.headers.get("Retry-After"))
                    delay = delay if asked is None else asked
            except BadRecordError as exc:
                exc.message = self._redact(exc.message)
                exc.args = (exc.message,)
                exc.fields = {k: self._redact(v) for k, v in exc.fields.items()}
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = self._redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
            if attempt < tries:
                log.warning(
                    "%s: try %d/%d failed (%s); next try in %.2fs",
                    subject, attempt, tries, last, delay,
                )  # fmt: skip
                await self._sleep(delay)
        raise BadRecordError(
            "fetch_failed",
            f"{subject}: gave up after {tries} tries; last error: {last}",
            {"lead_ref": ref.lead_ref, "tries": str(tries)},
        )

    def _refusal(self, ref: LeadgenRef, subject: str, failure: _Failure) -> BadRecordError:
        reason = "lead_not_found" if failure.outcome == "not_found" else "fetch_refused"
        detail = self._redact(failure.detail)
        return BadRecordError(
            reason,
            f"{subject} refused: {detail}",
            {"lead_ref": ref.lead_ref, "status": detail.split(" (", 1)[0]},
        )
