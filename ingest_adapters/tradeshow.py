"""Adapter `tradeshow_upload` (pure part): badge-scanner exports become `RawLead`s.

Reads CSV in UTF-8 (with or without BOM), GB18030/GBK (Chinese Excel) and
UTF-16 (Excel "Unicode text", tab-separated), sniffs the delimiter, handles
quoted newlines, skips title rows above the header, and reads XLSX in
streaming mode. Rows stream one at a time, so memory stays flat however
long the file. The header is found by the field names leadflow knows in
English and Chinese (the normalize step's aliases); a mapping file can
rename columns first.

Hostile files are bounded (`LimitsSettings`): a header wider than
LIMITS_UPLOAD_MAX_COLUMNS is refused, a sheet is read no wider than that (so
a styled cell in column XFD costs nothing), a row with a cell longer than
LIMITS_UPLOAD_MAX_CELL_CHARS is marked `cell_too_large`; a CSV field past
`CSV_FIELD_LIMIT` characters, a line past `CSV_LINE_LIMIT` or an unbalanced
quote refuses the file (`cell_too_large`, `row_too_large`, `invalid_csv`,
with the row), and so does a zip that is not a workbook (`invalid_xlsx`).
Counting rows (and stopping after too many empty ones) is the caller's
business: it stops iterating, and `close()`s the rows.

Each row's event id is derived from the event name and the row's content,
so a row repeated in the file, or the same file uploaded again, is the same
event.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
import uuid
import zipfile
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import IO, Any

from leadflow import steps
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from leadflow.normalize import (
    FIELD_ALIASES,
    MAX_FIELD_CHARS,
    fold_field_name,
    normalize_country,
    normalize_email,
    normalize_phone_parts,
    parse_consent,
)
from leadflow.settings import LimitsSettings
from schemas import RawLead
from schemas.limits import check_event_time

STEP = steps.TRADESHOW_UPLOAD
SOURCE_SYSTEM = "tradeshow_upload"
HEADER_SEARCH_ROWS = 10
MAX_XLSX_BYTES = 200 * 1024 * 1024  # uncompressed; a larger sheet is refused as a zip bomb
# The csv module's own bound on one field (its default, 128 KiB, raised): a longer cell is
# only a row rejection (`cell_too_large`); past this the file is refused, since the reader
# cannot find where the next row starts (an unbalanced quote swallows the rest of the file).
CSV_FIELD_LIMIT = 1 << 20
# One physical line of a CSV, in characters: past it the file is refused before the csv
# module splits it (a line of millions of tiny fields would be millions of objects).
CSV_LINE_LIMIT = 4 * CSV_FIELD_LIMIT
_ROW_NAMESPACE = uuid.UUID("6f1d2c3b-4a5e-4f60-8b7c-9d0e1f2a3b4c")


# Headers of the column that says when the badge was scanned (folded), beside `scan_time`
# (what a mapping file names it). Its value becomes the lead's `occurred_at`.
SCAN_TIME_FIELDS = frozenset(
    fold_field_name(name)
    for name in (
        "scan_time", "scanned_at", "scan_date", "scan_datetime", "date_scanned", "scanned",
        "timestamp", "occurred_at", "扫描时间", "扫码时间", "签到时间", "扫描日期", "时间",
    )
)  # fmt: skip
_CANONICAL_BY_ALIAS = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}
_KNOWN = frozenset(_CANONICAL_BY_ALIAS) | SCAN_TIME_FIELDS

# What a spreadsheet would run if a CSV cell started with it (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NEUTRALISED = frozenset(FORMULA_STARTS)


def neutralise_cell(value: str) -> str:
    """A cell for a CSV leadflow writes: `'` before one a spreadsheet would run as a formula."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def _unneutralised(cell: str) -> str:
    """A cell as it was before `neutralise_cell` (an error file uploaded again)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in _NEUTRALISED else cell


@dataclass(frozen=True)
class Row:
    """One data row: its 1-based line in the sheet and its cells by header.

    `problem` is set when the row cannot be a lead whatever its values (more cells
    than the header, a cell past the size limit); `cells` then holds what was read.
    """

    number: int
    cells: dict[str, str]
    problem: BadRecordError | None = None


def detect_encoding(head: bytes) -> str:
    """The encoding of a CSV from its first bytes: BOMs first, then UTF-8, then GB18030."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "gb18030"
    return "utf-8"


