"""Reading badge-scanner exports: encodings, delimiters, title rows, XLSX, limits."""

from __future__ import annotations

import io
import re
import time
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from openpyxl import Workbook
from openpyxl.styles import Font

from ingest_adapters import tradeshow
from ingest_adapters.tradeshow import Row, detect_encoding, envelope, read_rows
from leadflow.errors import BadRecordError
from leadflow.settings import LimitsSettings

CHINESE = "姓名,手机,邮箱,公司\n王小明,13800138000,wang@example.cn,示例科技有限公司\n"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def cells(path: Path) -> list[dict[str, str]]:
    return [row.cells for row in read_rows(path)]


@pytest.mark.parametrize(
    ("encoding", "prefix"),
    [
        ("utf-8", b""),
        ("utf-8", b"\xef\xbb\xbf"),
        ("gb18030", b""),
        ("gbk", b""),
    ],
)
def test_chinese_excel_exports(tmp_path: Path, encoding: str, prefix: bytes) -> None:
    path = write(tmp_path, "scan.csv", prefix + CHINESE.encode(encoding))
    assert cells(path) == [
        {
            "姓名": "王小明",
            "手机": "13800138000",
            "邮箱": "wang@example.cn",
            "公司": "示例科技有限公司",
        }
    ]


def test_utf16_tab_separated_unicode_text(tmp_path: Path) -> None:
    text = CHINESE.replace(",", "\t")
    path = write(tmp_path, "scan.txt", text.encode("utf-16"))
    assert detect_encoding(path.read_bytes()[:100]) == "utf-16"
    assert cells(path)[0]["手机"] == "13800138000"


def test_title_rows_quoted_newlines_semicolons_and_blank_rows(tmp_path: Path) -> None:
    data = (
        "SaaStr 2026 — badge scans;;;\n"
        "exported 2026-03-02;;;\n"
        "First Name;Last Name;E-mail;Notes\n"
        'Ada;Lovelace;ada@example.com;"wants a demo\nnext week"\n'
        ";;;\n"
        "Grace;Hopper;grace@example.com;\n"
    )
    rows = list(read_rows(write(tmp_path, "scan.csv", data.encode())))
    assert [r.number for r in rows] == [4, 5, 6]  # header at line 3; a quoted newline inside 4
    assert rows[0].cells["Notes"] == "wants a demo\nnext week"
    assert rows[1].cells == {}  # an empty row, counted as such
    assert rows[2].cells["First Name"] == "Grace"


def test_ragged_rows_are_marked(tmp_path: Path) -> None:
    data = b"name,email\nAda,ada@example.com,extra\nGrace,grace@example.com\n"
    rows = list(read_rows(write(tmp_path, "scan.csv", data)))
    assert rows[0].problem is not None
    assert rows[0].problem.reason == "ragged_row"
    assert "3 cells" in rows[0].problem.message
    assert rows[0].cells == {"name": "Ada", "email": "ada@example.com", "column 3": "extra"}
    assert rows[1].cells == {"name": "Grace", "email": "grace@example.com"}
    assert rows[1].problem is None


def test_a_mapping_renames_columns(tmp_path: Path) -> None:
    data = b"Badge Holder,Work Mail,Org\nAda,ada@example.com,Fabrikam\n"
    path = write(tmp_path, "scan.csv", data)
    with pytest.raises(BadRecordError, match="no header"):
        list(read_rows(path))
    mapping = {"Badge Holder": "name", "Work Mail": "email", "Org": "company"}
    assert next(iter(read_rows(path, mapping))).cells == {
        "name": "Ada",
        "email": "ada@example.com",
        "company": "Fabrikam",
    }


def test_mixed_encodings_are_refused(tmp_path: Path) -> None:
    head = ("name,email\n" + "Ada,ada@example.com\n" * 5000).encode()
    path = write(tmp_path, "scan.csv", head + "王,w@example.cn\n".encode("gb18030"))
    with pytest.raises(BadRecordError) as caught:
        list(read_rows(path))
    assert caught.value.reason == "invalid_encoding"


