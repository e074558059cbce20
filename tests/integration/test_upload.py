"""`leadflow upload` against the running stack: rows to leads, bad rows to dead letters, once."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

from leadflow.normalize import normalized_with
from schemas import DeadLetter, RawLead
from tests.integration.processes import Stack, read_topic


def upload(stack: Stack, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadflow", "upload", str(path), "--event", "CIIE 2026", *extra],
        env={**stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


async def test_upload_publishes_rows_dead_letters_bad_ones_and_only_once(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "ciie-scans.csv"
    path.write_bytes(
        (
            "CIIE 2026 展商名片扫描导出\n"
            "姓名,手机,邮箱,公司,职位\n"
            "王小明,138 0013 8000,wang@example.cn,示例科技有限公司,销售总监\n"
            "李娜,0086 139 1234 5678,li.na@example.org,Fabrikam,经理\n"
            "王小明,138 0013 8000,wang@example.cn,示例科技有限公司,销售总监\n"
            ",,,,\n"
            "赵敏,12,not-an-email,东方零售,\n"
        ).encode("gb18030")
    )
    first = await asyncio.to_thread(upload, stack, path)
    assert first.returncode == 0, first.stdout + first.stderr
    for line in (
        "rows read",
        "leads published",
        "duplicate rows in the file",
        "rejected: invalid_fields",
    ):
        assert line in first.stdout
    assert re.search(r"leads published\s+│\s+2 │", first.stdout), first.stdout
    assert re.search(r"duplicate rows in the file\s+│\s+1 │", first.stdout)

    leads = stack.wait_for_leads(2)
    assert {lead["first_touch_source"] for lead in leads} == {"ciie 2026"}
    assert {lead["phone"] for lead in leads} == {"+8613800138000", "+8613912345678"}
    [letter_message] = await read_topic(stack.bootstrap, stack.topics.dlq("tradeshow_upload"), 1)
    letter = DeadLetter.model_validate_json(letter_message.value or b"")
    assert letter.source_detail == "ciie-scans.csv: row 7"
    assert {p.field for p in letter.problems} == {"email", "phone"}

    again = await asyncio.to_thread(upload, stack, path)
    assert again.returncode == 0
    assert "already uploaded at" in again.stdout
    raw = await read_topic(stack.bootstrap, stack.topics.leads_raw, 2, timeout_s=3)
    assert len(raw) == 2  # nothing new published
    # Normalized once, by the upload: the stream takes each envelope's lead as it is.
    envelopes = [RawLead.model_validate_json(m.value or b"") for m in raw]
    assert {e.normalized.phone for e in envelopes if e.normalized} == {
        "+8613800138000",
        "+8613912345678",
    }
    assert {e.normalized_with for e in envelopes} == {normalized_with("CN")}

    unreadable = tmp_path / "notes.csv"
    unreadable.write_text("just,some\nwords,here\n")
    refused = await asyncio.to_thread(upload, stack, unreadable)
    assert refused.returncode == 2
    assert "no header row" in refused.stdout


async def test_notes_scan_times_and_warnings_reach_the_lead(stack: Stack, tmp_path: Path) -> None:
    """What a badge export says about a person is on the lead in ClickHouse: the note (line
    breaks and a formula kept verbatim), the scan time as the touch's time, and why a cell
    was left out."""
    path = tmp_path / "expo-scans.csv"
    hyperlink = '=HYPERLINK("http://example.com/deck","点我")'
    quoted = hyperlink.replace('"', '""')  # as CSV writes a quote inside a quoted cell
    path.write_bytes(
        (
            "\ufeffName,Email,Phone,Company,Notes,Scan Time\r\n"
            'Ada Lovelace,ada@example.com,+44 20 7946 0001,Analytical,"Wants pricing\r\n'
            'for 200 seats",2026-03-02 09:15\r\n'
            f'Grace Hopper,not-an-email,+44 20 7946 0002,Navy,"{quoted}",not a date\r\n'
        ).encode()
    )
    done = await asyncio.to_thread(upload, stack, path, "--timezone", "UTC")
    assert done.returncode == 0, done.stdout + done.stderr
    ada_rows = stack.wait_for_leads(1, email="ada@example.com")
    [ada] = ada_rows
    assert [(n["source"], n["text"]) for n in ada["notes"]] == [
        ("tradeshow/tradeshow_upload", "Wants pricing\nfor 200 seats")
    ]
    assert ada["notes"][0]["at"].startswith("2026-03-02T09:15:00")
    assert ada["stage"] in {"new", "assigned"}  # routing may not have answered yet
    status, why = stack.http("GET", f"/v1/leads/{ada['lead_id']}/explain")
    assert status == 200, why
    assert why["touches"][0]["at"].startswith("2026-03-02T09:15:00")  # the scan, not the upload
    assert why["notes"] == ada["notes"]
    assert why["stage"]["stage"] in {"new", "assigned"}

    [grace] = stack.wait_for_leads(1, phone="+442079460002")
    assert [n["text"] for n in grace["notes"]] == [hyperlink]  # text, never evaluated
    joined = " ".join(grace["warnings"])
    assert "'not-an-email'" in joined, grace["warnings"]
    assert "'not a date'" in joined, grace["warnings"]


def test_upload_bench_reports_figures(tmp_path: Path) -> None:
    out = tmp_path / "upload.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leadflow",
            "bench",
            "upload",
            "--rows",
            "500",
            "--out",
            str(tmp_path / "queries.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["file_rows"] == 502  # a title row and the header above 500 data rows
    assert report["upload_rows_per_s"] > 0
    assert report["upload_peak_rss_mb"] > 0
    # 50 repeats; the 10 with a bad email beside a good phone are leads, with a warning
    assert re.search(r"leads published\s+│\s+450 │", report["summary"])
    assert re.search(r"warned: invalid_email\s+│\s+10 │", report["summary"])
