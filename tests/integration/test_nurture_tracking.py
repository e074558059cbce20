"""The tracking links of nurture email against the real broker: what each link publishes,
and that a changed, foreign or misused link publishes nothing and redirects nowhere."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from ingest_adapters.nurture_tracking import PIXEL
from ingest_adapters.publisher import Publisher
from leadflow.kafka_clients import ensure_topics, make_producer
from leadflow.metrics import Metrics
from leadflow.settings import AuthSettings, HttpSettings, KafkaSettings, NurtureSettings, Settings
from leadflow.suppression import SuppressionList, identifier_hash
from leadflow.topics import Topics
from leadflow.tracking import TrackingClaims, sign
from leadflow_app.server import Roles, build_app
from schemas import DeadLetter, EngagementEvent
from tests.integration.processes import read_topic
from tests.keys import ENTRIES, bearer

SECRET = "integration-nurture-secret"
# config/nurture.yaml, which the server loads: the welcome template's only link.
TOUR = "https://www.example.com/tour"
Link = Callable[..., str]


def _settings(prefix: str, publish_timeout_s: float = 10) -> Settings:
    return Settings(
        kafka=KafkaSettings(topic_prefix=prefix),
        http=HttpSettings(publish_timeout_s=publish_timeout_s),
        nurture=NurtureSettings(secret=SecretStr(SECRET)),
        auth=AuthSettings(keys=ENTRIES),
    )


async def _client(settings: Settings, bootstrap: str) -> AsyncIterator[TestClient]:
    """The server app on a test server; requests carry no key (a link needs none)."""
    producer = make_producer(settings.kafka, bootstrap, request_timeout_ms=1500)
    await producer.start()
    metrics = Metrics()
    publisher = Publisher(producer, metrics, settings.http.publish_timeout_s)
    app = build_app(settings, metrics, Roles.parse(["adapters"]), publisher, None, bootstrap)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await producer.stop()


@pytest.fixture
async def client(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TestClient]:
    settings = _settings(topic_prefix)
    await ensure_topics(settings.kafka, kafka_bootstrap)
    async for made in _client(settings, kafka_bootstrap):
        yield made


@pytest.fixture
def link() -> Link:
    """The path of a link signed as the mailer signs it; any claim can be overridden."""

    def make(kind: str = "click", secret: str = SECRET, **overrides: Any) -> str:
        values: dict[str, Any] = {
            "kind": kind,
            "send_id": "send-1",
            "lead_id": "lead-1",
            "sequence": "welcome",
            "step": "welcome",
            "template": "welcome",
            "link": 0 if kind == "click" else None,
        }
        values.update(overrides)
        token = sign(secret.encode(), TrackingClaims.model_validate(values))
        return f"/v1/nurture/{kind[0]}/{token}"

    return make


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tampered(path: str, **changes: Any) -> str:
    """The link with its claims changed and re-encoded under the old MAC."""
    head, _, token = path.rpartition("/")
    body, _, mac = token.partition(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return f"{head}/{_b64(orjson.dumps({**claims, **changes}))}.{mac}"


async def _engagements(bootstrap: str, prefix: str, expected: int) -> list[Any]:
    """What reached events.engagement, waiting a little past `expected` to see one too many."""
    return await read_topic(bootstrap, Topics(prefix).events_engagement, expected + 1, 4.0)


async def test_an_open_link_answers_the_gif_and_records_one_open(
    client: TestClient, link: Link, kafka_bootstrap: str, topic_prefix: str
) -> None:
    path = link("open")
    checked = await client.head(path)  # a link checker: answered, not an open
    assert checked.status == 200
    answer = await client.get(path)
    assert answer.status == 200
    assert answer.content_type == "image/gif"
    assert answer.headers["Cache-Control"] == "no-store"
    assert await answer.read() == PIXEL
    [record] = await _engagements(kafka_bootstrap, topic_prefix, 1)
    assert record.key == b"lead-1"
    event = EngagementEvent.model_validate_json(record.value or b"")
    assert (event.kind, event.lead_id, event.event_id) == (
        "email_open",
        "lead-1",
        "nurture:send-1:open",
    )
    assert event.properties == {"sequence": "welcome", "step": "welcome", "send_id": "send-1"}


async def test_a_click_redirects_to_the_template_url_and_records_the_click(
    client: TestClient, link: Link, kafka_bootstrap: str, topic_prefix: str
) -> None:
    answer = await client.get(link("click"), allow_redirects=False)
    assert answer.status == 302
    assert answer.headers["Location"] == TOUR
    [record] = await _engagements(kafka_bootstrap, topic_prefix, 1)
    assert record.key == b"lead-1"
    event = EngagementEvent.model_validate_json(record.value or b"")
    assert (event.kind, event.event_id) == ("email_click", "nurture:send-1:click:0")
    assert event.properties["url"] == TOUR
    assert event.properties["send_id"] == "send-1"


async def test_a_click_on_a_link_with_the_sentence_s_punctuation_still_counts(
    client: TestClient, link: Link, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A plain-text email's "(see https://…/c/TOKEN)." linked whole by the mail client."""
    answer = await client.get(link("click") + ").", allow_redirects=False)
    assert answer.status == 302
    assert answer.headers["Location"] == TOUR
    [record] = await _engagements(kafka_bootstrap, topic_prefix, 1)
    event = EngagementEvent.model_validate_json(record.value or b"")
    assert (event.kind, event.event_id) == ("email_click", "nurture:send-1:click:0")