def test_xlsx_streams_and_turns_float_phones_back_into_digits(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    sheet.append(["Leads from CIIE"])
    sheet.append(["姓名", "手机", "公司"])
    sheet.append(["王小明", 13800138000.0, "示例科技"])
    path = tmp_path / "scan.xlsx"
    book.save(path)
    assert cells(path) == [{"姓名": "王小明", "手机": "13800138000", "公司": "示例科技"}]


def test_zip_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = Workbook()
    book.active.append(["name", "email"])
    path = tmp_path / "big.xlsx"
    book.save(path)
    monkeypatch.setattr(tradeshow, "MAX_XLSX_BYTES", 100)
    with pytest.raises(BadRecordError, match="unpacks to"):
        list(read_rows(path))


def test_the_same_row_is_the_same_event() -> None:
    row = Row(7, {"name": "Ada", "email": "ada@example.com"})
    again = Row(99, {"email": "ada@example.com", "name": "Ada"})
    assert envelope(row, "CIIE", "a.csv").event_id == envelope(again, "CIIE", "b.csv").event_id
    assert envelope(row, "CIIE", "a.csv").event_id != envelope(row, "SaaStr", "a.csv").event_id
    raw = envelope(row, "CIIE", "a.csv")
    assert (raw.channel, raw.fields["event"], raw.context["row"]) == ("tradeshow", "CIIE", "7")


def styled_rows_xlsx(rows: int, *, column: str = "A", dimension: str | None = None) -> bytes:
    """A workbook: a header, one lead, then `rows` rows that hold only a cell style in
    `column` (what a sheet keeps after someone formats whole rows); its declared
    dimension covers them unless `dimension` says otherwise."""
    book = Workbook()
    sheet = book.active
    sheet.append(["name", "email", "company"])
    sheet.append(["Ada", "ada@example.com", "Fabrikam"])
    sheet["A3"].font = Font(bold=True)
    template = io.BytesIO()
    book.save(template)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(template) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                text = data.decode()
                found = re.search(r'<c r="A3" s="(\d+)"', text)
                assert found is not None, text
                filler = "".join(
                    f'<row r="{n}"><c r="{column}{n}" s="{found.group(1)}"/></row>'
                    for n in range(3, rows + 3)
                )
                text = re.sub(r'<row r="3">.*?</row>', filler, text, flags=re.S)
                ref = dimension or f"A1:C{rows + 2}"
                text = re.sub(r'<dimension ref="[^"]*"', f'<dimension ref="{ref}"', text)
                data = text.encode()
            target.writestr(info, data)
    return out.getvalue()


def test_formatted_empty_rows_stream_lazily(tmp_path: Path) -> None:
    path = write(tmp_path, "scan.xlsx", styled_rows_xlsx(200_000))
    rows = read_rows(path)
    first = next(rows)
    assert first.cells == {"name": "Ada", "email": "ada@example.com", "company": "Fabrikam"}
    started = time.monotonic()
    assert all(next(rows).cells == {} for _ in range(10_000))
    rows.close()
    assert time.monotonic() - started < 5  # the other 190,000 are never read


def test_a_lying_dimension_and_a_cell_in_column_xfd_cost_nothing(tmp_path: Path) -> None:
    # Before: every row came 16,384 cells wide (the dimension's), a minute for these.
    data = styled_rows_xlsx(20_000, column="XFD", dimension="A1:XFD1048576")
    started = time.monotonic()
    rows = list(read_rows(write(tmp_path, "wide.xlsx", data)))
    assert time.monotonic() - started < 5
    assert len(rows) == 20_001
    assert rows[0].cells["name"] == "Ada"
    assert all(row.cells == {} and row.problem is None for row in rows[1:])


def test_a_cell_past_the_limit_rejects_its_row_not_the_file(tmp_path: Path) -> None:
    # 200 KiB: past the csv module's default bound (128 KiB), which used to end in a 500.
    data = f"name,email,notes\nAda,ada@example.com,{'x' * 200_000}\nGrace,g@example.com,hi\n"
    rows = list(read_rows(write(tmp_path, "scan.csv", data.encode())))
    assert rows[0].problem is not None
    assert rows[0].problem.reason == "cell_too_large"
    assert rows[0].problem.fields == {"notes": "longer than 32,767 characters"}
    assert "200,000 characters" in rows[0].problem.message
    assert rows[1].cells == {"name": "Grace", "email": "g@example.com", "notes": "hi"}
    small = LimitsSettings(upload_max_cell_chars=5)
    rows = list(
        read_rows(write(tmp_path, "small.csv", b"name,email\nAda,a@example.com\n"), None, small)
    )
    assert rows[0].problem is not None
    assert rows[0].problem.reason == "cell_too_large"


def test_a_field_past_the_csv_bound_refuses_the_file_with_its_row(tmp_path: Path) -> None:
    data = f"name,email,notes\nAda,a@example.com,x\nBo,b@example.com,{'y' * (2 << 20)}\n"
    with pytest.raises(BadRecordError) as caught:
        list(read_rows(write(tmp_path, "scan.csv", data.encode())))
    assert caught.value.reason == "cell_too_large"
    assert "row 3" in caught.value.message


def test_an_unbalanced_quote_is_invalid_csv_with_its_row(tmp_path: Path) -> None:
    data = b'name,email,notes\nAda,a@example.com,fine\nBo,b@example.com,"never closed\nCy,c@x.cn,\n'
    rows = read_rows(write(tmp_path, "scan.csv", data))
    assert next(rows).cells["name"] == "Ada"
    with pytest.raises(BadRecordError) as caught:
        next(rows)
    assert caught.value.reason == "invalid_csv"
    assert "row 3" in caught.value.message


@pytest.mark.parametrize(
    "members",
    [
        {"hello.txt": b"not a workbook"},
        {"[Content_Types].xml": b"<Types/>"},
        {"[Content_Types].xml": b"<<<", "xl/workbook.xml": b"<<<"},
    ],
)
def test_a_zip_that_is_not_a_workbook_is_invalid_xlsx(
    tmp_path: Path, members: dict[str, bytes]
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(BadRecordError) as caught:
        list(read_rows(write(tmp_path, "scan.xlsx", buffer.getvalue())))
    assert caught.value.reason == "invalid_xlsx"


def test_a_header_past_the_column_limit_is_refused(tmp_path: Path) -> None:
    header = ["name", "email", *(f"c{i}" for i in range(300))]
    csv_path = write(tmp_path, "wide.csv", (",".join(header) + "\nAda,a@example.com\n").encode())
    book = Workbook()
    book.active.append(header)
    xlsx_path = tmp_path / "wide.xlsx"
    book.save(xlsx_path)
    for path in (csv_path, xlsx_path):
        with pytest.raises(BadRecordError) as caught:
            list(read_rows(path))
        assert caught.value.reason == "too_many_columns", path
    # Trailing empty header cells are not columns.
    padded = write(tmp_path, "padded.csv", ("name,email" + "," * 400 + "\nAda,a@x.cn\n").encode())
    assert [row.cells for row in read_rows(padded)] == [{"name": "Ada", "email": "a@x.cn"}]


def test_a_line_of_millions_of_tiny_fields_is_refused_before_it_is_split(
    tmp_path: Path,
) -> None:
    line = "ab," * (tradeshow.CSV_LINE_LIMIT // 3 + 1)
    path = write(tmp_path, "scan.csv", f"name,email\nAda,a@x.cn\n{line}\n".encode())
    rows = read_rows(path)
    assert next(rows).cells == {"name": "Ada", "email": "a@x.cn"}
    with pytest.raises(BadRecordError) as caught:
        next(rows)
    assert caught.value.reason == "row_too_large"
    assert "line 3" in caught.value.message


# --- scan times, row checks, neutralised cells ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-02T09:15:00+08:00", datetime(2026, 3, 2, 1, 15, tzinfo=UTC)),
        ("2026-03-02T09:15:00Z", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),
        ("2026-03-02T09:15:00", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),  # an Excel date cell
        ("2026-03-02 09:15", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),
        ("2026/3/2 9:15", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),
        ("2026/03/02 09:15:30", datetime(2026, 3, 2, 9, 15, 30, tzinfo=UTC)),
        ("2026年3月2日 9:15", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),
        ("03/02/2026 09:15 AM", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),  # US: month first
        ("03/02/2026 09:15 pm", datetime(2026, 3, 2, 21, 15, tzinfo=UTC)),
        ("13/02/2026 09:15", datetime(2026, 2, 13, 9, 15, tzinfo=UTC)),  # past 12: day first
        ("02.03.2026 09:15", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),  # German: day first
        ("2026-03-02", datetime(2026, 3, 2, tzinfo=UTC)),
        ("46083.38", datetime(2026, 3, 2, 9, 7, 12, tzinfo=UTC)),  # an Excel serial
        ("46083", datetime(2026, 3, 2, tzinfo=UTC)),
        ("1772442900", datetime(2026, 3, 2, 9, 15, tzinfo=UTC)),  # Unix seconds
    ],
)
def test_scan_times_as_scanners_write_them(value: str, expected: datetime) -> None:
    assert tradeshow.parse_scan_time(value) == expected


def test_a_scan_time_without_an_offset_is_read_in_the_given_zone() -> None:
    shanghai = timezone(timedelta(hours=8))
    moment = tradeshow.parse_scan_time("2026/3/2 9:15", tz=shanghai)
    assert moment == datetime(2026, 3, 2, 1, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("soon", "not a date and time"),
        ("32/13/2026", "not a date and time"),
        ("", "not a date and time"),
        ("1999-12-31 23:00", "LIMITS_EARLIEST_TIME"),
        ((datetime.now(UTC) + timedelta(days=3)).isoformat(), "LIMITS_FUTURE_SKEW_S"),
    ],
)
def test_bad_scan_times_say_the_rule(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        tradeshow.parse_scan_time(value)


def check(cells: dict[str, str], number: int = 7) -> tradeshow.Checked:
    return tradeshow.check_row(Row(number, cells), "CIIE", "scans.csv", default_region="CN")


def test_a_formula_looking_note_is_kept_verbatim_on_a_good_lead() -> None:
    note = '=HYPERLINK("http://evil.example","点我")'
    checked = check({"姓名": "王小明", "手机": "13800138000", "邮箱": "w@example.cn", "备注": note})
    assert checked.rejection is None
    assert checked.warnings == []
    assert checked.raw is not None
    assert checked.raw.fields["备注"] == note


def test_the_scan_time_becomes_occurred_at() -> None:
    checked = check({"Name": "Ada", "Email": "ada@example.com", "Scan Time": "2026/3/2 9:15"})
    assert checked.raw is not None
    assert checked.raw.occurred_at == datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
    assert checked.raw.fields["Scan Time"] == "2026/3/2 9:15"  # kept as written too


def test_a_bad_scan_time_falls_back_to_the_arrival_time_with_a_warning() -> None:
    received = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    checked = tradeshow.check_row(
        Row(9, {"Name": "Ada", "Email": "ada@example.com", "扫描时间": "昨天上午"}),
        "CIIE",
        "scans.csv",
        default_region="CN",
        received_at=received,
    )
    assert checked.raw is not None
    assert checked.raw.occurred_at is None  # normalization stamps it with the arrival
    [warning] = checked.warnings
    assert warning.reason == "bad_scan_time"
    assert warning.column == "扫描时间"
    for part in ("row 9", "'扫描时间'", "'昨天上午'", "arrival time"):
        assert part in warning.message
    assert warning.message in checked.raw.context["warnings"]


def test_a_bad_email_beside_a_good_phone_is_a_warning_and_left_out() -> None:
    checked = check({"姓名": "李娜", "手机": "13912345678", "邮箱": "li@", "同意": "maybe"})
    assert checked.rejection is None
    assert checked.raw is not None
    assert "邮箱" not in checked.raw.fields
    assert "同意" not in checked.raw.fields
    assert [w.reason for w in checked.warnings] == ["invalid_email", "invalid_consent"]
    assert "row 7, column '邮箱' (email): 'li@'" in checked.warnings[0].message


def test_a_phone_is_judged_by_the_rows_own_country_and_the_message_says_which() -> None:
    unknown = check({"Name": "A", "Phone": "1234", "Country": "XX", "Email": "a@example.com"})
    message = next(w.message for w in unknown.warnings if w.reason == "invalid_phone")
    assert "'1234'" in message
    assert "row 7" in message
    assert "'Phone'" in message
    assert "country 'XX' is unknown" in message
    assert "default region CN" in message
    assert "unknown_country" in [w.reason for w in unknown.warnings]
    assert unknown.raw is not None
    assert unknown.raw.fields["Country"] == "XX"

    us = check({"Name": "A", "Phone": "1234", "Country": "US"})
    assert us.rejection is not None
    assert us.rejection.reason == "invalid_fields"
    assert "country US" in us.rejection.message
    assert "region CN" not in us.rejection.message

    bare = check({"Name": "A", "Phone": "1234"})
    assert bare.rejection is not None
    assert "default region CN (the row has no country)" in bare.rejection.message


def test_a_row_is_rejected_only_without_a_usable_contact() -> None:
    none = check({"姓名": "陈静", "公司": "无联系方式"})
    assert none.rejection is not None
    assert none.rejection.reason == "no_contact"
    both_bad = check({"姓名": "赵敏", "手机": "12", "邮箱": "not-an-email"})
    assert both_bad.rejection is not None
    assert (both_bad.rejection.reason, set(both_bad.rejection.fields)) == (
        "invalid_fields",
        {"email", "phone"},
    )


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_cells_leadflow_writes_are_neutralised_and_read_back(start: str) -> None:
    value = f"{start}1+2"
    written = tradeshow.neutralise_cell(value)
    assert written == f"'{value}"
    assert tradeshow._unneutralised(written) == value
    assert tradeshow.neutralise_cell("王小明") == "王小明"
    assert tradeshow._unneutralised("'quoted'") == "'quoted'"


def test_an_error_file_uploaded_again_reads_its_cells_as_they_were(tmp_path: Path) -> None:
    data = "姓名,手机,备注\n王小明,'+86 138 0013 8000,'=HYPERLINK(\"x\")\n".encode()
    [row] = cells(write(tmp_path, "errors.csv", data))
    assert row == {"姓名": "王小明", "手机": "+86 138 0013 8000", "备注": '=HYPERLINK("x")'}


@pytest.mark.parametrize(
    ("name", "offset"),
    [
        ("Asia/Shanghai", timedelta(hours=8)),
        ("UTC", timedelta(0)),
        ("+08:00", timedelta(hours=8)),
        ("UTC+8", timedelta(hours=8)),
        ("-0530", timedelta(hours=-5, minutes=-30)),
        ("Europe/Berlin", timedelta(hours=1)),  # March 2: winter time
    ],
)
def test_the_zone_of_scan_times_without_an_offset(name: str, offset: timedelta) -> None:
    zone = tradeshow.parse_timezone(name)
    assert datetime(2026, 3, 2, 9, 15, tzinfo=zone).utcoffset() == offset


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "+25:00", "", "x" * 300])
def test_an_unknown_zone_is_refused(name: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        tradeshow.parse_timezone(name)
    assert caught.value.reason == "invalid_timezone"


def test_a_row_is_read_in_the_uploads_zone() -> None:
    checked = tradeshow.check_row(
        Row(3, {"姓名": "王小明", "手机": "13800138000", "扫描时间": "2026/3/2 9:15"}),
        "CIIE",
        "scans.csv",
        default_region="CN",
        tz=tradeshow.parse_timezone("Asia/Shanghai"),
    )
    assert checked.raw is not None
    assert checked.raw.occurred_at == datetime(2026, 3, 2, 1, 15, tzinfo=UTC)
