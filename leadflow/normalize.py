"""Stage `normalize`: a `RawLead` becomes one strict `Lead`, or a dead letter.

Input topic: `leads.raw` (key: the event id). Output: `leads.identified`
(key: lead id) for good input; `dlq.normalize` for input that cannot be a
lead, carrying the original bytes and every field problem. The lead id is
derived from the event id, so a redelivered or retried event normalizes to
the same lead id and the ClickHouse row replaces itself instead of doubling.

The adapters run the same pure function before they answer, so a sender
learns about a bad field at once; this stage re-checks because any producer
may write to `leads.raw`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import phonenumbers
import pycountry
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from schemas import Lead, RawLead
from schemas.limits import checked_occurred_at

# Raise when `normalize_lead` gives another answer for the same envelope: envelopes an
# adapter normalized under an older version are then normalized again by the stream.
NORMALIZE_VERSION = 1
NORMALIZED_MAX_BYTES = 65_536
MAX_FIELD_CHARS = 4000
_LEAD_NAMESPACE = uuid.UUID("0f1b7c52-6a1e-4c8e-9d56-3f0e2b6f4a11")

# Field names real forms send, folded (lower case, `-`/space → `_`), by canonical name.
FIELD_ALIASES: Mapping[str, tuple[str, ...]] = {
    "full_name": (
        "name",
        "full_name",
        "fullname",
        "your_name",
        "contact_name",
        "姓名",
        "名字",
        "联系人",
    ),
    "first_name": ("first_name", "firstname", "given_name", "fname", "名"),
    "last_name": ("last_name", "lastname", "surname", "family_name", "lname", "姓"),
    "email": ("email", "e_mail", "email_address", "mail", "邮箱", "电子邮件", "电子邮箱"),
    "phone": (
        "phone",
        "phone_number",
        "mobile",
        "mobile_phone",
        "tel",
        "telephone",
        "cell",
        "手机",
        "手机号",
        "手机号码",
        "电话",
        "联系电话",
    ),
    "company": (
        "company",
        "company_name",
        "organization",
        "organisation",
        "org",
        "公司",
        "公司名称",
        "单位",
    ),
    "company_size": (
        "company_size",
        "employees",
        "employee_count",
        "number_of_employees",
        "size",
        "公司规模",
        "员工人数",
        "人数",
    ),
    "industry": ("industry", "sector", "行业", "所属行业"),
    "title": ("title", "job_title", "position", "role", "职位", "职务"),
    "country": ("country", "country_code", "国家", "国家/地区"),
    "message": ("message", "comments", "comment", "note", "notes", "留言", "备注"),
    "consent": ("consent", "gdpr_consent", "marketing_consent", "agree", "同意"),
    "utm_source": ("utm_source",),
    "utm_medium": ("utm_medium",),
    "utm_campaign": ("utm_campaign",),
    "utm_term": ("utm_term",),
    "utm_content": ("utm_content",),
    "referrer": ("referrer", "referer"),
    "landing_page": ("landing_page", "page_url", "page"),
}
_CANONICAL_BY_ALIAS = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}

_COUNTRY_NAMES = {
    "china": "CN",
    "中国": "CN",
    "prc": "CN",
    "people's republic of china": "CN",
    "hong kong": "HK",
    "香港": "HK",
    "taiwan": "TW",
    "台湾": "TW",
    "singapore": "SG",
    "新加坡": "SG",
    "japan": "JP",
    "日本": "JP",
    "korea": "KR",
    "south korea": "KR",
    "united states": "US",
    "usa": "US",
    "united states of america": "US",
    "美国": "US",
    "united kingdom": "GB",
    "uk": "GB",
    "england": "GB",
    "英国": "GB",
    "germany": "DE",
    "deutschland": "DE",
    "德国": "DE",
    "france": "FR",
    "法国": "FR",
    "canada": "CA",
    "australia": "AU",
    "india": "IN",
    "brazil": "BR",
}
_LEGAL_SUFFIXES = frozenset(
    {
        "inc",
        "incorporated",
        "corp",
        "corporation",
        "co",
        "company",
        "ltd",
        "limited",
        "llc",
        "llp",
        "plc",
        "gmbh",
        "ag",
        "kg",
        "sa",
        "sas",
        "sarl",
        "srl",
        "spa",
        "bv",
        "nv",
        "oy",
        "ab",
        "as",
        "kk",
        "pte",
        "pty",
        "lp",
        "se",
    }
)
_CJK_LEGAL_SUFFIXES = ("股份有限公司", "有限责任公司", "集团有限公司", "有限公司", "公司")
_BRACKETED = re.compile(r"[(（\[【][^)）\]】]*[)）\]】]")
_TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on", "checked", "是", "同意"})
_FALSE_WORDS = frozenset({"false", "0", "no", "n", "off", "否", "不同意"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"\s+")


@functools.lru_cache(maxsize=4096)  # a file's few column names, asked once per cell
def fold_field_name(name: str) -> str:
    """The key a submitted field is looked up by: NFKC, trimmed, lower case, `_` for `-`/space."""
    folded = unicodedata.normalize("NFKC", name).strip().lower()
    return _FOLD_SEPARATORS.sub("_", folded)


def clean_note(value: str) -> str:
    """Free text as clean_text makes it, but line breaks kept (one `\\n` each): a note's
    lines are what the writer meant."""
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line for line in map(clean_text, lines) if line)


def clean_text(value: str) -> str:
    """NFC, control and zero-width characters removed, runs of white space folded to one."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", value))
    return _SPACES.sub(" ", text).strip()


