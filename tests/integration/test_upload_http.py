"""`POST /v1/uploads/tradeshow`: the same upload as the CLI, over multipart, with its summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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

SCANS = (
    "CIIE 2026 展商名片扫描导出\n"
    "姓名,手机,邮箱,公司,职位\n"
    "王小明,138 0013 8000,wang@example.cn,示例科技有限公司,销售总监\n"
    "李娜,0086 139 1234 5678,li.na@example.org,Fabrikam,经理\n"
    "王小明,138 0013 8000,wang@example.cn,示例科技有限公司,销售总监\n"
    "赵敏,12,not-an-email,东方零售,\n"
).encode("gb18030")


@pytest.fixture
async def uploads(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[TestClient]:
    settings = Settings(
        LEADFLOW_DATA_DIR=tmp_path,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_upload_bytes=4096),
        auth=AuthSettings(keys=ENTRIES),
    )
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in client_for(settings, kafka_bootstrap):
        yield made


def form(body: bytes, event: str = "CIIE 2026") -> FormData:
    data = FormData()
    data.add_field("event", event)
    data.add_field("file", body, filename="ciie-scans.csv", content_type="text/csv")
    return data


async def test_upload_over_http_publishes_once_with_a_summary(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    first = await uploads.post("/v1/uploads/tradeshow", data=form(SCANS), headers=UPLOADER)
    assert first.status == 200, await first.text()
    summary = await first.json()
    assert summary["file"] == "ciie-scans.csv"
    assert (summary["rows_read"], summary["published"], summary["duplicates_in_file"]) == (4, 2, 1)
    assert sum(summary["rejected"].values()) == 1
    leads = await read_topic(kafka_bootstrap, topics.leads_raw, 2)
    assert {RawLead.model_validate_json(m.value or b"").channel for m in leads} == {"tradeshow"}
    [letter] = await read_topic(kafka_bootstrap, topics.dlq("tradeshow_upload"), 1)
    assert "row 6" in (DeadLetter.model_validate_json(letter.value or b"").source_detail or "")

    again = await uploads.post("/v1/uploads/tradeshow", data=form(SCANS), headers=UPLOADER)
    assert (await again.json())["already_uploaded_at"]
    # Nothing of the file is left on the server's disk, only its error file (row 6).
    kept = [path.name for path in (tmp_path / "uploads").iterdir()]
    assert kept == [f"{summary['upload_id']}.errors.csv"]
    assert summary["errors_url"] == f"/v1/uploads/{summary['upload_id']}/errors.csv"


async def test_upload_refusals(
    uploads: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    too_big = await uploads.post(
        "/v1/uploads/tradeshow", data=form(b"a,b\n" * 2000), headers=UPLOADER
    )
    assert too_big.status == 413
    no_event = FormData()
    no_event.add_field("file", SCANS, filename="x.csv")
    missing = await uploads.post("/v1/uploads/tradeshow", data=no_event, headers=UPLOADER)
    assert missing.status == 422
    # Each refusal is kept as a dead letter with its reason.
    sent = {(await too_big.json())["dead_letter_id"], (await missing.json())["dead_letter_id"]}
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("tradeshow_upload"), 2)
    kept = [DeadLetter.model_validate_json(m.value or b"") for m in letters]
    assert sent <= {letter.dead_letter_id for letter in kept}
    assert {"body_too_large", "invalid_fields"} <= {letter.reason for letter in kept}
    as_json = await uploads.post("/v1/uploads/tradeshow", json={"event": "x"}, headers=UPLOADER)
    assert as_json.status == 415
    assert (await as_json.json())["dead_letter_id"]
