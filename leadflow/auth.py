"""API keys and scopes: who a request comes from, and what it may do.

A key looks like `lf_<id>_<secret>`: the id names the key in logs and audit
rows, the secret is 32 random bytes. The server never holds a key, only its
SHA-256 (random keys need no slow hash), from two places: the `AUTH_KEYS`
setting (JSON, for env files and secret stores) and the keys file that
`leadflow keys` manages (`AUTH_KEYS_FILE`, default `keys.json` in the data
dir, mode 0600). Rotation is having two: create the new key, move clients to
it, revoke the old one. The file is read again when it changes, so a revoked
key stops working within a second without a restart.

Scopes (docs/security.md has the route table):

| scope | may |
| --- | --- |
| ingest | post web forms without a public token, engagement events |
| calls | post call events (own JSON, Asterisk) |
| crm | post rep actions (convert, won, lost, amount) |
| upload | upload trade-show files |
| read:analytics | funnel, pipeline, dashboard data, metrics: no personal data |
| read:pii | leads, explain, dead-letter bodies (every read is audited) |
| admin | erase people, and everything else |
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from leadflow.errors import ConfigurationError
from leadflow.settings import SCOPES, ApiKeyEntry, Settings

PREFIX = "lf_"
LOCAL_STACK_KEY_NAME = "local-stack"
_ENTRIES = TypeAdapter(list[ApiKeyEntry])


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's id and name (never the key), and its scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, scopes: Iterable[str]) -> tuple[str, ApiKeyEntry]:
    """A fresh key and the entry that stores it; the key is shown once and never kept."""
    chosen = tuple(dict.fromkeys(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise ConfigurationError(
            f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(chosen) or 'none'}"
        )
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    entry = ApiKeyEntry(
        id=key_id,
        name=name,
        sha256=digest(key),
        scopes=chosen,
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    return key, entry


def keys_file(settings: Settings) -> Path:
    return settings.auth.keys_file or settings.data_dir / "keys.json"


def read_keys_file(path: Path) -> list[ApiKeyEntry]:
    """The entries of a keys file; none when it does not exist; a clear error when broken."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    try:
        return _ENTRIES.validate_json(text or "[]")
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: not a valid keys file: {exc}") from exc


def write_keys_file(path: Path, entries: Sequence[ApiKeyEntry]) -> None:
    """Replace the keys file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    data = _ENTRIES.dump_json(list(entries), indent=2)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def add_key(path: Path, name: str, scopes: Iterable[str]) -> tuple[str, ApiKeyEntry]:
    key, entry = new_key(name, scopes)
    write_keys_file(path, [*read_keys_file(path), entry])
    return key, entry


def revoke_key(path: Path, key_id: str) -> bool:
    entries = read_keys_file(path)
    kept = [e for e in entries if e.id != key_id]
    if len(kept) == len(entries):
        return False
    write_keys_file(path, kept)
    return True


def env_line(entries: Sequence[ApiKeyEntry]) -> str:
    """`AUTH_KEYS=…` for an env file: the hashed entries, never a key."""
    return "AUTH_KEYS=" + json.dumps(
        [json.loads(e.model_dump_json(exclude_none=True)) for e in entries], separators=(",", ":")
    )


def ensure_local_key(settings: Settings) -> str:
    """The key `leadflow up` and its CLI use on this machine: made once (all scopes), kept
    beside the keys file in a file only its owner can read, and registered in the keys file."""
    path = keys_file(settings)
    key_path = path.with_name(f"{LOCAL_STACK_KEY_NAME}.key")
    entries = read_keys_file(path)
    if key_path.exists():
        key = key_path.read_text("utf-8").strip()
        if any(hmac.compare_digest(e.sha256, digest(key)) for e in entries):
            return key
    kept = [e for e in entries if e.name != LOCAL_STACK_KEY_NAME]
    key, entry = new_key(LOCAL_STACK_KEY_NAME, SCOPES)
    write_keys_file(path, [*kept, entry])
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def local_key(settings: Settings) -> str | None:
    """The key the CLI sends: LEADFLOW_API_KEY, else the local stack's key when there is one."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    key_path = keys_file(settings).with_name(f"{LOCAL_STACK_KEY_NAME}.key")
    try:
        return key_path.read_text("utf-8").strip() or None
    except FileNotFoundError:
        return None


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    if not key.startswith(PREFIX):
        return None
    key_id, _, secret = key[len(PREFIX) :].partition("_")
    return key_id if key_id and secret else None


class KeyRing:
    """The keys a server accepts: the settings' entries plus the keys file, re-read on change."""

    RECHECK_S = 1.0

    def __init__(self, settings: Settings) -> None:
        self._static = list(settings.auth.keys)
        self._path = keys_file(settings)
        self._by_id: dict[str, ApiKeyEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.RECHECK_S:
            return
        self._checked = now
        try:
            info = self._path.stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        if not force and stamp == self._stamp:
            return
        self._stamp = stamp
        entries = [*self._static, *(read_keys_file(self._path) if stamp else [])]
        self._by_id = {e.id: e for e in entries}

    def __len__(self) -> int:
        self._reload()
        return len(self._by_id)

    def principal(self, key: str) -> Principal | None:
        """Who this key belongs to, or None when it is not a key we hold."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        self._reload()
        entry = self._by_id.get(key_id)
        if entry is None or not hmac.compare_digest(entry.sha256, digest(key)):
            return None
        return Principal(entry.id, entry.name, frozenset(entry.scopes))


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer …`, else `X-Api-Key`."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("X-Api-Key", "").strip() or None
