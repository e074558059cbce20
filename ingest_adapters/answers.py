"""The JSON answers every HTTP route of leadflow gives: one shape for every refusal."""

from __future__ import annotations

from typing import Any

from aiohttp import web

STATUS_BY_REASON = {
    "bad_signature": 403,
    "not_configured": 403,
    "unauthorized": 401,
    "unsupported_media_type": 415,
    "invalid_json": 400,
    "invalid_form": 400,
    "invalid_encoding": 400,
    "no_leads": 422,
    "forbidden_origin": 403,
    "too_large": 413,
}


def error_body(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    """`{"error": reason, "message": …}` with the status; `extra` adds fields (dead_letter_id)."""
    return web.json_response({"error": reason, "message": message, **extra}, status=status)
