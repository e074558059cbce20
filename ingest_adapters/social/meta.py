"""Meta Lead Ads: webhook verification, notifications, lead objects and Ads Manager's
"Download leads" files, as `RawLead`s."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from pydantic import SecretStr

from ingest_adapters.social.common import (
    _EXPORT_CONTEXT_COLUMNS,
    _EXPORT_ID_COLUMNS,
    _EXPORT_PREFIX,
    _FALSE,
    _INVALID,
    _META_ID,
    _PHONE_PREFIX,
    _TRUE,
    MAX_CHALLENGE_CHARS,
    META_SOURCE,
    LeadgenRef,
    _answer_text,
    _compact,
    _epoch,
    _flag,
    _hmac_hex,
    _iso_text,
    _lenient,
    _meta_id,
    _moment,
    _opaque_id,
    _problem,
    _same,
    _secret,
    _text,
    lead_event_id,
)
from ingest_adapters.tradeshow import detect_encoding
from leadflow.errors import BadRecordError
from leadflow.strict_json import load_object
from schemas import RawLead


def verify_meta_subscription(
    params: Mapping[str, str], verify_token: str | SecretStr | None
) -> str:
    """The `hub.challenge` to echo when Meta's subscription request carries our verify token."""
    expected = _secret(verify_token)
    if not expected:
        raise BadRecordError(
            "not_configured", "SOCIAL_META_VERIFY_TOKEN is not set; no subscription is accepted"
        )
    if params.get("hub.mode") != "subscribe":
        raise BadRecordError("bad_signature", "hub.mode must be subscribe")
    if not _same(params.get("hub.verify_token") or "", expected):
        raise BadRecordError("bad_signature", "hub.verify_token does not match")
    challenge = params.get("hub.challenge") or ""
    if not challenge or len(challenge) > MAX_CHALLENGE_CHARS:
        raise BadRecordError(
            "invalid_fields", "hub.challenge is missing or too long", {"hub.challenge": "required"}
        )
    return challenge


