"""Erasing a person (GDPR Art. 17, PIPL Art. 47): `POST /v1/privacy/erase`, `leadflow erase`.

Given an email, a phone (with the person's `country` when it is written
without a country code) or a lead id, the server:

1. finds every lead of that person in ClickHouse (merged records included)
   and every email and phone they used;
2. suppresses each identifier on `privacy.suppressions` (a salted hash, never
   the value), so the normalize step and the ClickHouse writer refuse the
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
6. records the erasure in the audit log (who, and the identifiers' hashes);
7. answers with what it erased.

With `dry_run: true` it does steps 1 and 7 only: it answers what it would
erase (lead ids, identifiers, rows per table, dead letters per topic) and
suppresses, sends and deletes nothing; the dry run is audited too.

The route takes JSON only (`Content-Type: application/json`, else 415): a web
page can post a form or `text/plain` to another site without asking, but not
JSON, so no page a person with access visits can erase anyone. Who may call
it is the access middleware's decision (scope `admin`, leadflow_app/access.py);
the client's address never is.

Left in place on purpose: the funnel aggregates (counts per day and
dimension, no personal data) and the routing counters (lead id → owner, a
random id that no longer leads anywhere). Log topics (`leads.raw` and the
internal hops) keep the person's records until their retention ends; the
suppression list keeps a replay of them from bringing the person back.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer, ConsumerRecord

from leadflow.errors import BadRecordError
from leadflow.ids import table_key
from leadflow.kafka_clients import replay_topic
from leadflow.normalize import normalize_country, normalize_email, normalize_phone
from leadflow.settings import Settings
from leadflow.strict_json import load_object
from leadflow.suppression import identifier_hash
from leadflow.topics import Topics
from schemas import DeadLetter
from schemas.messages import EraseKey, EraseLead
from schemas.nurture import NurtureForget
from sinks.clickhouse import audit
from sinks.clickhouse.client import ClickHouse
from sinks.clickhouse.writer import LEAD_ID_PREDICATES

log = logging.getLogger(__name__)
SETTLE_S = 2.0  # in-flight records the suppression did not stop land within this


@dataclass
class Person:
    lead_ids: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    # Identity-index keys beyond the plain email and phone ones: a phone with its
    # extension (`+498912340;ext=12`), and the company and corporate-domain keys whose
    # entries list this person's name beside others'.
    phone_keys: set[str] = field(default_factory=set)
    companies: set[str] = field(default_factory=set)

    def index_keys(self) -> list[tuple[str, str]]:
        """(kind, value) of every identity-index key that may hold this person."""
        keys = {("email", e) for e in self.emails}
        keys |= {("phone", p) for p in self.phones | self.phone_keys}
        keys |= {("company", c) for c in self.companies}
        keys |= {("domain", e.rpartition("@")[2]) for e in self.emails if "@" in e}
        return sorted(keys)

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
    """What was erased; in a dry run, what would be (nothing was suppressed or deleted)."""

    requested: dict[str, str]
    lead_ids: list[str]
    identifiers_suppressed: int
    state_erase_commands: int
    rows_deleted: dict[str, int]
    dead_letters_tombstoned: dict[str, int]
    finished_at: str
    dry_run: bool = False


IDENTIFIER_FIELDS = ("email", "phone", "lead_id")
# Rows of the upload error files this server keeps (data dir, uploads/): personal data too.
UPLOAD_ERROR_ROWS = "upload error files"
_ERASE_FIELDS = frozenset({*IDENTIFIER_FIELDS, "country", "dry_run"})
_LONGEST = 320


@dataclass(frozen=True)
class EraseRequest:
    """A validated erasure request: exactly one identifier."""

    email: str | None = None
    phone: str | None = None
    lead_id: str | None = None
    country: str | None = None  # ISO alpha-2: how a phone without a country code is read
    dry_run: bool = False

    def identifier(self, default_region: str) -> tuple[str, str]:
        """Which identifier, and its value as the suppression list holds it (a lower-case
        email, an E.164 phone); BadRecordError when it is not valid."""
        kind, value = next((k, v) for k, v in self.requested().items() if k in IDENTIFIER_FIELDS)
        region = self.country or default_region
        try:
            if kind == "email":
                return kind, normalize_email(value)
            if kind == "phone":
                return kind, normalize_phone(value, region)
        except ValueError as exc:
            raise BadRecordError("invalid_fields", f"{kind}: {exc}", {kind: str(exc)}) from exc
        return kind, value.strip()

    def requested(self) -> dict[str, str]:
        pairs = (("email", self.email), ("phone", self.phone), ("lead_id", self.lead_id))
        found = {k: v for k, v in pairs if v}
        if self.country:
            found["country"] = self.country
        return found


def parse_erase_request(body: bytes) -> EraseRequest:
    """The request in a JSON body; BadRecordError (`invalid_json` or `invalid_fields`,
    naming each problem) when it is not exactly one identifier and known options."""
    data = load_object(body)
    problems: dict[str, str] = {k: "unknown field" for k in sorted(set(data) - _ERASE_FIELDS)}
    given = [k for k in IDENTIFIER_FIELDS if data.get(k) is not None]
    for name in given:
        value = data[name]
        if not isinstance(value, str) or not value.strip():
            problems[name] = "must be a non-empty string"
        elif len(value) > _LONGEST:
            problems[name] = f"must be at most {_LONGEST} characters"
    if len(given) != 1:
        for name in IDENTIFIER_FIELDS:
            problems.setdefault(name, "give exactly one of email, phone or lead_id")
    country = data.get("country")
    if country is not None:
        if not isinstance(country, str) or normalize_country(country[:100]) is None:
            problems["country"] = "must be a country code or name, e.g. US"
        elif given != ["phone"]:
            problems["country"] = "only applies to a phone number"
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems["dry_run"] = "must be true or false"
    if problems:
        raise BadRecordError(
            "invalid_fields",
            "; ".join(f"{k}: {v}" for k, v in sorted(problems.items())),
            problems,
        )
    return EraseRequest(
        email=data.get("email"),
        phone=data.get("phone"),
        lead_id=data.get("lead_id"),
        country=normalize_country(country) if country is not None else None,
        dry_run=dry_run,
    )


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
            "SELECT lead_id, merged_into, merged_from, emails, phones, phone, phone_extension, "
            f"company_key FROM {db}.leads FINAL "
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
            if row["phone"] and row["phone_extension"]:
                person.phone_keys.add(f"{row['phone']};ext={row['phone_extension']}")
            if row["company_key"]:
                person.companies.add(row["company_key"])
        if (len(person.lead_ids), len(person.emails), len(person.phones)) == before:
            break
    return person


def _predicates() -> dict[str, str]:
    """Every table holding a person's rows, and how to find them. `pipeline_current` is
    the view target of `lead_transitions`; the funnel aggregates keep counts only."""
    return {
        "leads": "lead_id IN {ids:Array(String)} OR hasAny(emails, {emails:Array(String)}) "
        "OR hasAny(phones, {phones:Array(String)})",
        **LEAD_ID_PREDICATES,
        "dead_letters": "arrayExists(n -> positionCaseInsensitive(concat("
        "tryBase64Decode(original_b64), ' ', message, ' ', original_key, ' ', "
        "replaceRegexpAll(tryBase64Decode(original_b64), '[^0-9]', '')), n) > 0, "
        "{needles:Array(String)})",
    }


async def delete_rows(
    clickhouse: ClickHouse, person: Person, *, dry_run: bool = False
) -> dict[str, int]:
    """Physically delete the person's rows; the count of rows each table held.
    A dry run counts them only."""
    db, layout = clickhouse.database, clickhouse.layout
    params: dict[str, Any] = {
        "ids": sorted(person.lead_ids),
        "emails": sorted(person.emails),
        "phones": sorted(person.phones),
        "needles": person.needles(),
    }
    deleted: dict[str, int] = {}
    for table, where in _predicates().items():
        found = await clickhouse.query(
            f"SELECT count() AS n FROM {db}.{table} WHERE {where}", params
        )
        deleted[table] = int(found[0]["n"])
        if deleted[table] and not dry_run:
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
    )
    return _text_mentions(text, needles)


def _text_mentions(text: str, needles: list[str]) -> bool:
    lowered = text.lower()
    digits = re.sub(r"\D", "", lowered)
    return any(n.lower() in lowered or (n.isdigit() and n in digits) for n in needles)


def scrub_upload_error_files(folder: Path, needles: list[str], *, dry_run: bool = False) -> int:
    """Remove the person's rows from the upload error files kept in `folder` (the rejected
    and warned rows `GET /v1/uploads/{id}/errors.csv` serves); how many rows went (or, in a
    dry run, would go). Each file is rewritten whole, header kept, or deleted when empty."""
    removed = 0
    for path in sorted(folder.glob("*.errors.csv")):
        try:
            lines = path.read_text("utf-8-sig").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            continue  # pruned meanwhile, or not ours
        # One record per physical line is not guaranteed (quoted newlines): read records.
        records = list(csv.reader(io.StringIO("".join(lines))))
        if not records:
            continue
        header, rows = records[0], records[1:]
        kept = [row for row in rows if not _text_mentions(" ".join(row), needles)]
        if len(kept) == len(rows):
            continue
        removed += len(rows) - len(kept)
        if dry_run:
            continue
        if not kept:
            path.unlink(missing_ok=True)
            continue
        out = io.StringIO()
        csv.writer(out).writerows([header, *kept])
        temporary = path.with_suffix(".tmp")
        temporary.write_text(out.getvalue(), "utf-8-sig")
        temporary.replace(path)
    return removed


async def tombstone_dead_letters(
    settings: Settings,
    bootstrap: str,
    producer: AIOKafkaProducer,
    person: Person,
    *,
    dry_run: bool = False,
) -> dict[str, int]:
    """Tombstone the dead letters about the person on every `dlq.*` topic; the count per
    topic. A dry run counts them only."""
    topics = Topics(settings.kafka.topic_prefix)
    needles = person.needles()
    matches: dict[str, list[bytes]] = {}

    def check(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None or record.key is None:
            return
        try:
            letter = DeadLetter.model_validate_json(record.value)
        except ValueError:
            return
        if _mentions(letter, needles):
            matches.setdefault(record.topic, []).append(record.key)

    # Every dead-letter topic in one pass: one reader, its partitions assigned by name.
    await replay_topic(settings.kafka, bootstrap, topics.all_dlq(), check)
    counts: dict[str, int] = {}
    for topic, keys in matches.items():
        if not dry_run:
            for key in dict.fromkeys(keys):
                await producer.send_and_wait(topic, None, key=key)
        counts[topic] = len(set(keys))
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
    country: str | None = None,
    dry_run: bool = False,
) -> ErasureReport:
    """Erase the person (see the module's steps); with `dry_run`, only say what would go.

    `country` (ISO alpha-2) reads a phone written without a country code; the
    default region (NORMALIZE_DEFAULT_PHONE_REGION) only when it is not given.
    """
    topics = Topics(settings.kafka.topic_prefix)
    region = country or settings.normalize.default_phone_region
    person = await resolve(clickhouse, _requested(email, phone, lead_id, region))
    requested = {
        k: v
        for k, v in (("email", email), ("phone", phone), ("lead_id", lead_id), ("country", country))
        if v
    }
    commands = len(person.index_keys()) + 2 * len(person.lead_ids)  # lead state + nurture
    uploads = settings.data_dir / "uploads"
    if dry_run:
        rows = await delete_rows(clickhouse, person, dry_run=True)
        rows[UPLOAD_ERROR_ROWS] = await asyncio.to_thread(
            scrub_upload_error_files, uploads, person.needles(), dry_run=True
        )
        return ErasureReport(
            requested=requested,
            lead_ids=sorted(person.lead_ids),
            identifiers_suppressed=len(person.identifiers()),
            state_erase_commands=commands,
            rows_deleted=rows,
            dead_letters_tombstoned=await tombstone_dead_letters(
                settings, bootstrap, producer, person, dry_run=True
            ),
            finished_at=datetime.now(UTC).isoformat(),
            dry_run=True,
        )
    stamp = datetime.now(UTC).isoformat()
    for identifier in person.identifiers():
        record = orjson.dumps({"erased_at": stamp})
        await producer.send_and_wait(
            topics.privacy_suppressions, record, key=identifier_hash(identifier).encode()
        )
    for kind, value in person.index_keys():
        key = table_key(kind, value)
        # An exact key is the person's; a company or domain key also lists others, so
        # only the person's names leave it (by lead id, email or phone).
        erase = EraseKey(
            key=key,
            lead_ids=sorted(person.lead_ids),
            emails=sorted(person.emails),
            phones=sorted(person.phones | person.phone_keys),
        )
        await producer.send_and_wait(
            topics.identity_keys, erase.model_dump_json().encode(), key=key.encode()
        )
    for lead in sorted(person.lead_ids):
        forget = EraseLead(lead_id=lead).model_dump_json().encode()
        await producer.send_and_wait(topics.lead_updates, forget, key=lead.encode())
        # Its follow-up sequences, tasks and timers go too (nothing more is mailed).
        stop = NurtureForget(lead_id=lead).model_dump_json().encode()
        await producer.send_and_wait(topics.nurture_commands, stop, key=lead.encode())
    deleted = await delete_rows(clickhouse, person)
    # Records already past the suppression check when it was published may still land.
    await asyncio.sleep(SETTLE_S)
    for table, count in (await delete_rows(clickhouse, person)).items():
        deleted[table] += count
    letters = await tombstone_dead_letters(settings, bootstrap, producer, person)
    deleted[UPLOAD_ERROR_ROWS] = await asyncio.to_thread(
        scrub_upload_error_files, uploads, person.needles()
    )
    report = ErasureReport(
        requested=requested,
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


async def audit_erasure(
    clickhouse: ClickHouse,
    actor: audit.Actor,
    request: EraseRequest,
    identifier: tuple[str, str],
    report: ErasureReport | None,
    *,
    route: str = "",
    failure: str | None = None,
) -> None:
    """The audit row of an erasure or dry run: who, the identifier's hash, what went."""
    kind, value = identifier
    detail: dict[str, Any] = {"country": request.country} if request.country else {}
    if report is not None:
        detail |= {
            "identifiers": report.identifiers_suppressed,
            "rows": report.rows_deleted,
            "dead_letters": report.dead_letters_tombstoned,
            "state_erase_commands": report.state_erase_commands,
        }
    if failure is not None:
        detail["failed"] = failure
    await audit.record(
        clickhouse,
        actor,
        "erase_dry_run" if request.dry_run else "erase",
        route=route,
        target=audit.describe(**{kind: audit.hashed(value)}),
        lead_ids=report.lead_ids if report is not None else (),
        rows=sum(report.rows_deleted.values()) if report is not None else 0,
        detail=detail,
    )


class PrivacyRoutes:
    """`POST /v1/privacy/erase`: operators only (scope `admin`, checked by the access
    middleware before the handler runs); JSON bodies only."""

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

    async def post_erase(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response(
                {
                    "error": "unsupported_media_type",
                    "message": "send the request as JSON (Content-Type: application/json)",
                },
                status=415,
            )
        try:
            wanted = parse_erase_request(await request.read())
            identifier = wanted.identifier(self._settings.normalize.default_phone_region)
        except BadRecordError as exc:
            status = 400 if exc.reason == "invalid_json" else 422
            return web.json_response(
                {"error": exc.reason, "message": exc.message, "fields": exc.fields}, status=status
            )
        actor = audit.Actor.of(request)
        route = "/v1/privacy/erase"
        try:
            async with self._lock:  # one erasure at a time: each waits for its mutations
                report = await erase_person(
                    self._settings,
                    self._bootstrap,
                    self._clickhouse,
                    self._producer,
                    email=wanted.email,
                    phone=wanted.phone,
                    lead_id=wanted.lead_id,
                    country=wanted.country,
                    dry_run=wanted.dry_run,
                )
        except BadRecordError as exc:
            return web.json_response(
                {"error": exc.reason, "message": exc.message, "fields": exc.fields}, status=422
            )
        except Exception as exc:
            # Part of a real erasure may have happened: the log says who started it.
            try:
                await audit_erasure(
                    self._clickhouse,
                    actor,
                    wanted,
                    identifier,
                    None,
                    route=route,
                    failure=type(exc).__name__,
                )
            except Exception:
                log.exception("could not record the failed erasure in the audit log")
            raise
        await audit_erasure(self._clickhouse, actor, wanted, identifier, report, route=route)
        return web.json_response(report_dict(report))
