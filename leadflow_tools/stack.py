"""`leadflow up`: the whole local stack, sample leads through it, and the result on screen.

Starts the project's broker (unless KAFKA_BOOTSTRAP names one), a Faust
worker and the HTTP server as child processes, posts the sample leads of
samples/web_forms.json with the local stack's API key, shows what landed in
ClickHouse, and then keeps the stack running: a child that dies is started
again, after 1 s, then 2, 4 … up to 30 s while it keeps dying (the pause goes
back to 1 s once a run lasted a minute). Only Ctrl-C, SIGTERM or SIGHUP stop
it: the server first (so the writer commits what it inserted), then the
worker, then the broker, each by the pid `up` started it with.

Its own output may outlive its reader: under `leadflow up | tee log`, Ctrl-C
stops tee first; what `up` writes after that goes to logs/up.log in the data
dir rather than failing.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import IO, Any, TextIO, cast

from aiosmtpd.controller import Controller
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leadflow.auth import LOCAL_STACK_KEY_NAME, ensure_local_key, keys_file
from leadflow.errors import FatalError
from leadflow.settings import Settings
from leadflow_app.client import http_json
from leadflow_app.views import funnel_table, lead_table, pipeline_table
from leadflow_tools import mail_catcher
from leadflow_tools.broker.local import LocalKafka, free_port, pid_alive

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str]
    env: dict[str, str]

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_libc: ctypes.CDLL | None = None


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the parent dies (no-op elsewhere).

    Linux sends it when the *thread* that started the child ends, so `up` starts
    children only from threads that outlive them. libc is loaded before the fork
    (`spawn`), so the child, which may have been forked while another thread held
    the loader's lock, does not call dlopen.
    """
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(None, use_errno=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "leadflow", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own session: a terminal's Ctrl-C reaches only `up`, which stops the children
            # in order (server first, so the writer commits what it inserted).
            start_new_session=True,
            # And if `up` itself is killed outright, the children follow it.
            preexec_fn=_die_with_parent,
        )
    (log_dir / f"{name}.pid").write_text(str(process.pid))
    return Child(name, process, log_path, args, env)


def wait_healthy(
    base_url: str,
    children: list[Child],
    timeout_s: float = 90.0,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise FatalError(
                    f"{child.name} exited with {child.process.returncode}; see {child.log_path}"
                )
        try:
            status, _ = http_json("GET", f"{base_url}/healthz", headers=headers, timeout_s=2)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise FatalError(f"the server did not answer /healthz within {timeout_s:.0f}s")


def start_processes(
    bootstrap: str, prefix: str, data_dir: Path, env: dict[str, str], workers: int = 1
) -> tuple[str, list[Child]]:
    """Workers and a server on `prefix`'s topics, data under `data_dir`, each with its
    own RocksDB folder; the server's URL once it answers, and the children.

    What the integration tests and the fault drill run: the embedded ClickHouse (any
    CLICKHOUSE_DSN in `env` is dropped) and a writer that flushes every 0.2 s."""
    port = free_port()
    env = {
        **env,
        "KAFKA_BOOTSTRAP": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "LEADFLOW_DATA_DIR": str(data_dir),
        "HTTP_PORT": str(port),
        "CLICKHOUSE_FLUSH_INTERVAL_S": "0.2",
    }
    env.pop("CLICKHOUSE_DSN", None)
    children = [
        spawn(
            f"worker{n}" if workers > 1 else "worker",
            ["worker"],
            {**env, "LEADFLOW_DATA_DIR": str(data_dir / f"worker{n}")},
            data_dir / "logs",
        )
        for n in range(1, workers + 1)
    ]
    children.append(spawn("serve", ["serve"], env, data_dir / "logs"))
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, children, timeout_s=60)
    except Exception:
        for child in reversed(children):
            child.stop()
        raise
    return base_url, children


def load_samples() -> list[dict[str, Any]]:
    text = resources.files("leadflow_tools").joinpath("samples/web_forms.json").read_text("utf-8")
    samples: list[dict[str, Any]] = json.loads(text)
    return samples


