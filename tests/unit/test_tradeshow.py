"""Reading badge-scanner exports: encodings, delimiters, title rows, XLSX, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import Workbook

from ingest_adapters import tradeshow
from ingest_adapters.tradeshow import Row, detect_encoding, envelope, read_rows
from leadflow.errors import BadRecordError

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
    assert rows[0].cells == {"__ragged__": "3"}
    assert rows[1].cells == {"name": "Grace", "email": "grace@example.com"}


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