# Plain ASCII addresses, the vast majority, are checked here: what this accepts, the
# validator accepts unchanged (tests/unit/test_normalize.py compares the two). Anything
# else (Unicode, quoted parts, punycode, special-use domains, odd lengths) goes to it.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"(?!..--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_EMAIL = re.compile(
    rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:{_LABEL}\.)+(?P<tld>[A-Za-z]{{2,63}}))"
)


def _plain_email(candidate: str) -> str | None:
    """The lower-case address when it is plain ASCII and plainly valid, else None."""
    if len(candidate) > 254 or not candidate.isascii():
        return None
    match = _PLAIN_EMAIL.fullmatch(candidate)
    if match is None or len(match["local"]) > 64 or len(match["domain"]) > 253:
        return None
    if match["tld"].lower() in SPECIAL_USE_DOMAIN_NAMES:
        return None
    return candidate.lower()


def normalize_email(value: str) -> str:
    """A syntactically valid address, lower case; raises ValueError saying what is wrong."""
    candidate = unicodedata.normalize("NFKC", value).strip()
    if not candidate:
        raise ValueError("is empty")
    plain = _plain_email(candidate)
    if plain is not None:
        return plain
    try:
        checked = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return checked.normalized.lower()


_FOLD_SEPARATORS = re.compile(r"[\s\-]+")
_PUNCTUATION = re.compile(r"[^\w\s]")
_SCIENTIFIC = re.compile(r"^\d(\.\d+)?[eE]\+?\d+$")


def normalize_phone(value: str, region: str) -> str:
    """E.164 (`+8613800138000`); full-width digits and `00` international prefixes accepted.

    An extension (`ext 12`, `x12`, `#12`, `,12`) is not part of E.164: see
    `normalize_phone_parts` for the number and its extension."""
    return normalize_phone_parts(value, region)[0]


def normalize_phone_parts(value: str, region: str) -> tuple[str, str | None]:
    """(E.164, extension or None): `+49 89 1234-0 ext 12` gives (`+498912340`, `12`)."""
    e164, extension, _ = phone_parts_and_region(value, region)
    return e164, extension


