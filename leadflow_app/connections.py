"""The HTTP server's connections: a deadline for the request head, and caps on how many.

`start_site` runs an aiohttp application the way `leadflow serve` must face
the internet:

- A connection that has not delivered a complete request head within
  `HTTP_HEADER_TIMEOUT_S` is closed (with a 408 if it sent part of one). The
  clock starts when the connection opens, and on a kept-alive connection when
  the first byte of its next request arrives; idle keep-alive connections are
  closed after `HTTP_KEEPALIVE_TIMEOUT_S`. Slow bodies are a matter for the
  routes (`HTTP_BODY_MIN_RATE_BYTES_S`).
- At most `HTTP_MAX_CONNECTIONS` connections are open at once, and at most
  `HTTP_MAX_CONNECTIONS_PER_CLIENT` from one client: its direct peer address
  (an IPv6 client by its /64, which any one host can draw addresses from). A
  connection over a cap is reset as it is accepted, before it costs more than
  its file descriptor for a moment, so the server keeps answering everyone else.
  The total cap is lowered, with a warning, when the open-file limit could not
  hold it beside the files the rest of the process needs.
- Log lines that an attacker can provoke at will (refused clients, head
  timeouts, the event loop's accept errors such as EMFILE, aiohttp's own error
  lines) pass through `RateLimitedLog`: at most `HTTP_LOG_LINES_PER_S` lines
  per kind, then one "N similar lines suppressed" line now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter, Gauge

from leadflow.errors import ConfigurationError
from leadflow.metrics import Metrics
from leadflow.settings import Settings

log = logging.getLogger(__name__)

# Loggers outside leadflow whose lines a client can trigger at will; rate-limited per kind.
NOISY_LOGGERS = ("asyncio", "aiohttp.server", "aiohttp.web")
SUMMARY_EVERY_S = 10.0
# Open files kept for everything but HTTP connections (Kafka, the embedded ClickHouse, logs).
MIN_RESERVED_FILES = 256
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\n"
    b"request timeout\n"
)


class RateLimitedLog:
    """Log lines per kind through a token bucket; what is dropped is counted and reported.

    `kind` names a line's template ("refused-client"), never a value an attacker
    chooses: each kind keeps a bucket. At most `lines_per_s` lines of a kind pass
    per second (bursts up to one second's worth); the lines dropped meanwhile are
    reported as one "N similar lines suppressed" line every `summary_every_s` while
    a flood lasts, and on `flush()` (which `start_site` calls that often).
    Thread-safe.
    """

    MAX_KINDS = 1024

    @dataclass
    class _Bucket:
        tokens: float
        updated: float
        suppressed: int = 0
        since: float = 0.0  # when the first line not yet reported was dropped

    def __init__(
        self,
        logger: logging.Logger,
        lines_per_s: float,
        *,
        summary_every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lines_per_s <= 0:
            raise ValueError("lines_per_s must be positive")
        self.logger = logger
        self.lines_per_s = lines_per_s
        self.burst = max(1.0, lines_per_s)
        self.summary_every_s = summary_every_s
        self._clock = clock
        self._buckets: dict[str, RateLimitedLog._Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, kind: str) -> bool:
        """Take a token of `kind`: True if a line of it may be logged now."""
        summary: tuple[int, float] | None = None
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(kind)
            if bucket is None:
                if len(self._buckets) >= self.MAX_KINDS:
                    self._forget_quiet_kinds(now)
                bucket = self._buckets[kind] = self._Bucket(self.burst, now)
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated) * self.lines_per_s
            )
            bucket.updated = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            else:
                if bucket.suppressed == 0:
                    bucket.since = now
                bucket.suppressed += 1
            if bucket.suppressed and now - bucket.since >= self.summary_every_s:
                summary = (bucket.suppressed, now - bucket.since)
                bucket.suppressed = 0
        if summary is not None:
            self._summary(kind, *summary)
        return allowed

    def log(self, level: int, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        """Log `msg % args` at `level` unless `kind` is over its rate; True if it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        if not self.allow(kind):
            return False
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args, **kwargs)

    def info(self, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.INFO, kind, msg, *args, **kwargs)

    def suppressed(self, kind: str) -> int:
        """Lines of `kind` dropped and not yet reported."""
        with self._lock:
            bucket = self._buckets.get(kind)
            return bucket.suppressed if bucket else 0

    def flush(self) -> None:
        """Report every kind's dropped lines now (call it now and then, and at the end)."""
        with self._lock:
            now = self._clock()
            due = [
                (kind, bucket.suppressed, now - bucket.since)
                for kind, bucket in self._buckets.items()
                if bucket.suppressed
            ]
            for kind, _, _ in due:
                self._buckets[kind].suppressed = 0
        for kind, count, span in due:
            self._summary(kind, count, span)

    def _summary(self, kind: str, count: int, span_s: float) -> None:
        self.logger.warning(
            "%d similar lines suppressed in the last %.0f s (%s)",
            count,
            max(span_s, 1.0),
            kind,
            extra={"rate_limit_summary": True},
        )

    def _forget_quiet_kinds(self, now: float) -> None:
        for kind, bucket in list(self._buckets.items()):
            refilled = bucket.tokens + (now - bucket.updated) * self.lines_per_s
            if not bucket.suppressed and refilled >= self.burst:
                del self._buckets[kind]
        if len(self._buckets) >= self.MAX_KINDS:  # a flood of kinds: start afresh
            self._buckets.clear()