async def test_refused_links_redirect_nowhere_record_nothing_and_leave_dead_letters(
    client: TestClient, link: Link, kafka_bootstrap: str, topic_prefix: str
) -> None:
    garbage = "x" * 40 + "." + "y" * 22
    # (what, method, path, status, reason); the pixel answers its GIF to every token.
    cases = [
        ("link index changed", "GET", _tampered(link("click"), link=1), 400, "bad_token"),
        ("lead changed", "GET", _tampered(link("click"), lead_id="lead-2"), 400, "bad_token"),
        ("another secret", "GET", link("click", secret="another"), 400, "bad_token"),
        ("click link as pixel", "GET", link("click").replace("/c/", "/o/"), 200, "bad_token"),
        ("open link as click", "GET", link("open").replace("/o/", "/c/"), 400, "bad_token"),
        ("open link unsubscribing", "POST", link("open").replace("/o/", "/u/"), 400, "bad_token"),
        ("garbage click", "GET", f"/v1/nurture/c/{garbage}", 400, "bad_token"),
        ("garbage pixel", "GET", f"/v1/nurture/o/{garbage}", 200, "bad_token"),
        ("garbage page", "GET", f"/v1/nurture/u/{garbage}", 400, "bad_token"),
        ("overlong", "GET", "/v1/nurture/c/" + "a" * 5000, 400, "bad_token"),
        ("<script>", "GET", "/v1/nurture/u/%3Cscript%3Ealert(1)", 400, "bad_token"),
        ("unknown template", "GET", link("click", template="nope"), 400, "unknown_template"),
        ("unknown link", "GET", link("click", link=5), 400, "unknown_link"),
        ("negative link", "GET", link("click", link=-1), 400, "unknown_link"),
    ]
    letter_ids: dict[str, str] = {}
    for what, method, path, status, reason in cases:
        answer = await client.request(method, path, allow_redirects=False)
        assert answer.status == status, what
        assert "Location" not in answer.headers, what
        if status == 200:
            assert await answer.read() == PIXEL, what
            continue
        body = await answer.json()
        assert body["error"] == reason, what
        assert "<script>" not in await answer.text(), what
        letter_ids[body["dead_letter_id"]] = reason
    letters = await read_topic(kafka_bootstrap, Topics(topic_prefix).dlq("tracking"), len(cases))
    found = [DeadLetter.model_validate_json(m.value or b"") for m in letters]
    assert len(found) == len(cases)
    assert {letter.stage for letter in found} == {"tracking"}
    assert {letter.dead_letter_id: letter.reason for letter in found}.items() >= (
        letter_ids.items()
    )
    # The token is the original: what an operator needs to see which link went wrong.
    kept = {letter.original for letter in found}
    assert _tampered(link("click"), link=1).rsplit("/", 1)[1].encode() in kept
    assert f"{garbage}".encode() in kept
    assert b"a" * 2048 in kept  # an overlong token is kept up to the bound
    assert await _engagements(kafka_bootstrap, topic_prefix, 0) == []