@functools.lru_cache(maxsize=16_384)  # an upload checks a row's number, then normalizes it
def phone_parts_and_region(value: str, region: str) -> tuple[str, str | None, str | None]:
    """`normalize_phone_parts` and the region the number belongs to, from one parse."""
    candidate = unicodedata.normalize("NFKC", value).strip()
    if _SCIENTIFIC.match(candidate):
        raise ValueError(
            f"{candidate} is a number Excel wrote in scientific notation and its last digits "
            "are lost; format the column as text and export again"
        )
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number ({exc._msg})") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"not a valid phone number for region {region}")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, number.extension or None, phonenumbers.region_code_for_number(number) or None


def phone_match_key(phone: str | None, extension: str | None) -> str | None:
    """The exact key a phone matches by: E.164, plus `;ext=` (RFC 3966) when there is one.

    Two people behind one switchboard (`ext 12`, `ext 34`) are two keys, and the
    bare switchboard number a third: a number never matches the same number with
    an extension on the phone alone."""
    if not phone:
        return None
    return f"{phone};ext={extension}" if extension else phone


def normalize_country(value: str) -> str | None:
    """ISO 3166-1 alpha-2 for a code, an ISO name or a common English/Chinese name."""
    text = clean_text(unicodedata.normalize("NFKC", value))
    if not text:
        return None
    known = _COUNTRY_NAMES.get(text.lower())
    if known:
        return known
    try:
        country = pycountry.countries.lookup(text)
    except LookupError:
        return None
    return str(country.alpha_2)


@functools.lru_cache(maxsize=16_384)  # the same companies come back row after row
def company_key(value: str) -> str | None:
    """The company for matching: `Fabrikam, S.A.` and `FABRIKAM` give `fabrikam`.

    Case, punctuation, bracketed parts such as `(China)`/`（中国）` and legal
    suffixes in English, European and Chinese forms are removed.
    """
    text = _BRACKETED.sub(" ", unicodedata.normalize("NFKC", value).lower())
    text = text.replace(".", "").replace("&", " and ")
    text = _PUNCTUATION.sub(" ", text)
    tokens = text.split()
    while len(tokens) > 1 and tokens[-1] in _LEGAL_SUFFIXES:
        tokens.pop()
    key = " ".join(tokens)
    stripped = True
    while stripped:
        stripped = False
        for suffix in _CJK_LEGAL_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                key = key[: -len(suffix)].strip()
                stripped = True
    return key or None


def parse_company_size(value: str) -> int | None:
    """Employees as a number: `200-500` → 200, `1,000+` → 1000, `500人以上` → 500."""
    match = re.search(r"\d[\d,]*", unicodedata.normalize("NFKC", value))
    if not match:
        return None
    return int(match.group().replace(",", ""))


def parse_consent(value: str) -> bool | None:
    word = clean_text(value).lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def lead_id_for(event_id: str) -> str:
    """The lead id a first-seen event gets; stable, so a redelivery maps to the same lead."""
    return stable_id(_LEAD_NAMESPACE, event_id)


