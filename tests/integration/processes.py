"""Starting and stopping real leadflow processes for integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from leadflow.topics import Topics
from leadflow_app.client import http_json
from leadflow_tools.stack import Child, spawn, start_processes
from tests.keys import ADMIN_KEY, KEYS, bearer
from tests.keys import env as keys_env


@dataclass
class Stack:
    base_url: str
    bootstrap: str
    topics: Topics
    children: list[Child]
    env: dict[str, str]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def restart(self, name: str) -> None:
        """Stop one child by its name (SIGTERM) and start it again with the same settings."""
        index = next(i for i, c in enumerate(self.children) if c.name == name)
        child = self.children[index]
        child.stop()
        self.children[index] = spawn(name, child.args, child.env, child.log_path.parent)

    def assert_running(self) -> None:
        for child in self.children:
            code = child.process.poll()
            assert code is None, f"{child.name} exited with {code}\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {c.name} ---\n{c.log_path.read_text(errors='replace')[-4000:]}"
            for c in self.children
        )

    def post_json(
        self,
        fields: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body = json.dumps(fields, ensure_ascii=False).encode()
        return http_json(
            "POST",
            f"{self.base_url}/v1/leads/web",
            body,
            {"Content-Type": "application/json", **bearer(KEYS["ingest"]), **(headers or {})},
        )

    def post_raw(
        self, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        return http_json(
            "POST",
            f"{self.base_url}/v1/leads/web",
            body,
            {"Content-Type": content_type, **bearer(KEYS["ingest"]), **(headers or {})},
        )

    def post(self, path: str, fields: dict[str, Any], key: str = ADMIN_KEY) -> int:
        """POST `fields` as JSON to any write route with `key`; the status."""
        body = json.dumps(fields, ensure_ascii=False).encode()
        return self.http("POST", path, body, {"Content-Type": "application/json"}, key)[0]

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str = ADMIN_KEY,
        timeout_s: float = 10.0,
    ) -> tuple[int, dict[str, Any]]:
        """Any route of this stack's server, with `key` (the test admin key by default)."""
        return http_json(
            method, self.base_url + path, body, {**bearer(key), **(headers or {})}, timeout_s
        )

    def leads(self, **query: str) -> dict[str, Any]:
        status, answer = self.http("GET", f"/v1/leads?{urllib.parse.urlencode(query)}")
        assert status == 200, answer
        return answer

    def wait_for_leads(
        self,
        count: int,
        timeout_s: float = 30.0,
        **query: str,
    ) -> list[dict[str, Any]]:
        """Poll until `count` leads match the query; fail with the process logs otherwise."""
        deadline = time.monotonic() + timeout_s
        leads: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self.assert_running()
            leads = self.leads(**query)["leads"]
            if len(leads) >= count:
                return leads
            time.sleep(0.2)
        raise AssertionError(
            f"{len(leads)} of {count} leads after {timeout_s}s for {query}\n{self.logs()}"
        )


def wait_until(check: Any, what: str, stack: Stack, timeout_s: float = 60.0) -> Any:
    """Poll `check` until it returns something true (returned); fail with the logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        stack.assert_running()
        time.sleep(0.3)
    raise AssertionError(f"{what}: not reached in {timeout_s}s\n{stack.logs()}")


def run_cli(*args: str) -> str:
    """`leadflow ARGS` as a person runs it; its output, or CalledProcessError."""
    result = subprocess.run(
        [sys.executable, "-m", "leadflow", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200", "LEADFLOW_API_KEY": ADMIN_KEY},
    )
    return result.stdout


def start_stack(
    bootstrap: str,
    prefix: str,
    data_dir: Path,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """Workers and a server that accept every test key (`tests.keys`)."""
    env = {**os.environ, **keys_env(), **(extra_env or {})}
    base_url, children = start_processes(bootstrap, prefix, data_dir, env, workers)
    return Stack(base_url, bootstrap, Topics(prefix), children, children[-1].env)


async def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 20.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message of `topic` from the start, waiting until at least `expected` arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(found) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                found.extend(messages)
    finally:
        await consumer.stop()
    return found
