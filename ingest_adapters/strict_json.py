"""Strict JSON for bodies senders post: one object, no NaN/Infinity, no key twice.

Python's json module accepts `NaN`, keeps the last of two equal keys and
may raise ValueError or RecursionError on hostile input; every adapter that
reads JSON goes through `load_object` so each of those is a BadRecordError
with a clear message instead.
"""

from __future__ import annotations

import json
from typing import Any

from leadflow.errors import BadRecordError


def _refuse_constant(name: str) -> Any:
    raise BadRecordError("invalid_json", f"JSON constant {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise BadRecordError(
                "invalid_json", f"key {key!r} appears twice", {key: "appears more than once"}
            )
        seen[key] = value
    return seen


def load_object(body: bytes | str, reason: str = "invalid_json") -> dict[str, Any]:
    """The JSON object in `body`; BadRecordError(`reason`) naming what is wrong otherwise."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise BadRecordError(reason, f"body is not UTF-8 ({exc.reason})") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise BadRecordError(reason, f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRecordError(reason, "body is nested too deeply") from exc
    except BadRecordError as exc:
        raise BadRecordError(reason, exc.message, exc.fields) from exc
    if not isinstance(data, dict):
        raise BadRecordError(reason, "body must be a JSON object")
    return data
