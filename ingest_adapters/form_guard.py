"""Who may post a web form, and which posts are bots: pure checks, no I/O.

- Credentials: a post with an API key (scope ingest, checked by the access
  middleware) may name any form; a post without one needs a form of
  config/forms.yaml with a public token (`X-Form-Token` or a `_token` field)
  and an `Origin` it lists. Failing either is a 401/403 with a dead letter.
- Spam: a filled honeypot field, or a form sent faster than its minimum fill
  time, is accepted (the bot learns nothing) but quarantined on
  `leads.quarantine`, never a lead.
- Rate: a token bucket per visitor of a public form (token + client
  address); over it the sender gets 429 with Retry-After.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from datetime import datetime

from leadflow.errors import BadRecordError
from leadflow.rules import FormConfig, FormRules

TOKEN_FIELD = "_token"  # noqa: S105 - a field name, not a secret


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def form_config(rules: FormRules, form_id: str | None) -> FormConfig | None:
    return rules.forms.get(form_id) if form_id else None


def check_credentials(
    form_id: str | None,
    headers: Mapping[str, str],
    fields: Mapping[str, str],
    rules: FormRules,
    keyed: bool,
) -> str:
    """The form's public credential (`token:<form>`), or "" for a post made with an API key
    (`keyed`: the access middleware already checked it has scope ingest); raises when refused.
    A post without a key needs a form of forms.yaml with a public token and a listed origin."""
    if keyed:
        return ""
    config = form_config(rules, form_id)
    if config is None or not config.public_token:
        raise BadRecordError(
            "unauthorized",
            f"form {form_id or '(none)'} has no public token in forms.yaml: "
            "send an API key with scope ingest as Authorization: Bearer <key>",
        )
    token = headers.get("X-Form-Token") or fields.get(TOKEN_FIELD, "")
    if not _same(token, config.public_token):
        raise BadRecordError(
            "unauthorized", f"form {form_id} needs its token in X-Form-Token or _token"
        )
    origin = headers.get("Origin", "").lower()
    if origin not in config.origins:
        raise BadRecordError(
            "forbidden_origin",
            f"form {form_id} does not accept posts from origin {origin or '(none)'}",
        )
    return f"token:{form_id}"


def allowed_origin(rules: FormRules, form_id: str | None, origin: str | None) -> str | None:
    """The origin to echo in Access-Control-Allow-Origin, when this form lists it."""
    config = form_config(rules, form_id)
    if config is None or not origin:
        return None
    return origin if origin.lower() in config.origins else None


def spam_reason(
    fields: Mapping[str, str], form_id: str | None, rules: FormRules, received_at: datetime
) -> str | None:
    """Why this post looks like a bot (`honeypot`, `filled_too_fast`), or None."""
    if fields.get(rules.honeypot_field, "").strip():
        return "honeypot"
    started = fields.get(rules.started_at_field, "").strip()
    if not started:
        return None
    try:
        stamp = float(started)
    except ValueError:
        return "bad_started_at"
    if not math.isfinite(stamp):
        return "bad_started_at"
    seconds = stamp / 1000 if stamp > 1e11 else stamp  # epoch ms from JavaScript, or seconds
    config = form_config(rules, form_id)
    minimum = rules.min_fill_seconds
    if config is not None and config.min_fill_seconds is not None:
        minimum = config.min_fill_seconds
    if received_at.timestamp() - seconds < minimum:
        return "filled_too_fast"
    return None


def without_control_fields(fields: Mapping[str, str], rules: FormRules) -> dict[str, str]:
    """The person's fields, without the honeypot, the render time and the token."""
    control = {rules.honeypot_field, rules.started_at_field, TOKEN_FIELD}
    return {name: value for name, value in fields.items() if name not in control}