async def test_one_click_unsubscribe_suppresses_the_lead_and_records_it(
    client: TestClient, link: Link, kafka_bootstrap: str, topic_prefix: str
) -> None:
    path = link("unsubscribe")
    page = await client.get(path)
    assert page.status == 200
    html = await page.text()
    assert '<form method="post">' in html
    assert "lead-1" not in html
    assert path.rsplit("/", 1)[1] not in html
    assert await _engagements(kafka_bootstrap, topic_prefix, 0) == []  # a GET records nothing

    one_click = await client.post(
        path,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status == 200
    assert one_click.content_type == "text/plain"
    with aiohttp.MultipartWriter("form-data") as form:  # RFC 8058's recommended encoding
        form.append("One-Click").set_content_disposition("form-data", name="List-Unsubscribe")
    assert (await client.post(path, data=form)).content_type == "text/plain"
    button = await client.post(path)  # the page's own form: an empty body
    assert button.status == 200
    assert "You are unsubscribed" in await button.text()

    digest = identifier_hash("lead-1")
    topics = Topics(topic_prefix)
    records = await read_topic(kafka_bootstrap, topics.nurture_suppressions, 3)
    assert {r.key for r in records} == {digest.encode()}
    value = orjson.loads(records[0].value or b"")
    assert (value["reason"], value["lead_id_hash"]) == ("unsubscribed", digest)
    assert "lead-1" not in (records[0].value or b"").decode()
    events = [
        EngagementEvent.model_validate_json(r.value or b"")
        for r in await _engagements(kafka_bootstrap, topic_prefix, 3)
    ]
    assert {(e.kind, e.event_id, e.lead_id) for e in events} == {
        ("email_unsubscribe", "nurture:send-1:unsubscribe", "lead-1")
    }
    assert len(events) == 3  # each unsubscribe published; one id, so one downstream

    followed = SuppressionList()
    settings = _settings(topic_prefix)
    follower = asyncio.create_task(
        followed.follow(settings.kafka, kafka_bootstrap, topics.nurture_suppressions)
    )
    try:
        await asyncio.wait_for(followed.wait_loaded(), 20)
        assert followed.hits(["lead-1"])
        assert not followed.hits(["lead-2"])
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_kafka_not_taking_a_click_still_redirects_but_no_unsubscribe_is_promised(
    kafka_bootstrap: str, topic_prefix: str, link: Link
) -> None:
    # Topics not declared: the broker acknowledges no write.
    settings = _settings(topic_prefix + "undeclared.", publish_timeout_s=1.0)
    async for client in _client(settings, kafka_bootstrap):
        click = await client.get(link("click"), allow_redirects=False)
        assert click.status == 302
        assert click.headers["Location"] == TOUR
        pixel = await client.get(link("open"))
        assert (pixel.status, await pixel.read()) == (200, PIXEL)
        unsubscribe = await client.post(
            link("unsubscribe"),
            data=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert unsubscribe.status == 503
        assert unsubscribe.headers["Retry-After"] == "5"
        page = await client.post(link("unsubscribe"))
        assert page.status == 503
        assert "You are unsubscribed" not in await page.text()
        metrics = await (await client.get("/metrics", headers=bearer())).text()
        for kind in ("click", "open", "unsubscribe"):
            assert f'leadflow_tracking_links_total{{kind="{kind}",outcome="unrecorded"}}' in metrics
