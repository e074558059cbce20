"""Erasing a person (GDPR Art. 17, PIPL Art. 47): `POST /v1/privacy/erase`, `leadflow erase`.

Given an email, a phone or a lead id, the server:

1. finds every lead of that person in ClickHouse (merged records included)
   and every email and phone they used;
2. suppresses each identifier on `privacy.suppressions` (a salted hash, never
   the value), so the normalize stage and the ClickHouse writer refuse the
   person from then on, replays of the raw topics included;
3. sends erase commands through the stream so the partitions owning the
   person's state delete it: `identity.keys` for each match key (the
   identity index), `lead.updates` for each lead id (the lead state); Faust
   writes the tombstones to the tables' changelog topics;
4. deletes the person's rows from ClickHouse with mutations that rewrite the
   parts (`ALTER TABLE … DELETE`, waited for), not masks: leads, transitions,
   pipeline, merges, and dead letters that mention an identifier;
5. tombstones the dead letters on the `dlq.*` topics (compacted, so the
   records are physically gone once their segment rolls);
6. answers with what it erased.

Left in place on purpose: the funnel aggregates (counts per day and
dimension, no personal data) and the routing counters (lead id → owner, a
random id that no longer leads anywhere). Log topics (`leads.raw` and the
internal hops) keep the person's records until their retention ends; the
suppression list keeps a replay of them from bringing the person back.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer, ConsumerRecord

from leadflow.errors import BadRecordError
from leadflow.kafka_clients import replay_topic
from leadflow.privacy import identifier_hash
from leadflow.settings import Settings
from leadflow.topics import Topics
from schemas import DeadLetter
from sinks.clickhouse.client import ClickHouse
from streams.identity import table_key
from streams.normalize import normalize_email, normalize_phone

log = logging.getLogger(__name__)
SETTLE_S = 2.0  # in-flight records the suppression did not stop land within this


@dataclass
class Person:
    lead_ids: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)

    def identifiers(self) -> list[str]:
        return sorted(self.lead_ids | self.emails | self.phones)

    def needles(self) -> list[str]:
        """Texts whose presence in a dead letter's body means it is about this person."""
        found = set(self.emails) | set(self.lead_ids)
        for phone in self.phones:
            found.add(phone)
            found.add(re.sub(r"\D", "", phone)[-8:])  # the subscriber digits, however written
        return sorted(found)


@dataclass
class ErasureReport:
    requested: dict[str, str]
    lead_ids: list[str]
    identifiers_suppressed: int
    state_erase_commands: int
    rows_deleted: dict[str, int]
    dead_letters_tombstoned: dict[str, int]
    finished_at: str


def _requested(email: str | None, phone: str | None, lead_id: str | None, region: str) -> Person:
    person = Person()
    try:
        if email:
            person.emails.add(normalize_email(email))
        if phone:
            person.phones.add(normalize_phone(phone, region))
    except ValueError as exc:
        raise BadRecordError("invalid_fields", str(exc)) from exc
    if lead_id:
        person.lead_ids.add(lead_id.strip())
    if not person.identifiers():
        raise BadRecordError("invalid_fields", "give an email, a phone or a lead id")
    return person


async def resolve(clickhouse: ClickHouse, person: Person) -> Person:
    """Every lead of the person (merged ones too) and every identifier they used."""
    db = clickhouse.database
    for _ in range(4):  # merges chain at most a few hops
        before = (len(person.lead_ids), len(person.emails), len(person.phones))
        rows = await clickhouse.query(
            f"SELECT lead_id, merged_into, merged_from, emails, phones FROM {db}.leads FINAL "
            "WHERE lead_id IN {ids:Array(String)} OR merged_into IN {ids:Array(String)} "
            "OR hasAny(emails, {emails:Array(String)}) OR hasAny(phones, {phones:Array(String)})",
            {
                "ids": sorted(person.lead_ids),
                "emails": sorted(person.emails),
                "phones": sorted(person.phones),
            },
        )
        for row in rows:
            person.lead_ids.add(row["lead_id"])
            if row["merged_into"]:
                person.lead_ids.add(row["merged_into"])
            person.lead_ids.update(row["merged_from"])
            person.emails.update(e for e in row["emails"] if e)
            person.phones.update(p for p in row["phones"] if p)
        if (len(person.lead_ids), len(person.emails), len(person.phones)) == before:
            break
    return person


def _predicates(person: Person) -> dict[str, str]:
    return {
        "leads": "lead_id IN {ids:Array(String)} OR hasAny(emails, {emails:Array(String)}) "
        "OR hasAny(phones, {phones:Array(String)})",
        "lead_transitions": "lead_id IN {ids:Array(String)}",
        "pipeline_current": "lead_id IN {ids:Array(String)}",
        "lead_merges": "survivor_id IN {ids:Array(String)} OR merged_id IN {ids:Array(String)}",
        "dead_letters": "arrayExists(n -> positionCaseInsensitive(concat("
        "tryBase64Decode(original_b64), ' ', message, ' ', original_key, ' ', "
        "replaceRegexpAll(tryBase64Decode(original_b64), '[^0-9]', '')), n) > 0, "
        "{needles:Array(String)})",
    }