def post_sample(
    base_url: str, sample: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST one sample form; `headers` (the API key) go with it."""
    headers = {**(headers or {}), **sample.get("headers", {})}
    if sample["content_type"] == "application/json":
        body = json.dumps(sample["fields"], ensure_ascii=False).encode()
    else:
        body = urllib.parse.urlencode(sample["fields"]).encode()
    headers["Content-Type"] = sample["content_type"]
    return http_json("POST", f"{base_url}/v1/leads/web", body, headers)


def local_key_path(settings: Settings) -> Path:
    """Where `ensure_local_key` keeps the local stack's key."""
    return keys_file(settings).with_name(f"{LOCAL_STACK_KEY_NAME}.key")


def run_up(settings: Settings, console: Console, samples: bool = True) -> int:
    """Run the local stack until Ctrl-C, SIGTERM or SIGHUP; 0 once all it started stopped.

    `samples=False` skips posting the sample leads (`leadflow up --no-samples`)."""
    log_dir = settings.data_dir / "logs"
    console.file = cast(IO[str], PipeSafeOutput(console.file, log_dir / "up.log"))
    bootstrap = settings.kafka.bootstrap
    kafka: LocalKafka | None = None
    services: list[Service] = []
    supervisor: Supervisor | None = None
    catcher: Controller | None = None
    # Even when started with SIGINT ignored (a background job), Ctrl-C or kill -INT stops it.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupt)
    try:
        key = ensure_local_key(settings)
        auth = {"Authorization": f"Bearer {key}"}
        if not bootstrap:
            kafka = LocalKafka(
                settings.kafka_home,
                settings.kafka.local_port,
                settings.kafka.local_controller_port,
                settings.kafka.local_heap,
            )
            if kafka.pid() is not None:
                kafka = None  # started by `leadflow kafka start`: not ours to restart or stop
                bootstrap = f"127.0.0.1:{settings.kafka.local_port}"
            else:
                broker = BrokerService(kafka)
                services.append(broker)
                with console.status("starting the Kafka broker ..."):
                    broker.start()
                bootstrap = kafka.bootstrap
                console.print(f"[green]✓[/] Kafka broker on {bootstrap} (log: {kafka.log_file})")
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap}
        if not _mail_configured():
            catcher, port = mail_catcher.start(settings.data_dir / "mail")
            env |= {"NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_SMTP_PORT": str(port)}
            console.print(
                f"[green]✓[/] follow-up email goes to a local mail catcher: "
                f"{settings.data_dir / 'mail'} (one .eml per message)",
                highlight=False,
            )
        worker = ChildService(spawn("worker", ["worker"], env, log_dir))
        services.append(worker)
        server = ChildService(spawn("serve", ["serve"], env, log_dir))
        services.append(server)
        base_url = f"http://{settings.http.host}:{settings.http.port}"
        with console.status("starting the worker and the HTTP server ..."):
            wait_healthy(base_url, [worker.child, server.child], headers=auth)
        console.print(f"[green]✓[/] worker and server up; HTTP on {base_url} (logs: {log_dir})")
        console.print(
            f"[green]✓[/] API key of this stack saved in {local_key_path(settings)}; "
            "`leadflow` commands use it automatically",
            highlight=False,
        )
        console.print(
            f"[green]✓[/] dashboard: {base_url}/dashboard (it asks for that key once per tab)",
            highlight=False,
        )
        supervisor = Supervisor(services, lambda line: _say(console, line))
        supervisor.start()
        if samples:
            try:
                show_samples(base_url, console, headers=auth)
            except (OSError, ValueError) as exc:  # a child restarting under the samples
                console.print(f"[yellow]![/] the samples stopped short: {escape(str(exc))}")
        console.print(
            f"\nThe stack is running. Try:\n  curl -X POST {base_url}/v1/leads/web "
            f'-H "Authorization: Bearer $(cat {local_key_path(settings)})" '
            "-H 'Content-Type: application/json' "
            '-d \'{"name": "Ada", "email": " Ada@Example.COM "}\'\n'
            f"  leadflow leads --email ada@example.com\n"
            "Children that die are restarted. Press Ctrl-C to stop everything.",
            soft_wrap=True,  # a command broken over lines does not paste
        )
        supervisor.wait()
    except KeyboardInterrupt:
        pass  # Ctrl-C at any point, even during start-up, is the way to stop
    finally:
        # A second Ctrl-C (or SIGTERM) must not cut the clean-up short and leave processes.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        console.print("stopping ...")
        if supervisor is not None:
            supervisor.pause()  # no restarts from here on
        for service in reversed(services):  # server, worker, then broker
            service.stop()
        if supervisor is not None:
            supervisor.close()
            for service in reversed(services):  # one that was starting as we paused
                service.stop()
        if catcher is not None:
            catcher.stop()
        console.print("[green]✓[/] stopped")
    return 0