def _canonical_fields(fields: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split submitted fields into canonical ones (first non-empty wins) and the rest."""
    canonical: dict[str, str] = {}
    extra: dict[str, str] = {}
    for name, value in fields.items():
        target = _CANONICAL_BY_ALIAS.get(fold_field_name(name))
        if not value.strip():
            continue  # an empty cell says nothing; keeping it would only add noise
        if target and target not in canonical:
            canonical[target] = value
        else:
            extra[name] = value
    return canonical, extra


def fields_country(fields: Mapping[str, str]) -> str | None:
    """The country submitted fields name (ISO alpha-2), as `normalize_lead` reads it; None
    when they name none. The suppression check reads phone numbers with it."""
    canonical, _ = _canonical_fields(fields)
    return normalize_country(canonical["country"]) if "country" in canonical else None


def normalize_lead(raw: RawLead, *, default_region: str, now: datetime | None = None) -> Lead:
    """The pure core of the stage. Raises BadRecordError naming every bad field."""
    problems: dict[str, str] = {}
    for name, value in raw.fields.items():
        if len(value) > MAX_FIELD_CHARS:
            problems[name] = f"longer than {MAX_FIELD_CHARS} characters"
    canonical, extra = _canonical_fields(raw.fields)

    country = None
    if "country" in canonical:
        country = normalize_country(canonical["country"])
        if country is None:
            extra["country_raw"] = canonical["country"]

    email = phone = phone_extension = phone_region = None
    if "email" in canonical:
        try:
            email = normalize_email(canonical["email"])
        except ValueError as exc:
            problems["email"] = str(exc)
    if "phone" in canonical:
        try:
            phone, phone_extension, phone_region = phone_parts_and_region(
                canonical["phone"], country or default_region
            )
        except ValueError as exc:
            problems["phone"] = str(exc)
    if "email" not in canonical and "phone" not in canonical:
        problems["email"] = "required when no phone number is given"
        problems["phone"] = "required when no email address is given"

    company_size = None
    if "company_size" in canonical:
        company_size = parse_company_size(canonical["company_size"])
        if company_size is None:
            extra["company_size_raw"] = canonical["company_size"]

    consent = None
    if country is None and phone is not None:
        # A number with a country code says where the person is when the form did not.
        country = phone_region

    if "consent" in canonical:
        consent = parse_consent(canonical["consent"])
        if consent is None:
            problems["consent"] = "expected yes/no, true/false or 1/0"

    if problems:
        has_contact = "email" in canonical or "phone" in canonical
        raise BadRecordError(
            "invalid_fields" if has_contact else "no_contact",
            "; ".join(f"{field}: {problem}" for field, problem in sorted(problems.items())),
            problems,
        )

    text = {
        name: (clean_note(value) if name == "message" else clean_text(value)) or None
        for name, value in canonical.items()
        if name not in ("email", "phone", "country", "consent", "company_size")
    }
    received_at = raw.received_at.astimezone(UTC)
    occurred_at, time_problem = checked_occurred_at(raw.occurred_at, received_at)
    warnings = [w for w in (raw.context.get("warnings"), time_problem) if w]
    full_name = text.get("full_name")
    if full_name is None and (text.get("first_name") or text.get("last_name")):
        full_name = " ".join(p for p in (text.get("first_name"), text.get("last_name")) if p)
    text["full_name"] = full_name
    return Lead(
        lead_id=lead_id_for(raw.event_id),
        event_id=raw.event_id,
        channel=raw.channel,
        source_system=raw.source_system,
        email=email,
        phone=phone,
        phone_extension=phone_extension,
        country=country,
        consent=consent,
        company_key=company_key(company) if (company := text.get("company")) else None,
        company_size=company_size,
        form_id=raw.form_id,
        attributes={clean_text(k): v for k, v in extra.items()},
        received_at=received_at,
        occurred_at=occurred_at,
        warnings=warnings,
        normalized_at=now or datetime.now(UTC),
        **text,
    )


def normalized_with(default_region: str) -> str:
    """The mark of this code's normalization with this default region."""
    return f"{NORMALIZE_VERSION}/{default_region}"


def envelope_bytes(raw: RawLead, lead: Lead, *, default_region: str) -> bytes:
    """What an adapter that normalized the lead before answering publishes: the envelope
    with its lead, so the stream does not normalize again; without it when that would
    pass NORMALIZED_MAX_BYTES (a huge form: the stream then normalizes it)."""
    done = raw.model_copy(
        update={"normalized": lead, "normalized_with": normalized_with(default_region)}
    )
    value = done.model_dump_json().encode()
    return value if len(value) <= NORMALIZED_MAX_BYTES else raw.model_dump_json().encode()


def lead_of(raw: RawLead, *, default_region: str) -> Lead:
    """The envelope's lead: as the adapter normalized it when that is this normalization,
    else normalized here."""
    done = raw.normalized
    if (
        done is not None
        and raw.normalized_with == normalized_with(default_region)
        and done.event_id == raw.event_id
    ):
        return done
    return normalize_lead(raw, default_region=default_region)
