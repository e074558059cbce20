"""Adapter `tradeshow_upload` (pure part): badge-scanner exports become `RawLead`s.

Reads CSV in UTF-8 (with or without BOM), GB18030/GBK (Chinese Excel) and
UTF-16 (Excel "Unicode text", tab-separated), sniffs the delimiter, handles
quoted newlines, skips title rows above the header, and reads XLSX in
streaming mode. Rows stream one at a time, so memory stays flat however
long the file. The header is found by the field names leadflow knows in
English and Chinese (the normalize stage's aliases); a mapping file can
rename columns first.

Each row's event id is derived from the event name and the row's content,
so a row repeated in the file, or the same file uploaded again, is the same
event.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from leadflow import stages
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from schemas import RawLead
from streams.normalize import FIELD_ALIASES, fold_field_name

STAGE = stages.TRADESHOW_UPLOAD
SOURCE_SYSTEM = "tradeshow_upload"
HEADER_SEARCH_ROWS = 10
MAX_XLSX_BYTES = 200 * 1024 * 1024  # uncompressed; a larger sheet is refused as a zip bomb
_ROW_NAMESPACE = uuid.UUID("6f1d2c3b-4a5e-4f60-8b7c-9d0e1f2a3b4c")
_KNOWN = {alias for aliases in FIELD_ALIASES.values() for alias in aliases}


# A cell a spreadsheet would run: `=SUM(…)`, `@cmd`, `+HYPERLINK(…)`, `-IMPORTXML(…)`.
# Phone numbers (`+86 138…`) and negative numbers do not match.
_FORMULA = re.compile(r"^\s*(=|@|[+\-]\s*[A-Za-z_]+\s*\()")


def formula_column(row: Row) -> str | None:
    """The first column whose cell is a spreadsheet formula, or None."""
    for column, value in row.cells.items():
        if _FORMULA.match(value):
            return column
    return None


@dataclass(frozen=True)
class Row:
    """One data row: its 1-based line in the sheet and its cells by header."""

    number: int
    cells: dict[str, str]


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


def _rows_from(records: Iterator[list[str]], mapping: Mapping[str, str]) -> Iterator[Row]:
    """Find the header among the first rows, then yield the data rows under it."""
    header: list[str] | None = None
    for number, cells in enumerate(records, start=1):
        cells = [c.strip() if isinstance(c, str) else "" for c in cells]
        if header is None:
            if _is_header([mapping.get(c, c) for c in cells]):
                header = [mapping.get(c, c) for c in cells]
            elif number >= HEADER_SEARCH_ROWS:
                raise BadRecordError(
                    "no_header",
                    f"no header row in the first {HEADER_SEARCH_ROWS} rows: "
                    "expected columns such as name/姓名, email/邮箱, phone/手机, company/公司",
                )
            continue
        if not any(cells):
            yield Row(number, {})
            continue
        if len(cells) > len(header) and any(cells[len(header) :]):
            yield Row(number, {"__ragged__": str(len(cells))})
            continue
        yield Row(number, {name: value for name, value in zip(header, cells, strict=False) if name})
    if header is None:
        raise BadRecordError("no_header", "the file has no header row")


def read_csv(raw: IO[bytes], mapping: Mapping[str, str]) -> Iterator[Row]:
    head = raw.read(65536)
    raw.seek(0)
    encoding = detect_encoding(head)
    text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
    sample = head.decode(encoding, errors="ignore")[:8192]
    try:
        yield from _rows_from(csv.reader(text, _sniff(sample)), mapping)
    except UnicodeDecodeError as exc:
        raise BadRecordError(
            "invalid_encoding", f"the file mixes encodings (read as {encoding}): {exc}"
        ) from exc
    finally:
        text.detach()  # the caller owns and closes the byte stream


def read_xlsx(path: Path, mapping: Mapping[str, str]) -> Iterator[Row]:
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise BadRecordError("invalid_xlsx", f"not an XLSX file: {exc}") from exc
    if unpacked > MAX_XLSX_BYTES:
        raise BadRecordError(
            "too_large",
            f"the workbook unpacks to {unpacked:,} bytes "
            f"(limit {MAX_XLSX_BYTES:,}); split it or export CSV",
        )
    from openpyxl import load_workbook

    workbook = load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = workbook.worksheets[0]
        records = ([_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True))
        yield from _rows_from(records, mapping)
    finally:
        workbook.close()


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # phone numbers stored as numbers
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def read_rows(path: Path, mapping: Mapping[str, str] | None = None) -> Iterator[Row]:
    """Every data row of a CSV/TSV/TXT or XLSX file, streamed."""
    mapping = dict(mapping or {})
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        yield from read_xlsx(path, mapping)
        return
    with path.open("rb") as raw:
        yield from read_csv(raw, mapping)


def envelope(
    row: Row, event_name: str, source_detail: str, received_at: datetime | None = None
) -> RawLead:
    """The RawLead of one row; its id depends only on the event and the row's content."""
    content = "|".join(f"{k}={v}" for k, v in sorted(row.cells.items()))
    event_id = stable_id(_ROW_NAMESPACE, f"{event_name}|{content}")
    return RawLead(
        event_id=event_id,
        channel="tradeshow",
        source_system=SOURCE_SYSTEM,
        received_at=received_at or datetime.now(UTC),
        form_id=event_name,
        fields={**row.cells, "event": event_name},
        context={"upload": source_detail, "row": str(row.number)},
    )
