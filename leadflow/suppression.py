"""Erasure support shared by every process: identifier hashes and the suppression list.

When a person is erased (GDPR Art. 17, PIPL Art. 47), each of their
identifiers (email, phone, lead id) is recorded on the compacted topic
`privacy.suppressions` as a salted SHA-256, never in clear. Every process
that writes (the normalize step, the ClickHouse writer) follows that topic
and refuses records carrying a suppressed identifier, so a replay of the raw
topics cannot bring the person back. A tombstone on a key lifts it (for a
person who asks to be known again).

A record refused because it names a suppressed person is never dropped
silently: it becomes a dead letter of reason `suppressed` whose body holds
only the salted hashes that matched and the event id, no personal data.
Phone numbers are compared in E.164, read with the record's own country and
the default region only when it names none, so `(212) 555-0142` from a US
form is the same person as `+12125550142`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiokafka import ConsumerRecord

from leadflow.dead_letters import dead_letter_for
from leadflow.errors import BadRecordError
from leadflow.kafka_clients import follow_topic
from leadflow.normalize import fields_country, normalize_email, normalize_phone
from leadflow.settings import KafkaSettings
from schemas import DeadLetter

log = logging.getLogger(__name__)
SALT = b"leadflow-suppression-v1|"
SUPPRESSED = "suppressed"  # the reason of a dead letter about an erased person
_EMAIL_LIKE = re.compile(r"[^\s\"'<>,;:()\[\]]+@[^\s\"'<>,;:()\[\]]+\.[^\s\"'<>,;:()\[\]]+")


def identifier_hash(value: str) -> str:
    """The key an identifier is suppressed under: SHA-256 of its folded text."""
    folded = unicodedata.normalize("NFKC", value).strip().lower()
    return hashlib.sha256(SALT + folded.encode("utf-8")).hexdigest()


class SuppressionList:
    """The set of suppressed identifier hashes, kept current by following the topic."""

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self._hashes: set[str] = set(hashes)
        self._loaded = False

    @classmethod
    def none_loaded(cls) -> SuppressionList:
        """An empty list that counts as loaded: for stages run without a follower (tests)."""
        empty = cls()
        empty.mark_loaded()
        return empty

    @property
    def loaded(self) -> bool:
        return self._loaded

    def mark_loaded(self) -> None:
        self._loaded = True

    async def wait_loaded(self) -> None:
        # A flag polled, not an asyncio.Event: in the Faust worker the follower and the
        # agents may run on different threads' loops, and an Event set from another
        # loop does not wake its waiter.
        while not self._loaded:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, digest: str) -> None:
        self._hashes.add(digest)

    def discard(self, digest: str) -> None:
        self._hashes.discard(digest)

    def hits(self, values: Iterable[str | None]) -> bool:
        """True when any of `values` (emails, phones, lead ids) is suppressed."""
        return bool(self._hashes) and any(
            identifier_hash(value) in self._hashes for value in values if value
        )

    def matching(self, values: Iterable[str | None]) -> list[str]:
        """The hashes of those of `values` that are suppressed, sorted, each once."""
        if not self._hashes:
            return []
        return sorted({h for v in values if v and (h := identifier_hash(v)) in self._hashes})

    async def follow(self, kafka: KafkaSettings, bootstrap: str, topic: str) -> None:
        """Read the topic from the start, set `loaded` once caught up, then keep reading."""

        def take(record: ConsumerRecord[bytes, bytes]) -> None:
            digest = (record.key or b"").decode()
            if record.value is None:
                self.discard(digest)
            else:
                self.add(digest)

        def caught_up() -> None:
            log.info("suppression list loaded: %d identifiers", len(self))
            self.mark_loaded()

        await follow_topic(kafka, bootstrap, topic, take, caught_up)


def identifiers_in_fields(fields: Mapping[str, Any], default_region: str) -> list[str]:
    """Every text value of submitted fields, and its reading as an email and as a phone.

    A phone is read with the country the fields themselves give (`country`,
    `国家`, …), and with `default_region` only when they give none.
    """
    texts = [v for v in fields.values() if isinstance(v, str) and v.strip()]
    region = fields_country({k: v for k, v in fields.items() if isinstance(v, str)})
    found: list[str] = []
    for text in texts:
        found.append(text)
        if "@" in text:
            with contextlib.suppress(ValueError):
                found.append(normalize_email(text))
        with contextlib.suppress(ValueError):
            found.append(normalize_phone(text, region or default_region))
    return found


def identifiers_in_body(body: bytes | None, default_region: str) -> list[str]:
    """What may identify a person in a raw record: a `RawLead` envelope's fields, a JSON
    object's text values, a form's values, else any email address in the text."""
    if not body:
        return []
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        fields = data.get("fields")
        return identifiers_in_fields(fields if isinstance(fields, dict) else data, default_region)
    text = body.decode("utf-8", "replace")
    if data is None and "=" in text and "\n" not in text.strip():
        pairs = parse_qsl(text.strip(), keep_blank_values=False)
        if pairs:
            return identifiers_in_fields(dict(pairs), default_region)
    return [m.rstrip(".") for m in _EMAIL_LIKE.findall(text)]


def suppressed_dead_letter(
    hashes: Iterable[str],
    *,
    stage: str,
    event_id: str | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    detail: str | None = None,
) -> DeadLetter:
    """The dead letter of a record about an erased person: hashes and event id, nothing else."""
    body = orjson.dumps({"event_id": event_id, "suppressed": sorted(set(hashes))})
    error = BadRecordError(
        SUPPRESSED,
        "refused: it names an erased person (kept: the matching identifier hashes only)",
    )
    return dead_letter_for(
        error,
        body,
        stage=stage,
        key=event_id.encode() if event_id else None,
        topic=topic,
        partition=partition,
        offset=offset,
        detail=detail,
    )


def event_id_of(body: bytes | None) -> str | None:
    """The `event_id` of a JSON envelope, when it has one."""
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body or b"")
        if isinstance(data, dict) and isinstance(data.get("event_id"), str):
            return str(data["event_id"])[:200]
    return None