def _is_header(cells: list[str]) -> bool:
    return sum(1 for cell in cells if fold_field_name(cell) in _KNOWN) >= 2


def _sniff(sample: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel_tab if sample.count("\t") > sample.count(",") else csv.excel


def _cell_text(value: object) -> str:
    if type(value) is str:  # every CSV cell, most XLSX ones: the fast path
        return value
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # phone numbers stored as numbers
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _first(cell: str) -> str:
    return cell[:1]


def _width(cells: Sequence[str]) -> int:
    """How many cells up to the last non-empty one."""
    for index in range(len(cells) - 1, -1, -1):
        if cells[index]:
            return index + 1
    return 0


def _clip(value: str, limit: int = 200) -> str:
    return value if len(value) <= limit else f"{value[:limit]}…"


def _rows_from(
    records: Iterator[Sequence[Any]],
    mapping: Mapping[str, str],
    limits: LimitsSettings,
    *,
    trim_header: bool = False,
) -> Iterator[Row]:
    """Find the header among the first rows, then yield the data rows under it.

    With `trim_header` (XLSX, whose rows come padded to the widest column read) the
    header ends at its last named column; a CSV header keeps its trailing empty names.
    """
    header: list[str] | None = None
    width = 0
    max_chars = limits.upload_max_cell_chars
    for number, record in enumerate(records, start=1):
        if header is None:
            named = [mapping.get(c, c) for c in (_cell_text(v).strip() for v in record)]
            if _is_header(named):
                columns = _width(named)
                if columns > limits.upload_max_columns:
                    raise BadRecordError(
                        "too_many_columns",
                        f"the header (row {number}) has {columns:,} columns or more; "
                        f"at most {limits.upload_max_columns:,} are read "
                        "(LIMITS_UPLOAD_MAX_COLUMNS)",
                    )
                long = next((c for c in named if len(c) > max_chars), None)
                if long is not None:
                    raise BadRecordError(
                        "cell_too_large",
                        f"the header (row {number}) has a column name of {len(long):,} "
                        f"characters (limit {max_chars:,}, LIMITS_UPLOAD_MAX_CELL_CHARS)",
                    )
                header = named[:columns] if trim_header else named
                width = len(header)
            elif number >= HEADER_SEARCH_ROWS:
                raise BadRecordError(
                    "no_header",
                    f"no header row in the first {HEADER_SEARCH_ROWS} rows: "
                    "expected columns such as name/姓名, email/邮箱, phone/手机, company/公司",
                )
            continue
        cells = [_cell_text(v).strip() for v in record[:width]]
        if "'" in map(_first, cells):  # an error file leadflow wrote, uploaded again
            cells = [_unneutralised(cell) for cell in cells]
        values = {name: value for name, value in zip(header, cells, strict=False) if name}
        extra = record[width:]
        if extra and any(extra):  # C-speed for the usual run of None or "" cells
            texts = [_cell_text(v).strip() for v in extra]
            last = _width(texts)
            if last:
                for offset, value in enumerate(texts[: limits.upload_max_columns]):
                    if value:
                        values[f"column {width + offset + 1}"] = _clip(value)
                problem = BadRecordError(
                    "ragged_row", f"row {number} has {width + last} cells, more than the header"
                )
                yield Row(number, values, problem)
                continue
        if not any(cells):
            yield Row(number, {})
            continue
        if max(map(len, cells)) > max_chars:
            index = next(i for i, cell in enumerate(cells) if len(cell) > max_chars)
            column = header[index] or f"column {index + 1}"
            problem = BadRecordError(
                "cell_too_large",
                f"row {number}: column {_clip(column)!r} holds {len(cells[index]):,} characters "
                f"(limit {max_chars:,}, LIMITS_UPLOAD_MAX_CELL_CHARS)",
                {column: f"longer than {max_chars:,} characters"},
            )
            yield Row(number, values, problem)
            continue
        yield Row(number, values)
    if header is None:
        raise BadRecordError("no_header", "the file has no header row")


def _csv_records(reader: Any) -> Iterator[list[str]]:
    """The reader's records; its errors become refusals naming the row they stopped at."""
    number = 0
    while True:
        try:
            record: list[str] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = f"row {number + 1} (line {reader.line_num})"
            if "field larger than field limit" in str(exc):
                raise BadRecordError(
                    "cell_too_large",
                    f"{where}: a cell runs past {csv.field_size_limit():,} characters; "
                    "a quote that is never closed, or a cell far past the limit "
                    "(LIMITS_UPLOAD_MAX_CELL_CHARS)",
                ) from exc
            raise BadRecordError(
                "invalid_csv",
                f"{where}: {exc} (a quote that is never closed, or text after a closing quote)",
            ) from exc
        number += 1
        yield record


def _bounded_lines(text: IO[str]) -> Iterator[str]:
    """The file's lines, each at most CSV_LINE_LIMIT characters; a longer one refuses it."""
    number = 0
    while line := text.readline(CSV_LINE_LIMIT + 1):
        number += 1
        if len(line) > CSV_LINE_LIMIT:
            raise BadRecordError(
                "row_too_large",
                f"line {number} is longer than {CSV_LINE_LIMIT:,} characters; "
                "no row of a badge export is",
            )
        yield line


def _raise_field_limit(limits: LimitsSettings) -> None:
    """The csv module's bound is process-wide: raised (never lowered) to fit the limit."""
    wanted = max(CSV_FIELD_LIMIT, 4 * limits.upload_max_cell_chars)
    if csv.field_size_limit() < wanted:
        csv.field_size_limit(wanted)


def read_csv(
    raw: IO[bytes], mapping: Mapping[str, str], limits: LimitsSettings | None = None
) -> Iterator[Row]:
    limits = limits or LimitsSettings()
    _raise_field_limit(limits)
    head = raw.read(65536)
    raw.seek(0)
    encoding = detect_encoding(head)
    text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
    sample = head.decode(encoding, errors="ignore")[:8192]
    try:
        # strict: a quote still open at the end of the file is an error, not one giant cell.
        reader = csv.reader(_bounded_lines(text), _sniff(sample), strict=True)
        yield from _rows_from(_csv_records(reader), mapping, limits)
    except UnicodeDecodeError as exc:
        raise BadRecordError(
            "invalid_encoding", f"the file mixes encodings (read as {encoding}): {exc}"
        ) from exc
    finally:
        text.detach()  # the caller owns and closes the byte stream


def _not_a_workbook(exc: Exception) -> BadRecordError:
    return BadRecordError(
        "invalid_xlsx", f"not a readable XLSX workbook: {type(exc).__name__}: {_clip(str(exc))}"
    )


def _xlsx_records(path: Path, limits: LimitsSettings) -> Iterator[tuple[Any, ...]]:
    """The first sheet's rows as values, at most LIMITS_UPLOAD_MAX_COLUMNS + 1 wide.

    The sheet's declared dimension only narrows: rows end where the sheet's data ends
    (or one past the row limit), whatever `<dimension ref="A1:XFD1048576"/>` says.
    """
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # a zip of anything: KeyError, XML errors, InvalidFileException
        raise _not_a_workbook(exc) from exc
    try:
        if not workbook.worksheets:
            raise BadRecordError("invalid_xlsx", "the workbook has no worksheet")
        sheet = workbook.worksheets[0]
        # The declared width (rows come padded to it) when it is sane, else the bound.
        bound = limits.upload_max_columns + 1
        declared = sheet.max_column
        columns = min(declared, bound) if isinstance(declared, int) and declared > 0 else bound
        rows: Iterator[tuple[Any, ...]] = sheet.iter_rows(
            max_col=columns,
            max_row=limits.upload_max_rows + HEADER_SEARCH_ROWS + 1,
            values_only=True,
        )
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:
                raise _not_a_workbook(exc) from exc
            yield row
    finally:
        workbook.close()


def read_xlsx(
    path: Path, mapping: Mapping[str, str], limits: LimitsSettings | None = None
) -> Iterator[Row]:
    limits = limits or LimitsSettings()
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise BadRecordError("invalid_xlsx", f"not an XLSX file: {exc}") from exc
    if unpacked > MAX_XLSX_BYTES:
        raise BadRecordError(
            "too_large",
            f"the workbook unpacks to {unpacked:,} bytes "
            f"(limit {MAX_XLSX_BYTES:,}); split it or export CSV",
        )
    yield from _rows_from(_xlsx_records(path, limits), mapping, limits, trim_header=True)


def read_rows(
    path: Path,
    mapping: Mapping[str, str] | None = None,
    limits: LimitsSettings | None = None,
) -> Generator[Row, None, None]:
    """Every data row of a CSV/TSV/TXT or XLSX file, streamed; `close()` it to stop early."""
    mapping = dict(mapping or {})
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        yield from read_xlsx(path, mapping, limits)
        return
    with path.open("rb") as raw:
        yield from read_csv(raw, mapping, limits)


def envelope(
    row: Row,
    event_name: str,
    source_detail: str,
    received_at: datetime | None = None,
    *,
    fields: Mapping[str, str] | None = None,
    context: Mapping[str, str] | None = None,
    occurred_at: datetime | None = None,
) -> RawLead:
    """The RawLead of one row; its id depends only on the event and the row's content.

    `fields` (the row's cells less those `check_row` left out) default to all its cells;
    `context` is added to the upload and row number."""
    content = "|".join(f"{k}={v}" for k, v in sorted(row.cells.items()))
    event_id = stable_id(_ROW_NAMESPACE, f"{event_name}|{content}")
    return RawLead(
        event_id=event_id,
        channel="tradeshow",
        source_system=SOURCE_SYSTEM,
        received_at=received_at or datetime.now(UTC),
        occurred_at=occurred_at,
        form_id=event_name,
        fields={**(row.cells if fields is None else fields), "event": event_name},
        context={"upload": source_detail, "row": str(row.number), **(context or {})},
    )


# --- scan times -------------------------------------------------------------------------

_EXCEL_EPOCH = datetime(1899, 12, 30)  # serial 1.0 is 1900-01-01 (Lotus' leap-year bug kept)
_EXCEL_SERIAL = re.compile(r"\d{5}(\.\d+)?")  # 10000-99999: 1927-2173
_EPOCH_SECONDS = re.compile(r"\d{10}(\.\d+)?")
_EPOCH_MILLIS = re.compile(r"\d{13}")
_TIMES = ("%H:%M:%S", "%H:%M", "%I:%M:%S %p", "%I:%M %p", "")
_DATES_FIRST = ("%Y/%m/%d", "%Y.%m.%d", "%Y-%m-%d", "%Y年%m月%d日")
_DATES_US = ("%m/%d/%Y", "%m-%d-%Y")  # 03/02/2026 is March 2 (US scanners) …
_DATES_DAY_FIRST = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y")  # … unless the first part is > 12
_FORMATS = tuple(
    f"{date} {time}".strip() for dates in (_DATES_FIRST, _DATES_US, _DATES_DAY_FIRST)
    for date in dates for time in _TIMES
)  # fmt: skip


def _parse_moment(text: str) -> datetime | None:
    """A scan time as scanners write it, naive or aware; None when no format fits."""
    if _EXCEL_SERIAL.fullmatch(text):
        return _EXCEL_EPOCH + timedelta(days=float(text))
    if _EPOCH_SECONDS.fullmatch(text):
        return datetime.fromtimestamp(float(text), UTC)
    if _EPOCH_MILLIS.fullmatch(text):
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        return datetime.fromisoformat(text)  # ISO 8601, Excel datetime cells, 2026-03-02 09:15
    except ValueError:
        pass
    # 2026年3月2日9:15 and 2026/3/2 9:15 alike; AM/PM in any case
    text = re.sub(r"(日)(?=\d)", r"\1 ", text.replace("T", " ")).upper()
    for pattern in _FORMATS:
        try:
            return datetime.strptime(text, pattern)
        except ValueError:
            continue
    return None


_OFFSET = re.compile(r"(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?")


def parse_timezone(name: str) -> tzinfo:
    """The zone scan times without an offset are in: an IANA name (`Asia/Shanghai`),
    `UTC`, or an offset (`+08:00`, `UTC+8`). Raises BadRecordError (`invalid_timezone`)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    text = name.strip()
    if text.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = _OFFSET.fullmatch(text)
    if match is not None:
        sign, hours, minutes = match.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if offset <= timedelta(hours=14):
            return timezone(-offset if sign == "-" else offset)
    else:
        try:
            if 0 < len(text) <= 64 and ".." not in text and not text.startswith("/"):
                return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise BadRecordError(
        "invalid_timezone",
        f"timezone {_clip(text, 64)!r} is not an IANA zone (Asia/Shanghai), UTC or an offset "
        "(+08:00)",
        {"timezone": "an IANA zone name, UTC or an offset such as +08:00"},
    )


def parse_scan_time(value: str, *, tz: tzinfo = UTC) -> datetime:
    """When a badge was scanned, in UTC: ISO 8601, `2026-03-02 09:15`, `2026/3/2 9:15`,
    `03/02/2026 09:15 AM` (month first, unless the first number is past 12),
    `02.03.2026 09:15` (day first), `2026年3月2日 9:15`, Excel serials (`46083.38`) and
    Unix epoch seconds or milliseconds. A time without an offset is read in `tz`.

    Raises ValueError naming the rule: not a time leadflow reads, before
    LIMITS_EARLIEST_TIME, or more than LIMITS_FUTURE_SKEW_S (a day) ahead."""
    text = unicodedata.normalize("NFKC", value).strip()
    moment = _parse_moment(text) if text else None
    if moment is None:
        raise ValueError(
            "is not a date and time leadflow reads (ISO 8601, 2026-03-02 09:15, 2026/3/2 9:15, "
            "03/02/2026 09:15 AM, 02.03.2026 09:15, or an Excel date)"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    moment = moment.astimezone(UTC)
    try:
        check_event_time("the scan time", moment)
    except ValueError as exc:
        raise ValueError(f"is out of range: {exc}") from exc
    return moment


# --- one row → a lead, warnings, or a rejection -------------------------------------------


@dataclass(frozen=True)
class Issue:
    """Something wrong with one row: its reason, the column (if one) and a message naming
    the value, the column, the row and the rule."""

    reason: str
    message: str
    column: str | None = None


@dataclass
class Checked:
    """A row checked: the lead to publish (with `warnings` about what was left out or
    defaulted), or `rejection` when the row cannot be a lead."""

    raw: RawLead | None
    warnings: list[Issue]
    rejection: BadRecordError | None = None


def _quoted(value: str, limit: int = 80) -> str:
    return repr(_clip(value, limit))


def _at(row: Row, column: str, field: str) -> str:
    named = "" if fold_field_name(column) == fold_field_name(field) else f" ({field})"
    return f"row {row.number}, column {_quoted(column)}{named}"


def _scan_column(cells: Mapping[str, str]) -> str | None:
    for column, value in cells.items():
        if value and fold_field_name(column) in SCAN_TIME_FIELDS:
            return column
    return None


def check_row(
    row: Row,
    event_name: str,
    source_detail: str,
    *,
    default_region: str,
    received_at: datetime | None = None,
    tz: tzinfo = UTC,
) -> Checked:
    """A row to a lead: rejected only when it has no usable contact (an email or a phone
    that is valid); any other bad value is a warning, its cell left out (or the default
    used) and its reason kept in `context["warnings"]`.

    Formula-looking cells (`=HYPERLINK(…)`) are text and kept verbatim: leadflow never
    evaluates them, and a CSV it writes neutralises them (`neutralise_cell`)."""
    received = received_at or datetime.now(UTC)
    columns: dict[str, str] = {}  # canonical field → its column (first non-empty one)
    for column, value in row.cells.items():
        target = _CANONICAL_BY_ALIAS.get(fold_field_name(column))
        if target and target not in columns and value.strip():
            columns[target] = column
    fields = dict(row.cells)
    warnings: list[Issue] = []

    def leave_out(column: str, reason: str, message: str) -> None:
        fields.pop(column, None)
        warnings.append(Issue(reason, message, column))

    for column, value in row.cells.items():
        if len(value) > MAX_FIELD_CHARS:
            field = _CANONICAL_BY_ALIAS.get(fold_field_name(column), column)
            leave_out(
                column,
                "cell_too_large",
                f"{_at(row, column, field)}: {len(value):,} characters, more than the "
                f"{MAX_FIELD_CHARS:,} a lead's field holds; the cell is left out",
            )

    region = default_region
    region_note = f"the default region {default_region} (the row has no country)"
    if "country" in columns and columns["country"] in fields:
        column = columns["country"]
        value = row.cells[column]
        country = normalize_country(value)
        if country is None:
            region_note = (
                f"the default region {default_region} (the row's country {_quoted(value)} "
                "is unknown)"
            )
            warnings.append(
                Issue(
                    "unknown_country",
                    f"{_at(row, column, 'country')}: {_quoted(value)} is not a country "
                    "leadflow knows (ISO 3166 code or name); kept as text, and phone numbers "
                    f"are read with the default region {default_region}",
                    column,
                )
            )
        else:
            region, region_note = country, f"the row's country {country}"

    contact: dict[str, str] = {}  # field → problem, for a contact given but unusable
    usable = False
    if "email" in columns and columns["email"] in fields:
        column = columns["email"]
        value = row.cells[column]
        try:
            normalize_email(value)
            usable = True
        except ValueError as exc:
            contact["email"] = (
                f"{_at(row, column, 'email')}: {_quoted(value)} is not a valid email address "
                f"({exc})"
            )
    if "phone" in columns and columns["phone"] in fields:
        column = columns["phone"]
        value = row.cells[column]
        try:
            normalize_phone_parts(value, region)
            usable = True
        except ValueError as exc:
            problem = str(exc)
            if problem.startswith("not a valid phone number for region"):
                problem = f"is not a valid phone number for {region_note}"
            else:
                problem = f"is {problem}, read with {region_note}"
            contact["phone"] = f"{_at(row, column, 'phone')}: {_quoted(value)} {problem}"
    if not usable:
        if not contact and not any(f in columns for f in ("email", "phone")):
            return Checked(
                None,
                warnings,
                BadRecordError(
                    "no_contact",
                    f"row {row.number}: no email or phone; a lead needs one to be contacted",
                    {"email": "required when no phone", "phone": "required when no email"},
                ),
            )
        message = "; ".join(contact.values()) or (
            f"row {row.number}: the email or phone cell is too large to be a contact"
        )
        return Checked(
            None,
            warnings,
            BadRecordError(
                "invalid_fields", f"{message}; a lead needs a valid email or phone", contact
            ),
        )
    for field, message in contact.items():
        leave_out(columns[field], f"invalid_{field}", f"{message}; the cell is left out")

    if "consent" in columns and columns["consent"] in fields:
        column = columns["consent"]
        value = row.cells[column]
        if parse_consent(value) is None:
            leave_out(
                column,
                "invalid_consent",
                f"{_at(row, column, 'consent')}: {_quoted(value)} is not yes/no, true/false or "
                "1/0; the cell is left out (no consent recorded)",
            )

    occurred: datetime | None = None
    scan_column = _scan_column(row.cells)
    if scan_column is not None:
        value = row.cells[scan_column]
        try:
            occurred = parse_scan_time(value, tz=tz)
        except ValueError as exc:
            warnings.append(
                Issue(
                    "bad_scan_time",
                    f"{_at(row, scan_column, 'scan time')}: {_quoted(value)} {exc}; the arrival "
                    "time is used instead",
                    scan_column,
                )
            )
    context = {}
    if warnings:
        context["warnings"] = _clip("; ".join(w.message for w in warnings), 4000)
    raw = envelope(
        row,
        event_name,
        source_detail,
        received,
        fields=fields,
        context=context,
        occurred_at=None if occurred is None else occurred.astimezone(UTC),
    )
    return Checked(raw, warnings)
