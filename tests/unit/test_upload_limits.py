"""The CPU side of an upload and its bounds, without Kafka: what the reading thread hands
the event loop, the summary, the mapping part and the client's file name."""

from __future__ import annotations

import base64
import csv
import json
import os
import time
from pathlib import Path

import pytest
from rich.console import Console

from ingest_adapters.upload import (
    CHUNK_ROWS,
    LETTER_BODY_MAX,
    RowProblem,
    Summary,
    _Reading,
    parse_mapping,
    problems_table,
    summary_table,
)
from ingest_adapters.upload_http import client_file_name, prune_error_files
from leadflow.errors import BadRecordError
from leadflow.settings import LimitsSettings
from schemas import DeadLetter
from tests.unit.test_tradeshow import styled_rows_xlsx

HEADER = "姓名,手机,邮箱,公司\n"


def reading(path: Path, **limits: int) -> _Reading:
    return _Reading(path, {}, "CIIE", path.name, LimitsSettings(**limits), "CN")


def drain(work: _Reading) -> list[int]:
    """Every chunk's row count until the reading is done (closing it after)."""
    sizes = []
    try:
        while True:
            chunk = work.next_chunk()
            sizes.append(chunk.rows)
            if chunk.error is not None:
                raise chunk.error
            if chunk.done:
                return sizes
    finally:
        work.close()


def test_rows_come_in_chunks_with_their_leads_and_letters(tmp_path: Path) -> None:
    good = "".join(f"访客{n},139{n:08d},v{n}@example.cn,示例\n" for n in range(2500))
    path = tmp_path / "scans.csv"
    path.write_text(HEADER + good + "无名,,,\n", "utf-8")
    work = reading(path)
    first = work.next_chunk()
    assert (first.rows, len(first.leads), first.done) == (CHUNK_ROWS, CHUNK_ROWS, False)
    assert drain(work) == [CHUNK_ROWS, 501]
    assert (work.rows_read, dict(work.rejected)) == (2501, {"no_contact": 1})


def test_a_million_formatted_empty_rows_stop_after_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "formatted.xlsx"
    path.write_bytes(styled_rows_xlsx(1_000_000))
    started = time.monotonic()
    work = reading(path, upload_max_empty_rows=10_000)
    drain(work)
    assert time.monotonic() - started < 10
    assert (work.rows_read, work.empty_rows) == (10_001, 10_000)
    assert (work.stopped, work.stopped_at_row) == ("empty_rows_limit", 10_002)


def test_empty_rows_between_leads_do_not_add_up(tmp_path: Path) -> None:
    rows = "".join(f"访客{n},139{n:08d},,\n" + ",,,\n" * 3 for n in range(10))
    path = tmp_path / "gaps.csv"
    path.write_text(HEADER + rows, "utf-8")
    work = reading(path, upload_max_empty_rows=4)
    drain(work)
    assert (work.empty_rows, work.stopped) == (30, None)


def test_more_rows_than_the_limit_stop_with_the_rows_before_handed_over(tmp_path: Path) -> None:
    rows = "".join(f"访客{n},139{n:08d},,\n" for n in range(30))
    path = tmp_path / "many.csv"
    path.write_text(HEADER + rows, "utf-8")
    work = reading(path, upload_max_rows=20)
    chunk = work.next_chunk()
    work.close()
    assert chunk.error is not None
    assert chunk.error.reason == "too_many_rows"
    assert (chunk.done, len(chunk.leads)) == (True, 20)  # sent before the refusal


def test_a_huge_note_on_a_good_row_is_left_out_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(HEADER.strip() + ",备注\n王小明,13800138000,,示例," + "注" * 500_000 + "\n")
    work = reading(path)
    chunk = work.next_chunk()
    work.close()
    assert (len(chunk.leads), chunk.letters) == (1, [])
    lead = json.loads(chunk.leads[0][1])
    assert "备注" not in lead["fields"]
    assert "500,000 characters" in lead["context"]["warnings"]
    assert (dict(work.warned), work.problem_rows) == ({"cell_too_large": 1}, 1)


