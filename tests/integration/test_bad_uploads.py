"""Bad trade-show files over POST /v1/uploads/tradeshow: a clear 4xx for a file that
cannot be read, a per-row rejection with its reason for a row that cannot be a lead.

Every refusal is JSON with its reason and the id of a dead letter that is on
`dlq.tradeshow_upload`; none is a 500 (each hostile case here was one, once).
"""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from leadflow.kafka_clients import ensure_topics
from leadflow.settings import AuthSettings, HttpSettings, KafkaSettings, LimitsSettings, Settings
from leadflow.topics import Topics
from schemas import DeadLetter, RawLead
from tests.integration.processes import read_topic
from tests.integration.test_http_app import client_for
from tests.keys import ENTRIES, KEYS, bearer
from tests.unit.test_tradeshow import styled_rows_xlsx

HEADER = "姓名,手机,邮箱,公司\n"
UPLOADER = bearer(KEYS["upload"])


def upload_settings(tmp_path: Path, topic_prefix: str, **limits: Any) -> Settings:
    return Settings(
        LEADFLOW_DATA_DIR=tmp_path,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_upload_bytes=16 * 1024 * 1024),
        auth=AuthSettings(keys=ENTRIES),
        limits=LimitsSettings(**limits),
    )


@pytest.fixture
async def uploads(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[TestClient]:
    settings = upload_settings(tmp_path, topic_prefix)
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


async def post(
    client: TestClient,
    body: bytes,
    name: str,
    event: str,
    mapping: str | None = None,
) -> tuple[int, dict[str, Any]]:
    form = FormData()
    form.add_field("event", event)
    if mapping is not None:
        form.add_field("mapping", mapping)
    form.add_field("file", io.BytesIO(body), filename=name)  # (raw bytes past 1 MiB warn)
    answer = await client.post("/v1/uploads/tradeshow", data=form, headers=UPLOADER)
    return answer.status, await answer.json()


BOUNDARY = "leadflow-test-boundary"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    """One multipart part as a browser writes it (a file name as raw UTF-8)."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


async def letters(bootstrap: str, topic_prefix: str, expected: int) -> dict[str, DeadLetter]:
    """The dead letters on this test's `dlq.tradeshow_upload`, by id."""
    found = await read_topic(bootstrap, Topics(topic_prefix).dlq("tradeshow_upload"), expected)
    kept = [DeadLetter.model_validate_json(m.value or b"") for m in found]
    return {letter.dead_letter_id: letter for letter in kept}


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


def zip_of_notes() -> bytes:
    """A valid zip that is no workbook (openpyxl: KeyError on [Content_Types].xml)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "badge scans are in the other file")
    return buffer.getvalue()


def unbalanced_quote() -> bytes:
    good = "王小明,13800138000,wang@example.cn,示例科技\n"
    return (HEADER + good + '李娜,"13912345678,li@example.cn,Fabrikam\n' + good * 3).encode()


def huge_field() -> bytes:
    """A 2 MiB cell: past what the csv module holds for one field even raised."""
    return (HEADER + "王小明,13800138000,wang@example.cn," + "示" * (2 << 20) + "\n").encode()


def wide_header() -> bytes:
    return (HEADER.strip() + "," + ",".join(f"c{i}" for i in range(300)) + "\n").encode()


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
    assert summary["published"] == 3  # the formula-looking name is text: a lead
    assert summary["empty_rows"] == 1
    assert summary["rejected"] == {"invalid_fields": 1, "ragged_row": 1, "no_contact": 1}
    assert [(p["row"], p["outcome"]) for p in summary["problems"]] == [
        (6, "rejected"),
        (7, "rejected"),
        (9, "rejected"),
    ]
    assert summary["stopped"] is None
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("tradeshow_upload"), 3)
    messages = [DeadLetter.model_validate_json(m.value or b"").message for m in letters]
    assert any("scientific notation" in m for m in messages)
    leads = await read_topic(kafka_bootstrap, Topics(topic_prefix).leads_raw, 3)
    names = {RawLead.model_validate_json(m.value or b"").fields["姓名"] for m in leads}
    assert '=HYPERLINK("http://evil.example","点我")' in names  # verbatim, never evaluated
    assert all(
        "row " in (DeadLetter.model_validate_json(m.value or b"").source_detail or "")
        for m in letters
    )


@pytest.mark.parametrize(
    ("name", "body", "status", "reason"),
    [
        (
            "mixed.csv",
            lambda: (
                (HEADER + "Ada,13800138000,a@example.com,X\n" * 5000).encode()
                + "王,,w@example.cn,公司\n".encode("gb18030")
            ),
            400,
            "invalid_encoding",
        ),
        ("bomb.xlsx", zip_bomb, 413, "too_large"),
        ("fake.xlsx", lambda: b"\x89PNG\r\n\x1a\n not a workbook", 422, "invalid_xlsx"),
        ("notes.xlsx", zip_of_notes, 422, "invalid_xlsx"),
        ("quote.csv", unbalanced_quote, 422, "invalid_csv"),
        ("huge-cell.csv", huge_field, 422, "cell_too_large"),
        ("wide.csv", wide_header, 422, "too_many_columns"),
        ("title-only.csv", lambda: b"CIIE 2026\n", 422, "no_header"),
    ],
)
async def test_files_that_cannot_be_read_get_a_clear_4xx_and_a_dead_letter(
    uploads: TestClient,
    kafka_bootstrap: str,
    topic_prefix: str,
    name: str,
    body: Callable[[], bytes],
    status: int,
    reason: str,
) -> None:
    data = body()
    got, answer = await post(uploads, data, name, "corpus")
    assert (got, answer["error"]) == (status, reason), answer
    assert answer["message"]
    kept = await letters(kafka_bootstrap, topic_prefix, 1)
    letter = kept[answer["dead_letter_id"]]
    assert letter.reason == reason
    assert name in (letter.source_detail or "")
    # The letter keeps the file's first 64 KiB, so an operator sees what was sent.
    assert base64.b64decode(letter.original_b64) == data[:65536]


async def test_an_unbalanced_quote_names_its_row(uploads: TestClient) -> None:
    status, answer = await post(uploads, unbalanced_quote(), "quote.csv", "corpus")
    assert status == 422
    assert "row 3" in answer["message"]  # the second data row (under the header) opens it
    assert answer["published"] == 1  # the row before it went through


async def test_a_cell_over_128_kib_is_left_out_of_its_lead_not_the_file(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    # Past the csv module's default bound (131,072): this was a plain-text 500.
    body = (
        HEADER.strip()
        + ",备注\n"
        + "王小明,13800138000,wang@example.cn,示例科技,"
        + "x" * 200_000
        + "\n"
        + "李娜,13912345678,li@example.cn,Fabrikam,\n"
    ).encode()
    status, summary = await post(uploads, body, "notes.csv", "corpus")
    assert status == 200, summary
    assert (summary["published"], summary["rejected"]) == (2, {})
    assert summary["warned"] == {"cell_too_large": 1}
    [problem] = summary["problems"]
    assert (problem["row"], problem["outcome"]) == (2, "warned")
    assert "column '备注'" in problem["message"]
    assert "200,000 characters" in problem["message"]
    leads = await read_topic(kafka_bootstrap, Topics(topic_prefix).leads_raw, 2)
    kept = [RawLead.model_validate_json(m.value or b"") for m in leads]
    wang = next(lead for lead in kept if lead.fields["姓名"] == "王小明")
    assert "备注" not in wang.fields
    assert "cell_too_large" not in wang.context["warnings"]  # the message, not the code
    assert "200,000 characters" in wang.context["warnings"]


async def test_a_long_file_name_is_text_never_a_path(uploads: TestClient, tmp_path: Path) -> None:
    # 300 characters: the server used to put it in its temp path (OSError: name too long).
    name = "展会扫描-" + "x" * 291 + ".csv"
    scans = (HEADER + "王小明,13800138000,wang@example.cn,示例科技\n").encode()
    for event, filename, kept in [
        ("corpus", name, name[:255]),
        ("other", "../../etc/passwd.csv", "passwd.csv"),
    ]:
        body = part("event", event.encode()) + part("file", scans, filename) + END
        answer = await uploads.post(
            "/v1/uploads/tradeshow", data=body, headers={**MULTIPART, **UPLOADER}
        )
        summary = await answer.json()
        assert answer.status == 200, summary
        assert (summary["file"], summary["published"]) == (kept, 1)
    assert list((tmp_path / "uploads").iterdir()) == []
    assert not (tmp_path / "etc").exists()


async def test_a_huge_event_part_is_refused_without_being_held(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    body = (HEADER + "王小明,13800138000,wang@example.cn,示例科技\n").encode()
    status, answer = await post(uploads, body, "scans.csv", "展" * 300_000)  # 900 KB
    assert (status, answer["error"]) == (422, "invalid_fields"), answer
    assert set(answer["fields"]) == {"event"}
    status, answer = await post(uploads, body, "scans.csv", "e" * 201)
    assert (status, answer["error"], set(answer["fields"])) == (422, "invalid_fields", {"event"})
    assert answer["dead_letter_id"] in await letters(kafka_bootstrap, topic_prefix, 1)


async def test_the_mapping_part_is_bounded_and_must_be_yaml_pairs(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    body = b"Badge Holder,Work Mail\nAda,ada@example.com\n"
    mapping = "Badge Holder: name\nWork Mail: email\n"
    status, summary = await post(uploads, body, "badges.csv", "corpus", mapping)
    assert (status, summary["published"]) == (200, 1)
    refused = []
    for bad in ("Badge Holder: [name", "- just\n- a list\n", "x: y\n" * 20_000, "[" * 5000):
        status, answer = await post(uploads, body, "badges.csv", "other", bad)
        assert (status, answer["error"]) == (422, "invalid_mapping"), answer
        refused.append(answer["dead_letter_id"])
    kept = await letters(kafka_bootstrap, topic_prefix, len(refused))
    assert set(refused) <= set(kept)


async def test_a_million_formatted_empty_rows_stop_at_the_limit(uploads: TestClient) -> None:
    # Before: every one of the million was read, on the event loop (16-26 s on a server).
    body = await asyncio.to_thread(styled_rows_xlsx, 1_000_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, summary = await post(uploads, body, "formatted.xlsx", "corpus")
    assert status == 200, summary
    assert loop.time() - started < 15
    assert summary["published"] == 1
    assert summary["empty_rows"] == 10_000
    assert summary["rows_read"] == 10_001
    assert (summary["stopped"], summary["stopped_at_row"]) == ("empty_rows_limit", 10_002)


async def test_more_rows_than_the_limit_refuse_the_file(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = upload_settings(tmp_path, topic_prefix, upload_max_rows=50)
    await ensure_topics(settings.kafka, kafka_bootstrap)
    rows = "".join(f"访客{n},139{n:08d},v{n}@example.cn,示例\n" for n in range(60))
    async for client in client_for(settings, kafka_bootstrap):
        status, answer = await post(client, (HEADER + rows).encode(), "many.csv", "corpus")
        assert (status, answer["error"]) == (413, "too_many_rows"), answer
        assert "50" in answer["message"]
        assert answer["published"] == 50  # what went before the limit, said as it is
        kept = await letters(kafka_bootstrap, topic_prefix, 1)
        assert kept[answer["dead_letter_id"]].reason == "too_many_rows"