async def delete_rows(clickhouse: ClickHouse, person: Person) -> dict[str, int]:
    """Physically delete the person's rows; the count of rows each table held."""
    db, layout = clickhouse.database, clickhouse.layout
    params: dict[str, Any] = {
        "ids": sorted(person.lead_ids),
        "emails": sorted(person.emails),
        "phones": sorted(person.phones),
        "needles": person.needles(),
    }
    deleted: dict[str, int] = {}
    for table, where in _predicates(person).items():
        found = await clickhouse.query(
            f"SELECT count() AS n FROM {db}.{table} WHERE {where}", params
        )
        deleted[table] = int(found[0]["n"])
        if deleted[table]:
            # A mutation rewrites the parts without the rows (a lightweight DELETE would
            # only mask them); mutations_sync=2 waits until every replica has done it.
            await clickhouse.command(
                f"ALTER TABLE {layout.local(table)} {layout.on_cluster} DELETE WHERE {where}",
                settings={"mutations_sync": 2},
                parameters=params,
            )
    return deleted


def _mentions(letter: DeadLetter, needles: list[str]) -> bool:
    text = " ".join(
        [letter.original.decode("utf-8", "replace"), letter.message, letter.original_key or ""]
    ).lower()
    digits = re.sub(r"\D", "", text)
    return any(n.lower() in text or (n.isdigit() and n in digits) for n in needles)


async def tombstone_dead_letters(
    settings: Settings, bootstrap: str, producer: AIOKafkaProducer, person: Person
) -> dict[str, int]:
    topics = Topics(settings.kafka.topic_prefix)
    needles = person.needles()
    counts: dict[str, int] = {}
    for topic in topics.all_dlq():
        matches: list[bytes] = []

        def check(record: ConsumerRecord[bytes, bytes], found: list[bytes] = matches) -> None:
            if record.value is None or record.key is None:
                return
            try:
                letter = DeadLetter.model_validate_json(record.value)
            except ValueError:
                return
            if _mentions(letter, needles):
                found.append(record.key)

        await replay_topic(settings.kafka, bootstrap, topic, check)
        for key in dict.fromkeys(matches):
            await producer.send_and_wait(topic, None, key=key)
        if matches:
            counts[topic] = len(set(matches))
    return counts


async def erase_person(
    settings: Settings,
    bootstrap: str,
    clickhouse: ClickHouse,
    producer: AIOKafkaProducer,
    *,
    email: str | None = None,
    phone: str | None = None,
    lead_id: str | None = None,
) -> ErasureReport:
    topics = Topics(settings.kafka.topic_prefix)
    region = settings.normalize.default_phone_region
    person = await resolve(clickhouse, _requested(email, phone, lead_id, region))
    stamp = datetime.now(UTC).isoformat()
    for identifier in person.identifiers():
        record = orjson.dumps({"erased_at": stamp})
        await producer.send_and_wait(
            topics.privacy_suppressions, record, key=identifier_hash(identifier).encode()
        )
    commands = 0
    for kind, values in (("email", person.emails), ("phone", person.phones)):
        for value in sorted(values):
            key = table_key(kind, value)
            erase = orjson.dumps({"type": "erase", "key": key})
            await producer.send_and_wait(topics.identity_keys, erase, key=key.encode())
            commands += 1
    for lead in sorted(person.lead_ids):
        erase = orjson.dumps({"type": "erase", "lead_id": lead})
        await producer.send_and_wait(topics.lead_updates, erase, key=lead.encode())
        commands += 1
    deleted = await delete_rows(clickhouse, person)
    # Records already past the suppression check when it was published may still land.
    await asyncio.sleep(SETTLE_S)
    for table, count in (await delete_rows(clickhouse, person)).items():
        deleted[table] += count
    letters = await tombstone_dead_letters(settings, bootstrap, producer, person)
    report = ErasureReport(
        requested={
            k: v for k, v in (("email", email), ("phone", phone), ("lead_id", lead_id)) if v
        },
        lead_ids=sorted(person.lead_ids),
        identifiers_suppressed=len(person.identifiers()),
        state_erase_commands=commands,
        rows_deleted=deleted,
        dead_letters_tombstoned=letters,
        finished_at=datetime.now(UTC).isoformat(),
    )
    log.info(
        "erased %d lead(s): %s rows, %s dead letters",
        len(person.lead_ids),
        sum(deleted.values()),
        sum(letters.values()),
    )
    return report


def report_dict(report: ErasureReport) -> dict[str, Any]:
    return asdict(report)


class PrivacyRoutes:
    """`POST /v1/privacy/erase`: for operators only (X-Admin-Key, or loopback when unset)."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        clickhouse: ClickHouse,
        producer: AIOKafkaProducer,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._clickhouse = clickhouse
        self._producer = producer
        self._lock = asyncio.Lock()

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/privacy/erase", self.post_erase)

    def _allowed(self, request: web.Request) -> bool:
        key = self._settings.http.admin_key
        if key is None:
            return request.remote in ("127.0.0.1", "::1")
        return hmac.compare_digest(
            request.headers.get("X-Admin-Key", "").encode(), key.get_secret_value().encode()
        )

    async def post_erase(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.json_response(
                {"error": "unauthorized", "message": "erasure needs the admin key (X-Admin-Key)"},
                status=401,
            )
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRecordError("invalid_json", "send a JSON object")
            args = {k: body.get(k) for k in ("email", "phone", "lead_id")}
            if not all(v is None or isinstance(v, str) for v in args.values()):
                raise BadRecordError("invalid_fields", "email, phone and lead_id are strings")
            async with self._lock:  # one erasure at a time: each waits for its mutations
                report = await erase_person(
                    self._settings, self._bootstrap, self._clickhouse, self._producer, **args
                )
        except ValueError as exc:
            return web.json_response({"error": "invalid_json", "message": str(exc)}, status=400)
        except BadRecordError as exc:
            return web.json_response({"error": exc.reason, "message": exc.message}, status=422)
        return web.json_response(report_dict(report))
