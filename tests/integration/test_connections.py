"""Connections the HTTP server must survive: slow heads, too many sockets, floods of log lines.

The first tests run `start_site` in this process on 127.0.0.1 with a small app;
the last one runs the real `leadflow serve`, to show it uses them. Every socket
is closed, every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from leadflow.settings import HttpSettings, Settings
from leadflow_app.connections import RateLimitedLog, client_key, start_site
from leadflow_tools.broker.local import free_port
from leadflow_tools.stack import Child, spawn, wait_healthy

HOST = "127.0.0.1"
# A head that never ends: one byte a second of it keeps a naive server waiting for minutes.
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200


@dataclass
class Server:
    port: int
    runner: web.AppRunner


def settings_for(**http: object) -> Settings:
    return Settings(http=HttpSettings.model_validate({"host": HOST, "port": 0, **http}))


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Server]:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner, site = await start_site(app, settings)
    try:
        assert isinstance(site, web.TCPSite)
        yield Server(site.port, runner)
    finally:
        await runner.cleanup()


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def connect(port: int) -> Conn:
    reader, writer = await asyncio.open_connection(HOST, port)
    return Conn(reader, writer)


async def get_healthz(conn: Conn, keep_alive: bool = True, timeout_s: float = 5.0) -> int:
    """One GET /healthz on an open connection; its status."""
    connection = "keep-alive" if keep_alive else "close"
    conn.writer.write(
        f"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n".encode()
    )
    await conn.writer.drain()
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), timeout_s)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(conn.reader.readexactly(length), timeout_s)
    return status


async def closed_by_server(conn: Conn, timeout_s: float) -> bool:
    """True if the server closes (or resets) the connection within `timeout_s`."""
    try:
        data = await asyncio.wait_for(conn.reader.read(), timeout_s)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return data == b""


async def timed_healthz(port: int) -> tuple[int, float]:
    started = time.monotonic()
    conn = await connect(port)
    try:
        status = await get_healthz(conn, keep_alive=False)
    finally:
        await conn.close()
    return status, time.monotonic() - started


@dataclass
class Trickle:
    closed_after_s: float | None  # None: still open when the test gave up
    reply: bytes


async def trickle(port: int, give_up_s: float) -> Trickle:
    """Send SLOW_HEAD one byte a second until the server closes the connection."""
    conn = await connect(port)
    started = time.monotonic()
    reply = asyncio.ensure_future(conn.reader.read())  # everything until the server closes
    try:
        for byte in SLOW_HEAD:
            if reply.done() or time.monotonic() - started > give_up_s:
                break
            with contextlib.suppress(ConnectionError):
                conn.writer.write(bytes([byte]))
                await conn.writer.drain()
            await asyncio.wait({reply}, timeout=1.0)
        if not reply.done():
            return Trickle(None, b"")
        try:
            data = reply.result()
        except ConnectionError:
            data = b""
        return Trickle(time.monotonic() - started, data)
    finally:
        reply.cancel()
        await asyncio.gather(reply, return_exceptions=True)
        await conn.close()


async def probe_while(port: int, busy: Awaitable[object], every_s: float = 0.25) -> list[float]:
    """GET /healthz from a fresh connection every `every_s` until `busy` is done; latencies."""
    task = asyncio.ensure_future(busy)
    latencies: list[float] = []
    try:
        while not task.done():
            status, took = await timed_healthz(port)
            assert status == 200
            latencies.append(took)
            await asyncio.wait({task}, timeout=every_s)
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return latencies


async def check_trickling_connections_closed(
    port: int, count: int, header_timeout_s: float
) -> None:
    """`count` slowloris connections are cut at about the head deadline; /healthz stays fast."""
    # The bounds below are loose on purpose: clients and server share this machine's two
    # cores (and, in process, one event loop). What matters is the order of magnitude: cut
    # at the deadline rather than held for minutes, /healthz answered meanwhile.
    tricklers = asyncio.gather(*(trickle(port, header_timeout_s + 15) for _ in range(count)))
    latencies = await probe_while(port, tricklers)
    results: list[Trickle] = tricklers.result()
    still_open = [r for r in results if r.closed_after_s is None]
    assert not still_open, f"{len(still_open)} of {count} trickling connections never closed"
    times = sorted(r.closed_after_s or 0.0 for r in results)
    # The server counts from its accept, the client from its own start: on a busy loop
    # (200 connections at once) the two are a few tenths of a second apart.
    assert times[0] >= header_timeout_s - 0.5, times[:5]
    assert times[-1] <= header_timeout_s + 6.0, times[-5:]
    # A 408 for a head begun; nothing for one whose first byte had not arrived yet (a loaded
    # machine can delay it past the deadline): the server answers nobody who asked nothing.
    answered = [r.reply for r in results if r.reply]
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in answered), answered[:1]
    assert len(answered) >= count // 2, f"only {len(answered)} of {count} got their 408"
    assert latencies, "no /healthz probe ran"
    assert max(latencies) < 3.0, sorted(latencies)[-5:]


async def check_per_client_cap(port: int, cap: int, extra: int = 10) -> None:
    """Connections past the cap are closed at once; the first `cap` keep working."""
    held: list[Conn] = []
    refused: list[Conn] = []
    try:
        for _ in range(cap):
            conn = await connect(port)
            held.append(conn)
            assert await get_healthz(conn) == 200
        for _ in range(extra):
            refused.append(await connect(port))
        closed = await asyncio.gather(*(closed_by_server(c, 2.0) for c in refused))
        assert all(closed), f"{closed.count(False)} of {extra} connections over the cap stayed"
        statuses = await asyncio.gather(*(get_healthz(c) for c in held))
        assert statuses == [200] * cap
        # A slot freed is a slot to take again.
        await held.pop().close()
        await asyncio.sleep(0.2)
        status, _ = await timed_healthz(port)
        assert status == 200
    finally:
        for conn in held + refused:
            await conn.close()


async def flood_refused(port: int, count: int) -> None:
    """Open `count` connections the server refuses, 50 at a time, each closed at once."""

    async def one() -> None:
        conn = await connect(port)
        try:
            await closed_by_server(conn, 2.0)
        finally:
            await conn.close()

    for start in range(0, count, 50):
        await asyncio.gather(*(one() for _ in range(min(50, count - start))))


# --- in this process -------------------------------------------------------------------


async def test_trickling_heads_are_cut_at_the_deadline_and_healthz_answers() -> None:
    settings = settings_for(header_timeout_s=2, max_connections_per_client=400)
    async with running(settings) as server:
        await check_trickling_connections_closed(server.port, 200, header_timeout_s=2)


async def test_a_silent_connection_is_closed_at_the_deadline_without_a_reply() -> None:
    async with running(settings_for(header_timeout_s=1)) as server:
        conn = await connect(server.port)
        try:
            started = time.monotonic()
            data = await asyncio.wait_for(conn.reader.read(), 5)
            assert data == b""  # nothing was asked, nothing is answered
            assert 0.7 <= time.monotonic() - started <= 3.0
        finally:
            await conn.close()


async def test_a_kept_alive_connection_gets_the_deadline_for_each_head() -> None:
    async with running(settings_for(header_timeout_s=1, keepalive_timeout_s=30)) as server:
        conn = await connect(server.port)
        try:
            for _ in range(3):  # idle longer than the head deadline: keep-alive governs
                assert await get_healthz(conn) == 200
                await asyncio.sleep(1.5)
            conn.writer.write(SLOW_HEAD[:10])  # then a head that stalls
            started = time.monotonic()
            data = await asyncio.wait_for(conn.reader.read(), 5)
            assert data.startswith(b"HTTP/1.1 408")
            assert 0.7 <= time.monotonic() - started <= 3.0
        finally:
            await conn.close()


async def test_idle_keep_alive_connections_are_closed_after_the_keepalive_timeout() -> None:
    async with running(settings_for(keepalive_timeout_s=1)) as server:
        conn = await connect(server.port)
        try:
            assert await get_healthz(conn) == 200
            assert await closed_by_server(conn, 4.0)
        finally:
            await conn.close()


async def test_connections_over_the_per_client_cap_are_closed_the_first_keep_working() -> None:
    async with running(settings_for(max_connections_per_client=20)) as server:
        await check_per_client_cap(server.port, cap=20)


async def test_connections_over_the_total_cap_are_closed() -> None:
    async with running(settings_for(max_connections=5)) as server:
        await check_per_client_cap(server.port, cap=5)


async def test_a_flood_of_refused_connections_leaves_a_short_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_for(max_connections_per_client=5, log_lines_per_s=5)
    async with running(settings) as server:
        held = [await connect(server.port) for _ in range(5)]
        try:
            for conn in held:
                assert await get_healthz(conn) == 200
            started = time.monotonic()
            await flood_refused(server.port, 1000)
            took = time.monotonic() - started
        finally:
            for conn in held:
                await conn.close()
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    summaries = [r for r in caplog.records if "similar lines suppressed" in r.getMessage()]
    assert 1 <= len(refusals) <= 5 * (took + 1) + 5, (len(refusals), took)
    assert summaries, "the dropped lines were never reported"
    reported = sum(int(r.getMessage().split()[0]) for r in summaries)
    assert len(refusals) + reported == 1000


async def test_accept_errors_such_as_emfile_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running(settings_for(log_lines_per_s=5)):
        loop = asyncio.get_running_loop()
        for _ in range(2000):  # what the accept loop reports when out of descriptors
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
                }
            )
    lines = [r for r in caplog.records if r.name == "asyncio"]
    summaries = [r for r in caplog.records if "similar lines suppressed" in r.getMessage()]
    assert 1 <= len(lines) <= 10, len(lines)
    assert sum(int(r.getMessage().split()[0]) for r in summaries) == 2000 - len(lines)
    # The filter goes with the server: afterwards asyncio logs as before.
    caplog.clear()
    logging.getLogger("asyncio").error("after the server")
    assert [r.getMessage() for r in caplog.records] == ["after the server"]


def test_rate_limited_log_reports_what_it_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), 5, clock=lambda: now[0])
    logged = [limited.warning("kind", "line %d", i) for i in range(100)]
    assert logged.count(True) == 5
    assert limited.suppressed("kind") == 95
    now[0] = 1.0
    assert limited.warning("kind", "line after a second")
    limited.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[5:] == [
        "line after a second",
        "95 similar lines suppressed in the last 1 s (kind)",
    ]
    # Other kinds have buckets of their own; a long flood reports itself every 10 s.
    assert limited.warning("other", "another kind")
    caplog.clear()
    for second in range(2, 42):
        now[0] = float(second)
        for _ in range(50):
            limited.warning("kind", "flood")
    summaries = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    assert len(summaries) == 3, summaries
    assert len(caplog.records) == 40 * 5 + 3
    assert summaries[0] == "450 similar lines suppressed in the last 10 s (kind)"


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("203.0.113.9", 5555), "203.0.113.9"),
        (("::ffff:203.0.113.9", 5555, 0, 0), "203.0.113.9"),
        (("2001:db8:1:2:3:4:5:6", 5555, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::1", 5555, 0, 0), "2001:db8:1:2::/64"),
        ("/run/leadflow.sock", "local"),
    ],
)
def test_clients_are_counted_by_address_and_ipv6_by_64(peer: object, key: str) -> None:
    assert client_key(peer) == key


# --- the real `leadflow serve` ------------------------------------------------------------


@pytest.fixture
def real_server(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Child]:
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "LEADFLOW_DATA_DIR": str(tmp_path),
        "HTTP_HOST": HOST,
        "HTTP_PORT": str(port),
        "HTTP_HEADER_TIMEOUT_S": "2",
        "HTTP_MAX_CONNECTIONS_PER_CLIENT": "210",
        "HTTP_LOG_LINES_PER_S": "5",
    }
    env.pop("CLICKHOUSE_DSN", None)
    child = spawn("serve", ["serve", "--roles", "adapters,query"], env, tmp_path / "logs")
    try:
        wait_healthy(f"http://{HOST}:{port}", [child], timeout_s=60)
        yield child
    finally:
        child.stop()


def serve_port(child: Child) -> int:
    return int(child.env["HTTP_PORT"])


async def test_leadflow_serve_cuts_slow_heads_caps_clients_and_keeps_its_log_short(
    real_server: Child,
) -> None:
    port = serve_port(real_server)
    await check_trickling_connections_closed(port, 200, header_timeout_s=2)
    await check_per_client_cap(port, cap=210)

    before = real_server.log_path.read_text(errors="replace").splitlines()
    held: list[Conn] = []
    try:
        for _ in range(210):  # the client's every slot, each with a request answered
            held.append(await connect(port))
            assert await get_healthz(held[-1]) == 200
        started = time.monotonic()
        await flood_refused(port, 2000)
        took = time.monotonic() - started
    finally:
        for conn in held:
            await conn.close()
    await asyncio.sleep(0.5)
    added = real_server.log_path.read_text(errors="replace").splitlines()[len(before) :]
    refusals = [line for line in added if "refused a connection" in line]
    assert 1 <= len(refusals) <= 5 * (took + 1) + 5, (len(refusals), took)
    assert len(added) <= len(refusals) + 10, "\n".join(added[-20:])
    status, _ = await timed_healthz(port)
    assert status == 200
    assert real_server.process.poll() is None


async def test_the_installed_aiohttp_has_what_the_guard_relies_on() -> None:
    from leadflow_app.connections import missing_aiohttp_internals

    assert missing_aiohttp_internals() == []
