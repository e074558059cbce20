"""API keys: made once, stored hashed, found by the server, rotated and revoked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leadflow import auth
from leadflow.errors import ConfigurationError
from leadflow.settings import AuthSettings, Settings


def _settings(tmp_path: Path, **auth_values: object) -> Settings:
    return Settings(auth=AuthSettings(keys_file=tmp_path / "keys.json", **auth_values))  # type: ignore[arg-type]


def test_a_key_is_stored_only_as_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, entry = auth.add_key(path, "website", ["ingest"])
    text = path.read_text()
    assert key not in text
    assert key.split("_", 2)[2] not in text
    assert entry.sha256 in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_ring_knows_keys_by_scope_and_refuses_forgeries(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    key, entry = auth.add_key(tmp_path / "keys.json", "bi", ["read:analytics"])
    ring = auth.KeyRing(settings)
    who = ring.principal(key)
    assert who is not None
    assert (who.key_id, who.name) == (entry.id, "bi")
    assert who.may("read:analytics")
    assert not who.may("read:pii")
    # Same id, another secret; no prefix; empty; another id.
    assert ring.principal(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.principal(key.removeprefix("lf_")) is None
    assert ring.principal("") is None
    assert ring.principal(f"lf_{'0' * 12}_{key.rsplit('_', 1)[1]}") is None


def test_rotation_and_revocation_reach_a_running_ring(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = tmp_path / "keys.json"
    old, old_entry = auth.add_key(path, "crm-sync", ["crm"])
    ring = auth.KeyRing(settings)
    assert ring.principal(old) is not None
    new, _ = auth.add_key(path, "crm-sync 2", ["crm"])
    assert auth.revoke_key(path, old_entry.id)
    assert not auth.revoke_key(path, old_entry.id)
    time.sleep(auth.KeyRing.RECHECK_S + 0.1)
    assert ring.principal(old) is None
    assert ring.principal(new) is not None


def test_admin_may_everything_and_unknown_scopes_are_refused(tmp_path: Path) -> None:
    key, _ = auth.add_key(tmp_path / "keys.json", "ops", ["admin"])
    who = auth.KeyRing(_settings(tmp_path)).principal(key)
    assert who is not None
    assert all(who.may(scope) for scope in ("ingest", "read:pii", "crm"))
    with pytest.raises(ConfigurationError, match="scopes must be some of"):
        auth.new_key("x", ["write:everything"])
    with pytest.raises(ConfigurationError):
        auth.new_key("x", [])


def test_a_broken_keys_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('[{"id": "x"}]')
    with pytest.raises(ConfigurationError, match="not a valid keys file"):
        auth.KeyRing(_settings(tmp_path))


def test_the_local_stack_key_is_made_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = auth.ensure_local_key(settings)
    assert auth.ensure_local_key(settings) == first
    assert auth.local_key(settings) == first
    assert stat.S_IMODE((tmp_path / "local-stack.key").stat().st_mode) == 0o600
    who = auth.KeyRing(settings).principal(first)
    assert who is not None
    assert who.may("admin")


def test_keys_env_prints_a_line_settings_accept(tmp_path: Path) -> None:
    environment = {**os.environ, "LEADFLOW_DATA_DIR": str(tmp_path)}
    environment.pop("AUTH_KEYS", None)

    def run(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "leadflow", "keys", *words],
            capture_output=True,
            text=True,
            check=True,
            env={**environment, "COLUMNS": "300"},
        )

    created = run("create", "--name", "web", "--scope", "ingest")
    key = next(w for w in created.stdout.split() if w.startswith("lf_"))
    run("create", "--name", "bi", "--scope", "read:analytics")
    listed = run("list").stdout
    assert "web" in listed
    assert "read:analytics" in listed
    assert key not in listed
    [line] = run("env").stdout.splitlines()
    assert line.startswith("AUTH_KEYS=")
    assert key not in line
    entries = AuthSettings(keys=json.loads(line.removeprefix("AUTH_KEYS="))).keys
    assert [e.name for e in entries] == ["web", "bi"]
    # A server that has only the env line (no keys file) takes the key.
    settings = Settings(auth=AuthSettings(keys=entries, keys_file=tmp_path / "none.json"))
    who = auth.KeyRing(settings).principal(key)
    assert who is not None
    assert who.scopes == frozenset({"ingest"})
