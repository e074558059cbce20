"""Bad trade-show files over POST /v1/uploads/tradeshow: a clear 4xx for a file that
cannot be read, a per-row rejection with its reason for a row that cannot be a lead."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from leadflow.kafka_clients import ensure_topics
from leadflow.settings import HttpSettings, KafkaSettings, Settings
from leadflow.topics import Topics
from schemas import DeadLetter
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for

HEADER = "姓名,手机,邮箱,公司\n"


@pytest.fixture
async def uploads(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Any
) -> AsyncIterator[TestClient]:
    settings = Settings(
        LEADFLOW_DATA_DIR=tmp_path,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_upload_bytes=4 * 1024 * 1024),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


async def post(
    client: TestClient, body: bytes, name: str, event: str
) -> tuple[int, dict[str, Any]]:
    form = FormData()
    form.add_field("event", event)
    form.add_field("file", body, filename=name)
    answer = await client.post("/v1/uploads/tradeshow", data=form)
    return answer.status, await answer.json()


def zip_bomb() -> bytes:
    """A workbook whose one sheet unpacks to 201 MB of zeros (a few hundred KB packed)."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet,
    ):
        block = b"\0" * (1 << 20)
        for _ in range(201):
            sheet.write(block)
    return buffer.getvalue()


async def test_rows_that_cannot_be_leads_are_rejected_with_a_reason(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    rows = (
        "CIIE 2026 扫描导出\n"  # a title row above the header
        + HEADER
        + "王小明,138 0013 8000,wang@example.cn,示例科技\n"  # good
        + "李娜,００８６ １３９ １２３４ ５６７８,,Fabrikam\n"  # full-width digits, 0086: good
        + '"=HYPERLINK(""http://evil.example"",""点我"")",,x@example.cn,Contoso\n'  # formula
        + "赵敏,1.39E+10,,东方零售\n"  # an Excel float: digits lost
        + "周杰,13912345678,z@example.cn,示例,extra,cells\n"  # ragged
        + ",,,\n"  # empty
        + "陈静,,,无联系方式\n"  # no contact at all
    ).encode()
    status, summary = await post(uploads, rows, "scans.csv", "corpus")
    assert status == 200, summary
    assert summary["published"] == 2
    assert summary["empty_rows"] == 1
    assert summary["rejected"] == {
        "formula_cell": 1,
        "invalid_fields": 1,
        "ragged_row": 1,
        "no_contact": 1,
    }
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("tradeshow_upload"), 4)
    messages = [DeadLetter.model_validate_json(m.value or b"").message for m in letters]
    assert any("scientific notation" in m for m in messages)
    assert any("formula" in m for m in messages)
    assert all(
        "row " in (DeadLetter.model_validate_json(m.value or b"").source_detail or "")
        for m in letters
    )


@pytest.mark.parametrize(
    ("name", "body", "status", "reason"),
    [
        (
            "mixed.csv",
            (HEADER + "Ada,13800138000,a@example.com,X\n" * 5000).encode()
            + "王,,w@example.cn,公司\n".encode("gb18030"),
            400,
            "invalid_encoding",
        ),
        ("bomb.xlsx", None, 413, "too_large"),
        ("fake.xlsx", b"\x89PNG\r\n\x1a\n not a workbook", 422, "invalid_xlsx"),
    ],
)
async def test_files_that_cannot_be_read_get_a_clear_4xx(
    uploads: TestClient, name: str, body: bytes | None, status: int, reason: str
) -> None:
    got, answer = await post(uploads, body if body is not None else zip_bomb(), name, "corpus")
    assert (got, answer["error"]) == (status, reason), answer
