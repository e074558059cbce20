"""Strict JSON for bodies senders post: one object, finite numbers, no key twice, shallow.

Python's json module accepts `NaN`, `Infinity` and `-Infinity`, turns `1e400`
into infinity, keeps the last of two equal keys and recurses once per level of
nesting, so 100,000 `[` raise RecursionError. Every adapter that reads JSON
goes through `load_object`, so each of those is a BadRecordError with a clear
message instead:

- the constants `NaN`, `Infinity`, `-Infinity`, and numbers too large for a
  float (`1e400`), are refused;
- a key twice in one object is refused, naming the key;
- nesting deeper than `MAX_DEPTH` (32) arrays/objects is refused by a linear
  scan before the parser runs, so the parser never recurses that deep;
- bytes that are not UTF-8, and anything but an object at the top, are refused.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from leadflow.errors import BadRecordError

MAX_DEPTH = 32

# A JSON string (unrolled: fast on long strings), then anything but a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _refuse_constant(name: str) -> Any:
    raise BadRecordError("invalid_json", f"JSON constant {name} is not allowed")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRecordError("invalid_json", f"number {text[:40]} is too large for a finite float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise BadRecordError(
                "invalid_json", f"key {key!r} appears twice", {key: "appears more than once"}
            )
        seen[key] = value
    return seen


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, brackets in strings not counted.

    Linear, without recursion, in C loops (regex, accumulate): a 1 MB body of
    brackets takes milliseconds. For text that is not JSON the answer is only
    an estimate, and the parser refuses that text anyway.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def load_object(
    body: bytes | str, reason: str = "invalid_json", max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """The JSON object in `body`; BadRecordError(`reason`) naming what is wrong otherwise."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        depth = nesting_depth(text)
        if depth > max_depth:
            raise BadRecordError(
                reason, f"body is nested too deeply: {depth} levels, at most {max_depth}"
            )
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite,
        )
    except UnicodeDecodeError as exc:
        raise BadRecordError(reason, f"body is not UTF-8 ({exc.reason})") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise BadRecordError(reason, f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # not reached past the depth check; kept as a backstop
        raise BadRecordError(reason, "body is nested too deeply") from exc
    except BadRecordError as exc:
        raise BadRecordError(reason, exc.message, exc.fields) from exc
    if not isinstance(data, dict):
        raise BadRecordError(reason, "body must be a JSON object")
    return data
