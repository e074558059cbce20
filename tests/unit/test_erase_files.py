"""Erasure reaches the upload error files the server keeps, not only Kafka and ClickHouse."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from privacy.erase import Person, scrub_upload_error_files


def _write(path: Path, rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path.write_text(out.getvalue(), "utf-8-sig")  # as the server writes them: Excel reads it


def _read(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text("utf-8-sig"))))


def test_the_persons_rows_go_and_everyone_elses_stay(tmp_path: Path) -> None:
    header = ["姓名", "手机", "邮箱", "备注", "reason"]
    mixed = tmp_path / "a1.errors.csv"
    _write(
        mixed,
        [
            header,
            ["王小明", "138 0013 8000", "", '\'=HYPERLINK("x")', "bad_scan_time"],
            ["Ada", "", "ada@example.com", "Wants pricing\nfor 200 seats", "invalid_phone"],
            ["Grace", "", "GRACE@example.net", "", "no_contact"],
        ],
    )
    only_them = tmp_path / "b2.errors.csv"
    _write(only_them, [header, ["王小明", "+86 138-0013-8000", "", "", "invalid_email"]])
    unrelated = tmp_path / "notes.csv"  # not an error file: never touched
    _write(unrelated, [["phone"], ["13800138000"]])
    person = Person(emails={"grace@example.net"}, phones={"+8613800138000"})

    assert scrub_upload_error_files(tmp_path, person.needles(), dry_run=True) == 3
    assert len(_read(mixed)) == 4  # a dry run changes nothing
    assert only_them.exists()

    assert scrub_upload_error_files(tmp_path, person.needles()) == 3
    assert _read(mixed) == [
        header,
        ["Ada", "", "ada@example.com", "Wants pricing\nfor 200 seats", "invalid_phone"],
    ]
    assert not only_them.exists()  # nothing left in it but the header
    assert _read(unrelated) == [["phone"], ["13800138000"]]
    assert scrub_upload_error_files(tmp_path, person.needles()) == 0
