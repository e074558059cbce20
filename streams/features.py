"""The features a learned score sees, from the lead state: one place, documented in
docs/scoring.md.

A lead becomes a set of tokens `name:value`, each worth 1 in a logistic
regression (streams/learning.py), so an unknown or missing value is a
category of its own (`industry:unknown`) rather than a gap:

- `size:` company size band (`1-49`, `50-199`, `200-999`, `1000+`, `unknown`);
- `industry:`, `country:` and `region:` (`apac`, `emea`, `amer`, `other`);
- `seniority:` from the title, in English and Chinese (`c_level`, `vp`,
  `director`, `manager`, `staff`, `student`, `unknown`);
- `channel:`, `source:`, `campaign:` of the first touch;
- `industry_size:` the two together (`software|1000+`), since an industry may
  buy only when large;
- `tool:` each tool the lead names in the attributes listed as `tool_fields`
  in config/scoring.yaml (form fields or upload columns such as "current CRM");
- `email:` `corporate` or `free` mailbox;
- `engaged:<kind>:` the count band (`1`, `2-3`, `4+`) of each engagement kind,
  and `touches:` the band of touches.

Time is not a feature: a lead's features depend only on what it did and said,
so the same history gives the same features whenever it is replayed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from schemas import LeadState

_SENIORITY = (
    ("student", re.compile(r"(?i)\bstudent\b|学生|实习")),
    (
        "c_level",
        re.compile(r"(?i)\b(chief|c[eotfm]o|founder|owner|president)\b|总裁|董事|创始人|总经理"),
    ),
    ("vp", re.compile(r"(?i)\b(vp|vice president|svp|evp)\b|副总")),
    ("director", re.compile(r"(?i)\b(director|head of)\b|总监|负责人")),
    ("manager", re.compile(r"(?i)\b(manager|lead)\b|经理|主管")),
)
_REGIONS = {
    "apac": {
        "CN",
        "HK",
        "TW",
        "MO",
        "JP",
        "KR",
        "SG",
        "IN",
        "AU",
        "NZ",
        "ID",
        "MY",
        "TH",
        "VN",
        "PH",
    },
    "emea": {
        "GB",
        "DE",
        "FR",
        "IT",
        "ES",
        "NL",
        "BE",
        "CH",
        "AT",
        "SE",
        "NO",
        "DK",
        "FI",
        "PL",
        "IE",
        "PT",
        "CZ",
        "AE",
        "SA",
        "IL",
        "ZA",
        "TR",
    },
    "amer": {"US", "CA", "MX", "BR", "AR", "CL", "CO", "PE"},
}
_TOOL_SPLIT = re.compile(r"[,;/|、，；]+")


def size_band(size: int | None) -> str:
    if size is None or size <= 0:
        return "unknown"
    if size < 50:
        return "1-49"
    if size < 200:
        return "50-199"
    if size < 1000:
        return "200-999"
    return "1000+"


def seniority(title: str | None) -> str:
    if not title:
        return "unknown"
    for name, pattern in _SENIORITY:
        if pattern.search(title):
            return name
    return "staff"


def region(country: str | None) -> str:
    code = (country or "").upper()
    return next((name for name, codes in _REGIONS.items() if code in codes), "other")


def count_band(count: int) -> str:
    return "1" if count == 1 else "2-3" if count <= 3 else "4+"


def _clean(value: str | None) -> str:
    text = " ".join((value or "").lower().split())[:60]
    return text or "unknown"


def tools(lead: LeadState, tool_fields: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for name in tool_fields:
        for part in _TOOL_SPLIT.split(lead.attributes.get(name, "")):
            if part.strip():
                found.add(_clean(part))
    return sorted(found)


def features(
    lead: LeadState, tool_fields: Iterable[str] = (), free_mail: frozenset[str] = frozenset()
) -> list[str]:
    """The lead's feature tokens, sorted."""
    first = lead.touches[0] if lead.touches else None
    domain = lead.email.rsplit("@", 1)[1] if lead.email and "@" in lead.email else ""
    tokens = [
        f"size:{size_band(lead.company_size)}",
        f"industry:{_clean(lead.industry)}",
        f"country:{(lead.country or 'unknown').upper()}",
        f"region:{region(lead.country)}",
        f"seniority:{seniority(lead.title)}",
        f"channel:{first.channel if first else 'unknown'}",
        f"source:{_clean(first.source if first else None)}",
        f"campaign:{_clean(first.campaign if first else None)}",
        f"email:{'none' if not domain else 'free' if domain in free_mail else 'corporate'}",
        f"touches:{count_band(len(lead.touches)) if lead.touches else '0'}",
    ]
    # Industry and size together: an industry that buys only when large is a pattern no
    # sum of separate industry and size weights can show.
    tokens.append(f"industry_size:{_clean(lead.industry)}|{size_band(lead.company_size)}")
    tokens += [f"tool:{tool}" for tool in tools(lead, tool_fields)]
    kinds = Counter(e.kind for e in lead.engagements)
    tokens += [f"engaged:{kind}:{count_band(n)}" for kind, n in kinds.items()]
    return sorted(tokens)
