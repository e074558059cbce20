"""Real-shaped exports on the real broker: a Chinese Excel export in GB18030 and an
English UTF-8-BOM export with quoted newlines and a formula-looking note.

A row is rejected only when it cannot be a lead; a formula-looking note is text on a
lead; a bad scan time is a warning; the summary lists the rows, and the error file
(the original columns and a `reason`, formula-looking cells neutralised) is written by
`leadflow upload --errors-out` and kept under the data dir for the HTTP upload.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from leadflow.kafka_clients import ensure_topics
from leadflow.settings import AuthSettings, HttpSettings, KafkaSettings, Settings
from leadflow.topics import Topics
from schemas import DeadLetter, RawLead
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for
from tests.keys import ENTRIES, KEYS, bearer

UPLOADER = bearer(KEYS["upload"])
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HYPERLINK = '=HYPERLINK("http://evil.example/x","点我")'
HYPERLINK_CSV = '"=HYPERLINK(""http://evil.example/x"",""点我"")"'  # the cell as CSV quotes it

# A Chinese Excel badge export: GB18030, a title row, Chinese headers, 2026/3/2 9:15 scan times.
CHINESE = (
    "CIIE 2026 展商名片扫描导出\r\n"
    "姓名,手机,邮箱,公司,备注,扫描时间\r\n"
    "王小明,138 0013 8000,wang@example.cn,示例科技有限公司,对CRM感兴趣，想看演示,2026/3/2 9:15\r\n"
    f"李娜,13912345678,li.na@example.org,Fabrikam,{HYPERLINK_CSV},2026/3/2 10:40\r\n"
    "赵敏,13700137000,,东方零售,,昨天上午\r\n"  # a scan time no scanner format matches
    "陈静,,,无联系方式有限公司,+只留了名片,2026/3/2 11:00\r\n"  # no contact at all
).encode("gb18030")

# An English export: UTF-8 with BOM, a note with a quoted newline, a formula-looking note.
ENGLISH = (
    "\ufeffName,Email,Phone,Company,Country,Notes,Scan Time\r\n"
    'Ada Lovelace,ada@example.com,,Analytical Ltd,GB,"Wants pricing\nfor 200 seats",'
    "03/02/2026 09:15 AM\r\n"
    f"Grace Hopper,grace@example.com,,Navy,US,{HYPERLINK_CSV},"
    "2026-03-02T10:00:00Z\r\n"
    "Alan Turing,,1234,Bletchley,XX,-call back,02.03.2026 11:30\r\n"  # phone bad for XX
    "Joan Clarke,joan@,+44 20 7946 0958,Hut 8,GB,,46083.5\r\n"  # bad email, good phone
).encode()


def errors_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as stream:
        return list(csv.reader(stream))


def assert_neutralised(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), cell


@pytest.fixture
async def uploads(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[TestClient]:
    settings = Settings(
        LEADFLOW_DATA_DIR=tmp_path,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_upload_bytes=1024 * 1024),
        auth=AuthSettings(keys=ENTRIES),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


async def post(
    client: TestClient, body: bytes, name: str, timezone: str | None = None
) -> tuple[int, dict[str, Any]]:
    form = FormData()
    form.add_field("event", "CIIE 2026")
    if timezone is not None:
        form.add_field("timezone", timezone)
    form.add_field("file", io.BytesIO(body), filename=name)
    answer = await client.post("/v1/uploads/tradeshow", data=form, headers=UPLOADER)
    return answer.status, await answer.json()


async def test_a_chinese_gb18030_export_keeps_its_formula_note_and_lists_its_problems(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    # The scanners at CIIE wrote Shanghai time, without an offset.
    status, summary = await post(uploads, CHINESE, "ciie-scans.csv", "Asia/Shanghai")
    assert status == 200, summary
    assert (summary["rows_read"], summary["published"]) == (4, 3)
    assert summary["rejected"] == {"no_contact": 1}
    assert summary["warned"] == {"bad_scan_time": 1}
    assert [(p["row"], p["outcome"], p["reasons"]) for p in summary["problems"]] == [
        (5, "warned", ["bad_scan_time"]),
        (6, "rejected", ["no_contact"]),
    ]
    assert "row 5, column '扫描时间'" in summary["problems"][0]["message"]
    assert "'昨天上午'" in summary["problems"][0]["message"]

    leads = {
        lead.fields["姓名"]: lead
        for lead in (
            RawLead.model_validate_json(m.value or b"")
            for m in await read_topic(kafka_bootstrap, topics.leads_raw, 3)
        )
    }
    assert set(leads) == {"王小明", "李娜", "赵敏"}
    assert leads["李娜"].fields["备注"] == HYPERLINK  # kept verbatim, never evaluated
    assert leads["王小明"].fields["备注"] == "对CRM感兴趣，想看演示"
    assert leads["王小明"].occurred_at == datetime(2026, 3, 2, 1, 15, tzinfo=UTC)
    zhao = leads["赵敏"]
    assert zhao.occurred_at is None  # normalization stamps it with the arrival time
    assert "bad_scan_time" not in zhao.context["warnings"]
    assert "'昨天上午'" in zhao.context["warnings"]
    [letter] = await read_topic(kafka_bootstrap, topics.dlq("tradeshow_upload"), 1)
    dead = DeadLetter.model_validate_json(letter.value or b"")
    assert (dead.reason, dead.source_detail) == ("no_contact", "ciie-scans.csv: row 6")

    # The error file: kept under the data dir's uploads/, original columns and a reason.
    assert summary["errors_url"] == f"/v1/uploads/{summary['upload_id']}/errors.csv"
    rows = errors_rows(tmp_path / "uploads" / f"{summary['upload_id']}.errors.csv")
    assert rows[0] == ["姓名", "手机", "邮箱", "公司", "备注", "扫描时间", "reason"]
    assert rows[1][:6] == ["赵敏", "13700137000", "", "东方零售", "", "昨天上午"]
    assert rows[1][6].startswith("warned (bad_scan_time): row 5, column '扫描时间'")
    assert rows[2][:6] == ["陈静", "", "", "无联系方式有限公司", "'+只留了名片", "2026/3/2 11:00"]
    assert rows[2][6].startswith("rejected (no_contact): row 6")
    assert len(rows) == 3
    assert_neutralised(rows)

    # … and served to the uploader, byte for byte.
    got = await uploads.get(summary["errors_url"], headers=UPLOADER)
    assert got.status == 200, await got.text()
    assert got.content_type == "text/csv"
    served = await got.read()
    assert served == (tmp_path / "uploads" / f"{summary['upload_id']}.errors.csv").read_bytes()
    assert list(csv.reader(io.StringIO(served.decode("utf-8-sig")))) == rows
    for missing in ("0" * 32, "not-an-id", "../../etc"):
        answer = await uploads.get(f"/v1/uploads/{missing}/errors.csv", headers=UPLOADER)
        assert answer.status == 404, missing


def cli_upload(
    path: Path, errors_out: Path, bootstrap: str, topic_prefix: str, data_dir: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "LEADFLOW_DATA_DIR": str(data_dir),
        "COLUMNS": "240",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "leadflow",
            "upload",
            str(path),
            "--event",
            "SaaStr 2026",
            "--errors-out",
            str(errors_out),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


async def test_an_english_bom_export_over_the_cli_writes_a_neutralised_error_file(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "saastr.csv"
    path.write_bytes(ENGLISH)
    assert ENGLISH.startswith(b"\xef\xbb\xbf")  # the BOM Excel writes
    errors_out = tmp_path / "out" / "saastr-errors.csv"
    done = await asyncio.to_thread(
        cli_upload, path, errors_out, kafka_bootstrap, topic_prefix, tmp_path / "data"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "warned: invalid_email" in out
    assert "rejected: invalid_fields" in out
    assert "rejected or warned rows" in out
    assert f"2 rejected or warned rows written to {errors_out}" in " ".join(out.split())

    leads = {
        lead.fields["Name"]: lead
        for lead in (
            RawLead.model_validate_json(m.value or b"")
            for m in await read_topic(kafka_bootstrap, Topics(topic_prefix).leads_raw, 3)
        )
    }
    assert set(leads) == {"Ada Lovelace", "Grace Hopper", "Joan Clarke"}
    assert leads["Ada Lovelace"].fields["Notes"] == "Wants pricing\nfor 200 seats"
    assert leads["Ada Lovelace"].occurred_at == datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
    assert leads["Grace Hopper"].fields["Notes"] == HYPERLINK
    assert leads["Grace Hopper"].occurred_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert "Email" not in leads["Joan Clarke"].fields  # left out, the phone kept
    assert leads["Joan Clarke"].fields["Phone"] == "+44 20 7946 0958"
    assert leads["Joan Clarke"].occurred_at == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

    [letter] = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("tradeshow_upload"), 1)
    message = DeadLetter.model_validate_json(letter.value or b"").message
    # The row's own country, not the default region, and the value, column and row.
    for part in ("'1234'", "row 4", "column 'Phone'", "country 'XX' is unknown", "region CN"):
        assert part in message

    rows = errors_rows(errors_out)
    assert rows[0] == [
        "Name",
        "Email",
        "Phone",
        "Company",
        "Country",
        "Notes",
        "Scan Time",
        "reason",
    ]
    assert rows[1][:7] == [
        "Alan Turing",
        "",
        "1234",
        "Bletchley",
        "XX",
        "'-call back",
        "02.03.2026 11:30",
    ]
    assert rows[1][7].startswith("rejected (invalid_fields): row 4, column 'Phone'")
    assert rows[2][:3] == ["Joan Clarke", "joan@", "'+44 20 7946 0958"]
    assert rows[2][7].startswith("warned (invalid_email): row 5, column 'Email'")
    assert_neutralised(rows)


async def test_an_unknown_timezone_refuses_the_upload(uploads: TestClient) -> None:
    status, answer = await post(uploads, CHINESE, "ciie-scans.csv", "Mars/Olympus")
    assert (status, answer["error"]) == (422, "invalid_timezone"), answer
    assert "Mars/Olympus" in answer["message"]
    assert answer["dead_letter_id"]