def meta_signature(app_secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends with `body`."""
    return "sha256=" + _hmac_hex(app_secret, body)


def verify_meta_signature(
    body: bytes, header: str | None, app_secret: str | SecretStr | None
) -> None:
    """Accept a POST only when `X-Hub-Signature-256` is the HMAC of its raw body."""
    secret = _secret(app_secret)
    if not secret:
        raise BadRecordError("not_configured", "SOCIAL_META_APP_SECRET is not set")
    if not header:
        raise BadRecordError("bad_signature", "X-Hub-Signature-256 is missing")
    scheme, separator, digest = header.strip().partition("=")
    if not separator or scheme.lower() != "sha256":
        raise BadRecordError("bad_signature", "X-Hub-Signature-256 must be sha256=<hex digest>")
    if not _same(digest.lower(), _hmac_hex(secret, body)):
        raise BadRecordError("bad_signature", "X-Hub-Signature-256 does not match this body")


def parse_meta_notification(body: bytes, *, received_at: datetime) -> list[LeadgenRef]:
    """The leads announced by a Meta Page webhook; changes other than `leadgen` are ignored."""
    data = load_object(body)
    if data.get("object") != "page":
        raise _problem("invalid_fields", "object", "must be 'page' (a Page leadgen subscription)")
    entries = data.get("entry")
    if not isinstance(entries, list):
        raise _problem("invalid_fields", "entry", "must be a list")
    refs: dict[str, LeadgenRef] = {}
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            raise _problem("invalid_fields", f"entry[{i}].changes", "must be a list")
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            if not isinstance(change, dict):
                raise _problem("invalid_fields", where, "must be an object")
            if change.get("field") != "leadgen":
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                raise _problem("invalid_fields", f"{where}.value", "must be an object")
            lead_id = _meta_id(value.get("leadgen_id"), f"{where}.value.leadgen_id")
            created = value.get("created_time")
            refs.setdefault(
                lead_id,
                LeadgenRef.for_lead(
                    "meta",
                    lead_id,
                    received_at=received_at,
                    created_time=None
                    if created is None
                    else _epoch(created, f"{where}.value.created_time", 1),
                    form_id=_opaque_id(value.get("form_id")),
                    ad_id=_opaque_id(value.get("ad_id") or value.get("adgroup_id")),
                    page_id=_opaque_id(value.get("page_id") or entry.get("id")),
                ),
            )
    if not refs:
        raise BadRecordError(
            "no_leads", "the notification has no leadgen change; only leadgen is subscribed"
        )
    return list(refs.values())


def meta_lead(
    data: Mapping[str, Any], *, received_at: datetime, ref: LeadgenRef | None = None
) -> RawLead:
    """The envelope of a Graph API lead object; `field_data` names are kept as sent."""
    lead_id = _meta_id(data.get("id"), "id", _INVALID)
    if ref is not None and ref.lead_ref != lead_id:
        raise _problem(_INVALID, "id", f"Graph returned lead {lead_id} for {ref.lead_ref}")
    field_data = data.get("field_data", [])
    if not isinstance(field_data, list):
        raise _problem(_INVALID, "field_data", "must be a list")
    fields: dict[str, str] = {}
    for i, item in enumerate(field_data):
        name = item.get("name") if isinstance(item, dict) else None
        values = item.get("values", []) if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or not isinstance(values, list):
            raise _problem(_INVALID, f"field_data[{i}]", "must have a name and a list of values")
        text = ", ".join(_answer_text(v, f"field_data[{i}].values") for v in values)
        fields[name] = f"{fields[name]}, {text}" if name in fields else text
    organic = data.get("is_organic")
    created, warning = _lenient(
        lambda: _iso_text(data.get("created_time"), "created_time", _INVALID)
    )
    context = {
        "warnings": warning,
        "provider": "meta",
        "provider_lead_id": lead_id,
        "created_time": created,
        "is_organic": _flag(organic) if isinstance(organic, bool) else None,
        "page_id": ref.page_id if ref else None,
        **{
            key: _text(data.get(key), key, _INVALID)
            for key in ("ad_name", "adset_name", "campaign_name", "platform")
        },
        **{
            key: _opaque_id(data.get(key))
            for key in ("ad_id", "adset_id", "campaign_id", "form_id")
        },
    }
    return RawLead(
        event_id=lead_event_id("meta", lead_id),
        channel="social",
        source_system=META_SOURCE,
        received_at=received_at,
        occurred_at=_moment(context["created_time"]),
        idempotency_key=f"meta:{lead_id}",
        form_id=context["form_id"],
        fields=fields,
        context=_compact(context),
    )


# --- Ads Manager "Download leads" files ----------------------------------------------------


@dataclass(frozen=True)
class ExportRow:
    """One data row of a lead export: its 1-based record number (header = 1) and cells."""

    number: int
    cells: dict[str, str]
    ragged: bool = False


def read_meta_export(raw: IO[bytes]) -> Iterator[ExportRow]:
    """Every row of a Meta lead export, streamed; the caller owns and closes `raw`.

    Takes Meta's UTF-16 tab-separated download and the UTF-8 comma-separated
    variant (with or without BOM); file-level problems raise `BadRecordError`.
    """
    head = raw.read(65536)
    raw.seek(0)
    encoding = detect_encoding(head)
    text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
    first_line = head.decode(encoding, errors="ignore").split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    try:
        records = csv.reader(text, delimiter=delimiter)
        header = [cell.strip() for cell in next(records, [])]
        if "id" not in header:
            raise BadRecordError(
                "no_header",
                "the first row must be Meta's export header (id, created_time, ad_id, ...)",
            )
        for number, cells in enumerate(records, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if any(len(cell) > MAX_EXPORT_CELL_CHARS for cell in cells):
                # Bounded here, not by the csv module's limit, which other readers may raise.
                raise BadRecordError(
                    "invalid_file",
                    f"row {number}: a cell holds more than {MAX_EXPORT_CELL_CHARS:,} characters",
                )
            ragged = len(cells) > len(header) and any(c.strip() for c in cells[len(header) :])
            yield ExportRow(
                number,
                {name: cell.strip() for name, cell in zip(header, cells, strict=False) if name},
                ragged,
            )
    except UnicodeDecodeError as exc:
        raise BadRecordError(
            "invalid_encoding", f"the file is not valid {encoding}: {exc.reason}"
        ) from exc
    except csv.Error as exc:
        raise BadRecordError("invalid_file", f"the file cannot be read as CSV/TSV: {exc}") from exc
    finally:
        text.detach()


MAX_EXPORT_CELL_CHARS = 131_072  # the csv module's own default: no lead field is longer


def lead_from_export_row(
    row: ExportRow, *, received_at: datetime, source: str | None = None
) -> RawLead:
    """The envelope of one export row: the same event id the webhook path gives that lead.

    Meta writes ids as `l:123`, `ag:123`, ... and phone answers as `p:+86...`
    so spreadsheets keep them as text; the prefixes are removed.
    """

    def bad(column: str, problem: str) -> BadRecordError:
        return BadRecordError(
            "invalid_row",
            f"row {row.number}: {column} {problem}",
            {"row": str(row.number), column: problem},
        )

    if row.ragged:
        raise bad("cells", "extend past the header")
    cells = {
        name: _EXPORT_PREFIX.sub("", value, count=1) if name in _EXPORT_ID_COLUMNS else value
        for name, value in row.cells.items()
    }
    lead_id = cells.get("id", "")
    if not _META_ID.fullmatch(lead_id):
        raise bad("id", f"{row.cells.get('id', '')[:40]!r} is not a Meta lead id")
    for column in _EXPORT_ID_COLUMNS:
        if cells.get(column) and not _META_ID.fullmatch(cells[column]):
            raise bad(column, "is not a Meta id")
    created_text, warning = _lenient(
        lambda: _iso_text(cells.get("created_time") or None, "created_time", "invalid_row")
    )
    if warning:
        warning = f"row {row.number}: {warning}"
    created = _moment(created_text)
    organic = cells.get("is_organic", "").lower()
    if organic not in _TRUE | _FALSE:
        raise bad("is_organic", "must be 0 or 1")
    context = {
        **{column: cells.get(column) for column in _EXPORT_CONTEXT_COLUMNS},
        "provider": "meta",
        "provider_lead_id": lead_id,
        "created_time": created_text,
        "warnings": warning,
        "is_organic": _flag(organic in _TRUE),
        "export_row": str(row.number),
        "export": source,
    }
    fields = {
        name: _PHONE_PREFIX.sub("", value, count=1)
        for name, value in row.cells.items()
        if value and name != "id" and name not in _EXPORT_CONTEXT_COLUMNS
    }
    return RawLead(
        event_id=lead_event_id("meta", lead_id),
        channel="social",
        source_system=META_SOURCE,
        received_at=received_at,
        occurred_at=created,
        idempotency_key=f"meta:{lead_id}",
        form_id=cells.get("form_id") or None,
        fields=fields,
        context=_compact(context),
    )


def meta_export_leads(
    raw: IO[bytes], *, received_at: datetime, source: str | None = None
) -> Iterator[RawLead | BadRecordError]:
    """Each row as its envelope or, for a bad row, its error: one bad row stops nothing."""
    for row in read_meta_export(raw):
        try:
            yield lead_from_export_row(row, received_at=received_at, source=source)
        except BadRecordError as exc:
            yield exc