def _mail_configured() -> bool:
    """Whether an SMTP server or an email service was given for nurture email."""
    names = ("NURTURE_SMTP_HOST", "NURTURE_SMTP_PORT", "NURTURE_WEBHOOK_URL")
    return any(os.environ.get(name) for name in names)


def _say(console: Console, line: str) -> None:
    console.print(f"{datetime.now().strftime('%H:%M:%S')} {line}", highlight=False)


class PipeSafeOutput:
    """A text stream that outlives its reader: once writing to it fails with a closed pipe
    (`leadflow up | tee log`, tee stopped), what follows goes to `fallback` (a file) and the
    stream's descriptor is pointed at /dev/null, so no later write or flush fails either."""

    def __init__(self, target: IO[str], fallback: Path) -> None:
        self.target = target
        self.fallback = fallback
        self.broken = False
        self._lock = threading.Lock()
        self._diverted: TextIO | None = None

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return not self.broken and self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.target.write(text)
            except OSError as exc:
                if not _closed_reader(exc):
                    raise
                self._divert()
        with self._lock:
            if self._diverted is not None:
                self._diverted.write(text)
                self._diverted.flush()
        return len(text)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self.target.flush()
        except OSError as exc:
            if not _closed_reader(exc):
                raise
            self._divert()

    def close(self) -> None:
        """Close the file output went to, if any (the stream itself is its owner's)."""
        with self._lock:
            if self._diverted is not None:
                self._diverted.close()
                self._diverted = None

    def _divert(self) -> None:
        with self._lock:
            if self.broken:
                return
            self.broken = True
            _point_at_devnull(self.target)
            try:
                self.fallback.parent.mkdir(parents=True, exist_ok=True)
                self._diverted = self.fallback.open("a", encoding="utf-8")
                self._diverted.write(
                    f"--- {datetime.now().isoformat(timespec='seconds')} "
                    "output continues here: its reader went away\n"
                )
            except OSError:
                self._diverted = None  # nowhere to write: drop it


def _closed_reader(exc: OSError) -> bool:
    return isinstance(exc, BrokenPipeError) or exc.errno in (errno.EPIPE, errno.EIO)


def _point_at_devnull(stream: IO[str]) -> None:
    """Aim the stream's descriptor (and stderr's, if it is the same pipe) at /dev/null."""
    try:
        fd = stream.fileno()
        pipe = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        for other in (1, 2):
            if other == fd:
                continue
            try:
                info = os.fstat(other)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (pipe.st_dev, pipe.st_ino):
                os.dup2(devnull, other)
    finally:
        os.close(devnull)


# --- supervision ------------------------------------------------------------------------


class Service(ABC):
    """Something `up` started and keeps running."""

    name: str

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @abstractmethod
    def exit_status(self) -> str | None:
        """None while it runs; once it ended, how (“exit code 1”, “killed by SIGKILL”)."""

    @abstractmethod
    def restart(self) -> None:
        """Start it again (after it ended); raise if it cannot be."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it if it runs, by the pid it was started with."""


class ChildService(Service):
    """A leadflow child process (worker, server), started again with its args and env."""

    def __init__(self, child: Child) -> None:
        self.name = child.name
        self.child = child

    @property
    def pid(self) -> int | None:
        return self.child.process.pid

    def exit_status(self) -> str | None:
        code = self.child.process.poll()
        return None if code is None else describe_exit(code)

    def restart(self) -> None:
        old = self.child
        self.child = spawn(old.name, old.args, old.env, old.log_path.parent)

    def stop(self) -> None:
        self.child.stop()