def test_a_rejected_rows_letter_keeps_at_most_64_kib(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(HEADER.strip() + ",备注\n王小明,,,示例," + "注" * 500_000 + "\n")
    work = reading(path)
    chunk = work.next_chunk()
    work.close()
    [(_, value)] = chunk.letters
    letter = DeadLetter.model_validate_json(value)
    assert letter.reason == "no_contact"
    body = base64.b64decode(letter.original_b64)
    assert len(body) <= LETTER_BODY_MAX
    assert json.loads(body)["姓名"] == "王小明"


def test_the_summary_says_why_reading_stopped() -> None:
    summary = Summary(file="f.xlsx", event="CIIE", digest="0" * 64, rows_read=10_001)
    summary.stopped, summary.stopped_at_row = "empty_rows_limit", 10_002
    console = Console(width=120, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "stopped reading: empty_rows_limit" in text
    assert "at row 10,002" in text


@pytest.mark.parametrize(
    "text", ["Badge Holder: [name", "- a\n- list\n", "[" * 2000, "a: [1, 2]\n", "{a: {b: c}}"]
)
def test_a_mapping_must_be_yaml_column_field_pairs(text: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        parse_mapping(text)
    assert caught.value.reason == "invalid_mapping"


def test_the_client_file_name_is_text_and_only_a_plain_suffix_reaches_the_disk() -> None:
    long = "展会" + "x" * 300 + ".XLSX"
    assert client_file_name(long) == (long[:255], ".xlsx")
    assert client_file_name("../../etc/passwd.csv") == ("passwd.csv", ".csv")
    assert client_file_name("a\x00b\r\n.csv") == ("ab.csv", ".csv")
    assert client_file_name("scans.c$v") == ("scans.c$v", "")
    assert client_file_name(None) == ("upload.csv", "")


def test_rejected_and_warned_rows_are_listed_and_written_as_an_error_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scans.csv"
    path.write_text(
        "姓名,手机,邮箱,备注,扫描时间\n"
        '王小明,13800138000,w@example.cn,"=HYPERLINK(""http://x"",""点我"")",2026/3/2 9:15\n'
        "李娜,13912345678,li@,-看演示,昨天\n"  # warned: a bad email and scan time
        "陈静,,,+1 无联系方式,\n"  # rejected: no contact
        + "".join(f"访客{n},,,,\n" for n in range(30)),
        "utf-8",
    )
    work = reading(path)
    drain(work)
    assert (work.problem_rows, len(work.problems)) == (32, 20)
    first, second = work.problems[:2]
    assert (first.row, first.outcome, first.reasons) == (
        3,
        "warned",
        ["invalid_email", "bad_scan_time"],
    )
    assert (second.row, second.outcome, second.reasons) == (4, "rejected", ["no_contact"])
    assert dict(work.warned) == {"invalid_email": 1, "bad_scan_time": 1}
    out = tmp_path / "errors.csv"
    work = reading(path)
    drain_open = work.next_chunk()
    assert drain_open.done
    assert work.write_errors(out) == 32
    work.close()
    with out.open(encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["姓名", "手机", "邮箱", "备注", "扫描时间", "reason"]
    assert rows[1][:5] == ["李娜", "13912345678", "li@", "'-看演示", "昨天"]
    assert rows[1][5].startswith("warned (invalid_email, bad_scan_time): row 3, column '邮箱'")
    assert rows[2][3] == "'+1 无联系方式"
    assert rows[2][5].startswith("rejected (no_contact): row 4")
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


def test_the_summary_table_counts_warnings_and_the_problems_table_lists_rows() -> None:
    summary = Summary(file="f.csv", event="CIIE", digest="0" * 64, rows_read=3)
    summary.warned = {"bad_scan_time": 1}
    summary.problems = [RowProblem(5, "warned", ["bad_scan_time"], "row 5, column 'Scan Time'")]
    summary.problem_rows = 1
    console = Console(width=160, record=True)
    console.print(summary_table(summary))
    table = problems_table(summary)
    assert table is not None
    console.print(table)
    text = console.export_text()
    assert "warned: bad_scan_time" in text
    assert "row 5, column 'Scan Time'" in text
    assert problems_table(Summary(file="f.csv", event="CIIE", digest="0" * 64)) is None


def test_error_files_are_kept_for_a_bounded_time_and_count(tmp_path: Path) -> None:
    now = time.time()
    for n in range(5):
        path = tmp_path / f"{n:032x}.errors.csv"
        path.write_text("reason\n")
        os.utime(path, (now - n * 60, now - n * 60))  # 0 is the newest
    old = tmp_path / f"{99:032x}.errors.csv"
    old.write_text("reason\n")
    os.utime(old, (now - 8 * 86400, now - 8 * 86400))
    upload_in_progress = tmp_path / "0123abcd.csv"
    upload_in_progress.write_text("姓名\n")
    assert prune_error_files(tmp_path, keep=3) == 3
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == [f"{n:032x}.errors.csv" for n in range(3)] + ["0123abcd.csv"]