class RateLimitFilter(logging.Filter):
    """A logging filter that passes a logger's lines through a `RateLimitedLog`.

    For loggers leadflow does not write itself (asyncio, aiohttp): the kind of a
    line is its logger and the first line of its message template, which holds
    no client data for these loggers' error lines.
    """

    def __init__(self, limiter: RateLimitedLog) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "rate_limit_summary", False):
            return True
        first_line = str(record.msg).split("\n", 1)[0][:120]
        return self.limiter.allow(f"{record.name}: {first_line}")


def client_key(peername: object) -> str:
    """The client a connection counts against: its peer's IPv4 address, or IPv6 /64."""
    if not isinstance(peername, tuple) or not peername:
        return "local"  # a Unix socket
    host = str(peername[0]).split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def connection_budget(max_connections: int) -> int:
    """How many connections the process can hold: `max_connections`, unless the open-file
    limit is too low for it beside the files reserved for the rest of the process; the soft
    limit is raised toward the hard one first."""
    if sys.platform == "win32":  # pragma: no cover
        return max_connections
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + max(MIN_RESERVED_FILES, max_connections // 10)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return max_connections
    reserved = max(MIN_RESERVED_FILES, soft // 10)
    budget = max(1, min(max_connections, soft - reserved))
    if budget < max_connections:
        log.warning(
            "the open-file limit (%d) holds %d HTTP connections, not HTTP_MAX_CONNECTIONS=%d; "
            "raise it (ulimit -n, LimitNOFILE=) to hold more",
            soft,
            budget,
            max_connections,
        )
    return budget


@dataclass
class ConnectionGuard:
    """Counts open connections, in total and per client, and admits or refuses new ones."""

    max_total: int
    max_per_client: int
    header_timeout_s: float
    limiter: RateLimitedLog
    open_total: int = 0
    per_client: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=lambda: {"total": 0, "client": 0})
    header_timeouts: int = 0
    _refused_metric: Counter | None = field(default=None, init=False, repr=False)
    _timeout_metric: Counter | None = field(default=None, init=False, repr=False)

    def admit(self, client: str) -> bool:
        held = self.per_client.get(client, 0)
        if self.open_total >= self.max_total:
            self._refuse("total")
            self.limiter.warning(
                "refused-total",
                "refused a connection from %s: %d connections open (HTTP_MAX_CONNECTIONS)",
                client,
                self.open_total,
            )
            return False
        if held >= self.max_per_client:
            self._refuse("client")
            self.limiter.warning(
                "refused-client",
                "refused a connection from %s: it holds %d (HTTP_MAX_CONNECTIONS_PER_CLIENT)",
                client,
                held,
            )
            return False
        self.open_total += 1
        self.per_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        self.open_total -= 1
        held = self.per_client.get(client, 0) - 1
        if held > 0:
            self.per_client[client] = held
        else:
            self.per_client.pop(client, None)

    def head_timed_out(self, client: str) -> None:
        self.header_timeouts += 1
        if self._timeout_metric is not None:
            self._timeout_metric.inc()
        self.limiter.info(
            "header-timeout",
            "closed a connection from %s: no complete request head within %g s",
            client,
            self.header_timeout_s,
        )

    def export_to(self, metrics: Metrics) -> None:
        """Register this guard's figures on the process's metrics registry."""
        registry = metrics.registry
        opened = Gauge(
            "leadflow_http_connections_open",
            "HTTP connections open now.",
            registry=registry,
        )
        opened.set_function(lambda: self.open_total)
        self._refused_metric = Counter(
            "leadflow_http_connections_refused",
            "HTTP connections reset at accept, by the cap they were over (total, client).",
            ["cap"],
            registry=registry,
        )
        self._timeout_metric = Counter(
            "leadflow_http_header_timeouts",
            "HTTP connections closed for not sending a complete request head in time.",
            registry=registry,
        )

    def _refuse(self, cap: str) -> None:
        self.refused[cap] += 1
        if self._refused_metric is not None:
            self._refused_metric.labels(cap).inc()


class _GuardedHandler(RequestHandler):
    """aiohttp's protocol, plus the caps at accept and the request-head deadline."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client = ""
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_at_arm = 0
        self._head_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = client_key(transport.get_extra_info("peername"))
        if not self._guard.admit(client):
            cast(asyncio.Transport, transport).abort()  # frees the descriptor at once
            return
        self._client = client
        self._admitted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return  # refused at accept: aiohttp never saw it
        self._admitted = False
        self._disarm_head_timer()
        self._guard.release(self._client)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data:
            if self._head_timer is None and self._awaiting_request():
                self._arm_head_timer()  # the first byte of a kept-alive connection's next request
            if self._head_timer is not None:
                self._head_started = True
        super().data_received(data)
        if self._head_timer is not None and self._request_count != self._heads_at_arm:
            self._disarm_head_timer()  # a complete head arrived

    def _awaiting_request(self) -> bool:
        """True while aiohttp waits, between requests, for the next one."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_head_timer(self) -> None:
        self._heads_at_arm = self._request_count
        self._head_started = False
        self._head_timer = self._loop.call_later(
            self._guard.header_timeout_s, self._on_head_timeout
        )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport is None or self._request_count != self._heads_at_arm:
            return
        self._guard.head_timed_out(self._client)
        if self._head_started:
            self.transport.write(_REQUEST_TIMEOUT)
        self.force_close()


class _GuardedServer(web.Server):
    """aiohttp's low-level server for an application, making guarded protocols."""

    def __init__(self, server: web.Server, guard: ConnectionGuard) -> None:
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self._guard = guard

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, self._guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are guarded; `cleanup()` also undoes the log filters."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self._filters: list[tuple[logging.Logger, logging.Filter]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _make_server(self) -> web.Server:
        return _GuardedServer(await super()._make_server(), self.guard)

    def quiet_noisy_loggers(self) -> None:
        limiter = self.guard.limiter
        for name in NOISY_LOGGERS:
            logger = logging.getLogger(name)
            rate_filter = RateLimitFilter(limiter)
            logger.addFilter(rate_filter)
            self._filters.append((logger, rate_filter))
        self._flusher = asyncio.create_task(
            _flush_now_and_then(limiter), name="log-suppression-summaries"
        )

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            if self._flusher is not None:
                self._flusher.cancel()
                await asyncio.gather(self._flusher, return_exceptions=True)
                self._flusher = None
            for logger, rate_filter in self._filters:
                logger.removeFilter(rate_filter)
            self._filters.clear()
            self.guard.limiter.flush()


async def _flush_now_and_then(limiter: RateLimitedLog) -> None:
    while True:
        await asyncio.sleep(limiter.summary_every_s)
        limiter.flush()


def missing_aiohttp_internals() -> list[str]:
    """The parts of aiohttp this module relies on that are not public API, and are missing
    from the installed aiohttp (docs/architecture.md lists them): empty when all are there."""
    missing = [
        f"RequestHandler.{name}"
        for name in ("_request_count", "_waiter", "_loop")
        if name not in getattr(RequestHandler, "__slots__", ())
        and not hasattr(RequestHandler, name)
    ]
    if not callable(getattr(web.AppRunner, "_make_server", None)):
        missing.append("AppRunner._make_server")
    probe = web.Server(lambda _: None, loop=asyncio.get_running_loop())  # type: ignore[arg-type, return-value]
    missing += [f"Server.{name}" for name in ("_loop", "_kwargs") if not hasattr(probe, name)]
    return missing


async def start_site(
    app: web.Application, settings: Settings, metrics: Metrics | None = None
) -> tuple[web.AppRunner, web.BaseSite]:
    """Serve `app` on HTTP_HOST:HTTP_PORT with the head deadline, keep-alive timeout, caps
    and rate-limited logs of this module. Call `runner.cleanup()` when done."""
    missing = missing_aiohttp_internals()
    if missing:
        raise ConfigurationError(
            "this aiohttp lacks what leadflow's connection guard relies on "
            f"({', '.join(missing)}); install the aiohttp version pyproject.toml pins"
        )
    http = settings.http
    limiter = RateLimitedLog(log, http.log_lines_per_s)
    guard = ConnectionGuard(
        max_total=connection_budget(http.max_connections),
        max_per_client=http.max_connections_per_client,
        header_timeout_s=http.header_timeout_s,
        limiter=limiter,
    )
    if metrics is not None:
        guard.export_to(metrics)
    runner = GuardedRunner(app, guard, access_log=None, keepalive_timeout=http.keepalive_timeout_s)
    await runner.setup()
    try:
        runner.quiet_noisy_loggers()
        site = web.TCPSite(runner, http.host, http.port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site