class BrokerService(Service):
    """The project's own broker. It is not a child of `up` (it is started detached), so its
    exit code is unknown; it is watched, and stopped, by the pid it was started with."""

    name = "broker"

    def __init__(self, kafka: LocalKafka) -> None:
        self.kafka = kafka
        self._pid: int | None = None
        self._starting = False

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self) -> None:
        self._starting = True
        try:
            self.kafka.start()
        finally:
            self._starting = False
            self._pid = self.kafka.pid()

    def exit_status(self) -> str | None:
        if self._pid is not None and pid_alive(self._pid):
            return None
        return "exited (exit code unknown: the broker runs detached)"

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        running = self.kafka.pid()
        if running is not None and (running == self._pid or self._starting):
            self.kafka.stop()


@dataclass
class Backoff:
    """Pauses before restarts: `first_s`, doubling up to `max_s`; back to `first_s` after a
    run that lasted `reset_after_s`."""

    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0
    _next_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next_s = self.first_s

    def next_delay(self, ran_for_s: float) -> float:
        if ran_for_s >= self.reset_after_s:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"killed by signal {-code} (exit code {code})"
    return f"exit code {code}"


@dataclass
class _Watch:
    service: Service
    backoff: Backoff
    started_at: float
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Restarts the services that end, from a thread of its own, until paused.

    The thread also outlives every child it starts (Linux's PDEATHSIG would stop a
    child when the thread that started it ends): `pause()`, stop the services, then
    `close()`.
    """

    def __init__(
        self,
        services: list[Service],
        say: Callable[[str], None],
        backoff: Callable[[], Backoff] = Backoff,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._watches = [_Watch(s, backoff(), clock()) for s in services]
        self._say = say
        self._poll_s = poll_s
        self._paused = threading.Event()
        self._closed = threading.Event()
        self._busy = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="up-supervisor", daemon=True)
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def wait(self) -> None:
        """Sleep until a KeyboardInterrupt (a stop signal); FatalError if the thread failed."""
        while self._thread.is_alive():
            self._thread.join(0.5)
        raise FatalError(f"the supervisor of `up` failed: {self.failure!r}")

    def pause(self, wait_s: float = 5.0) -> None:
        """No restarts from now on; waits up to `wait_s` for one under way to finish."""
        self._paused.set()
        if self._busy.acquire(timeout=wait_s):
            self._busy.release()

    def close(self, wait_s: float = 120.0) -> None:
        self._paused.set()
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(wait_s)

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                with self._busy:
                    self.tick()
                self._closed.wait(self._poll_s)
        except BaseException as exc:  # seen by wait(), which ends `up`
            self.failure = exc

    def tick(self) -> None:
        """One look at every service: note the ones that ended, restart the ones due."""
        for watch in self._watches:
            if self._paused.is_set():
                return
            service = watch.service
            now = self._clock()
            if watch.restart_at is None:
                status = service.exit_status()
                if status is None:
                    continue
                delay = watch.backoff.next_delay(now - watch.started_at)
                watch.restart_at = now + delay
                watch.restarts += 1
                self._say(
                    f"[yellow]![/] {service.name} (pid {service.pid}) {status}; "
                    f"restart {watch.restarts} in {delay:g} s"
                )
            elif now >= watch.restart_at:
                try:
                    service.restart()
                except Exception as exc:
                    if self._paused.is_set():
                        return  # stopped under it: `up` is stopping
                    delay = watch.backoff.next_delay(0.0)
                    watch.restart_at = self._clock() + delay
                    self._say(
                        f"[red]✗[/] {service.name} did not start again: {escape(str(exc))}; "
                        f"next try in {delay:g} s"
                    )
                    continue
                watch.restart_at = None
                watch.started_at = self._clock()
                self._say(f"[green]✓[/] {service.name} restarted (pid {service.pid})")


def show_samples(
    base_url: str,
    console: Console,
    timeout_s: float = 120.0,
    headers: dict[str, str] | None = None,
) -> None:
    """Post the samples, show the leads they made, a funnel, the pipeline, the dead letters.

    `headers` go with every request (`Authorization: Bearer <key>`)."""
    auth = headers or {}
    accepted: list[str] = []
    table = Table(title="sample posts to POST /v1/leads/web")
    for column in ("sample", "status", "answer"):
        table.add_column(column)
    for sample in load_samples():
        status, answer = post_sample(base_url, sample, auth)
        if status == 202 and sample.get("expect_email"):
            accepted.append(sample["expect_email"])
        summary = answer.get("event_id") or f"{answer.get('error')}: {answer.get('message')}"
        table.add_row(sample["label"], str(status), summary)
    console.print(table)
    deadline = time.monotonic() + timeout_s
    leads: list[dict[str, Any]] = []
    with console.status("waiting for the leads to land in ClickHouse ..."):
        while time.monotonic() < deadline:
            _, answer = http_json("GET", f"{base_url}/v1/leads?limit=50", headers=auth)
            leads = answer.get("leads", [])
            # Every sample person exactly once (merges settled), each with an owner.
            emails = [lead["email"] for lead in leads]
            if sorted(emails) == sorted(set(accepted)) and all(lead["owner"] for lead in leads):
                break
            time.sleep(0.3)
    console.print(lead_table(leads, f"leads in ClickHouse ({len(leads)} shown)"))
    with console.status("reps at work: a webinar, a conversion, a demo, a lost deal ..."):
        play_rep_actions(
            base_url,
            {lead["email"]: lead["lead_id"] for lead in leads},
            deadline=time.monotonic() + timeout_s,
            headers=auth,
        )
    today = datetime.now(UTC).date()
    span = f"from={today}&to={today + timedelta(days=1)}"
    _, funnel = http_json("GET", f"{base_url}/v1/funnel?{span}", headers=auth)
    console.print(funnel_table(funnel, f"today's cohort funnel ({today})"))
    _, pipeline = http_json("GET", f"{base_url}/v1/pipeline", headers=auth)
    console.print(pipeline_table(pipeline))
    _, answer = http_json("GET", f"{base_url}/v1/dead-letters?limit=20", headers=auth)
    dead = Table(title="dead letters in ClickHouse")
    for column in ("stage", "reason", "message", "source_detail"):
        dead.add_column(column)
    for letter in answer.get("dead_letters", []):
        dead.add_row(
            *(str(letter.get(c) or "") for c in ("stage", "reason", "message", "source_detail"))
        )
    console.print(dead)


def play_rep_actions(
    base_url: str,
    lead_ids: dict[str, str],
    deadline: float,
    headers: dict[str, str] | None = None,
) -> None:
    """Engagement and CRM events for the sample leads, so the funnel has depth to show."""
    auth = headers or {}
    now = datetime.now(UTC).isoformat()
    posts: list[tuple[str, dict[str, object]]] = [
        (
            "/v1/events/engagement",
            {
                "event_id": "sample-webinar-1",
                "kind": "webinar_attended",
                "occurred_at": now,
                "email": "foo@example.com",
            },
        )
    ]
    li_na = lead_ids.get("li.na@example.org")
    grace = lead_ids.get("grace@example.net")
    if li_na:
        posts += [
            (
                "/v1/events/crm",
                {
                    "event_id": "sample-convert-1",
                    "lead_id": li_na,
                    "action": "convert",
                    "amount": 80000,
                    "currency": "CNY",
                    "occurred_at": now,
                },
            ),
            (
                "/v1/events/crm",
                {
                    "event_id": "sample-demo-1",
                    "lead_id": li_na,
                    "action": "set_stage",
                    "stage": "demo",
                    "occurred_at": now,
                },
            ),
        ]
    if grace:
        posts.append(
            (
                "/v1/events/crm",
                {
                    "event_id": "sample-lost-1",
                    "lead_id": grace,
                    "action": "lost",
                    "reason": "chose a competitor",
                    "occurred_at": now,
                },
            )
        )
    for path, event in posts:
        http_json(
            "POST",
            base_url + path,
            json.dumps(event).encode(),
            {**auth, "Content-Type": "application/json"},
        )
    while time.monotonic() < deadline:
        _, pipeline = http_json("GET", f"{base_url}/v1/pipeline", headers=auth)
        stages = {row["stage"] for row in pipeline.get("rows", [])}
        if not li_na or "demo" in stages:
            return
        time.sleep(0.3)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt
