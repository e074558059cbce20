"""POST /v1/uploads/tradeshow on the real stack: an upload never holds up the server, too
many at once get 429, and a body that trickles in is cut off with 408.

Each refusal is JSON with a dead letter on `dlq.tradeshow_upload`.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ingest_adapters import upload_http
from leadflow.kafka_clients import ensure_topics
from leadflow.settings import AuthSettings, HttpSettings, KafkaSettings, LimitsSettings, Settings
from tests.integration.test_bad_uploads import END, HEADER, MULTIPART, UPLOADER, letters, part
from tests.integration.test_http_app import client_for
from tests.keys import ENTRIES
from tests.unit.test_tradeshow import styled_rows_xlsx

ROUTE = "/v1/uploads/tradeshow"
SCANS = (HEADER + "王小明,13800138000,wang@example.cn,示例科技\n").encode()


def settings_for(tmp_path: Path, topic_prefix: str, **http: Any) -> Settings:
    return Settings(
        LEADFLOW_DATA_DIR=tmp_path,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix=topic_prefix),
        http=HttpSettings(max_upload_bytes=16 * 1024 * 1024, **http),
        auth=AuthSettings(keys=ENTRIES),
        # Every empty row is read: the upload below is slow on purpose.
        limits=LimitsSettings(upload_max_empty_rows=2_000_000),
    )


async def serve(settings: Settings, bootstrap: str) -> AsyncIterator[TestClient]:
    await ensure_topics(settings.kafka, bootstrap)
    async for client in client_for(settings, bootstrap):
        yield client


def probe_health(host: str, port: int, stop: threading.Event) -> list[float]:
    """GET /healthz from another thread until `stop`: how long each answer took.

    From outside the event loop, so a loop held up by the upload shows, whenever
    it happens (a client on the loop itself would just wait along with it)."""
    latencies: list[float] = []
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        while not stop.is_set():
            started = time.monotonic()
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        connection.close()
    return latencies


async def test_the_server_answers_while_an_upload_is_read(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    # 200,000 formatted empty rows: seconds of parsing. On the event loop (as it was)
    # /healthz waited for all of it; in the upload's own thread it answers at once.
    body = await asyncio.to_thread(styled_rows_xlsx, 200_000)
    async for client in serve(settings_for(tmp_path, topic_prefix), kafka_bootstrap):
        stop = threading.Event()
        url = client.make_url("/")
        assert url.host is not None
        assert url.port is not None
        probing = asyncio.create_task(asyncio.to_thread(probe_health, url.host, url.port, stop))
        form = io.BytesIO(part("event", b"corpus") + part("file", body, "formatted.xlsx") + END)
        try:
            answer = await client.post(ROUTE, data=form, headers={**MULTIPART, **UPLOADER})
            summary = await answer.json()
        finally:
            stop.set()
            latencies = await probing
        assert answer.status == 200, summary
        assert (summary["published"], summary["empty_rows"]) == (1, 200_000)
        assert len(latencies) >= 10, latencies
        # Held up by the parse, /healthz would wait about as long as the upload took.
        bound = min(2.0, summary["seconds"] / 3)
        assert max(latencies) < bound, f"/healthz took up to {max(latencies):.2f} s"


async def test_uploads_past_the_concurrency_get_429_without_their_body_read(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, topic_prefix, upload_concurrency=1)
    release = asyncio.Event()
    pulled = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        yield part("event", b"corpus") + part("file", SCANS, "first.csv")
        pulled.set()
        await release.wait()
        yield END

    async def endless_body() -> AsyncIterator[bytes]:
        yield part("event", b"corpus")
        await asyncio.Event().wait()  # never sends the rest: the answer must not need it
        yield END

    headers = {**MULTIPART, **UPLOADER}
    async for client in serve(settings, kafka_bootstrap):
        first = asyncio.create_task(client.post(ROUTE, data=held_body(), headers=headers))
        await asyncio.wait_for(pulled.wait(), 5)
        await asyncio.sleep(0.3)  # the server is in the first upload's handler
        async with asyncio.timeout(10):
            second = await client.post(ROUTE, data=endless_body(), headers=headers)
            refused = await second.json()
        assert second.status == 429, refused
        assert second.headers["Retry-After"] == str(upload_http.RETRY_AFTER_S)
        assert refused["error"] == "too_many_uploads"
        assert refused["message"]
        second.close()
        release.set()
        done = await first
        assert done.status == 200, await done.text()
        # The slot is free again.
        body = part("event", b"next") + part("file", SCANS, "again.csv") + END
        again = await client.post(ROUTE, data=body, headers=headers)
        assert again.status == 200, await again.text()
        kept = await letters(kafka_bootstrap, topic_prefix, 1)
        assert kept[refused["dead_letter_id"]].reason == "too_many_uploads"


async def test_a_body_slower_than_the_minimum_rate_is_cut_off_with_408(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_http, "BODY_GRACE_S", 1.0)  # 10 s in service
    monkeypatch.setattr(upload_http, "RATE_CHECK_S", 0.2)
    settings = settings_for(tmp_path, topic_prefix, body_min_rate_bytes_s=4096)

    async def trickle() -> AsyncIterator[bytes]:
        yield part("event", b"corpus") + f"--{MULTIPART_BOUNDARY}\r\n".encode()
        yield b'Content-Disposition: form-data; name="file"; filename="slow.csv"\r\n\r\n'
        yield HEADER.encode()
        for _ in range(200):  # 50 bytes/s, for up to 40 s
            await asyncio.sleep(0.2)
            yield "王小明,13800138000,w@x.cn\n".encode()[:10]
        yield b"\r\n" + END

    loop = asyncio.get_running_loop()
    async for client in serve(settings, kafka_bootstrap):
        started = loop.time()
        answer = await client.post(ROUTE, data=trickle(), headers={**MULTIPART, **UPLOADER})
        refused = await answer.json()
        assert (answer.status, refused["error"]) == (408, "body_too_slow"), refused
        assert loop.time() - started < 10
        assert "4,096 bytes/s" in refused["message"]
        answer.close()
        kept = await letters(kafka_bootstrap, topic_prefix, 1)
        assert kept[refused["dead_letter_id"]].reason == "body_too_slow"
        # What arrived of the file is not left on disk.
        assert list((tmp_path / "uploads").iterdir()) == []


MULTIPART_BOUNDARY = MULTIPART["Content-Type"].partition("boundary=")[2]
