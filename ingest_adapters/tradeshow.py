"""Adapter `tradeshow_upload` (pure part): badge-scanner exports become `RawLead`s.

Reads CSV in UTF-8 (with or without BOM), GB18030/GBK (Chinese Excel) and
UTF-16 (Excel "Unicode text", tab-separated), sniffs the delimiter, handles
quoted newlines, skips title rows above the header, and reads XLSX in
streaming mode. Rows stream one at a time, so memory stays flat however
long the file. The header is found by the field names leadflow knows in
English and Chinese (the normalize stage's aliases); a mapping file can
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
import uuid
import zipfile
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from leadflow import stages
from leadflow.errors import BadRecordError
from leadflow.ids import stable_id
from leadflow.settings import LimitsSettings
from schemas import RawLead
from streams.normalize import FIELD_ALIASES, fold_field_name

STAGE = stages.TRADESHOW_UPLOAD
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
