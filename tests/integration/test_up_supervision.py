"""`leadflow up` keeps its stack running: children that die are restarted, posts keep landing.

The last test runs the real `leadflow up` on the session's broker, kills its
worker and then its server with SIGKILL, and stops it with SIGTERM after its
reader went away (as under `leadflow up | tee log` when Ctrl-C stops tee
first). The others check the pieces without processes. Every process started
is stopped by its pid in `finally`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from leadflow_app.client import http_json
from leadflow_tools.broker.local import free_port, pid_alive
from leadflow_tools.stack import Backoff, PipeSafeOutput, Service, Supervisor

# --- the pieces --------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    backoff = Backoff(first_s=1, max_s=30, reset_after_s=60)
    assert [backoff.next_delay(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(59) == 30
    assert backoff.next_delay(60) == 1
    assert backoff.next_delay(1) == 2


class FakeService(Service):
    def __init__(self, name: str, fail_starts: int = 0) -> None:
        self.name = name
        self.running = True
        self.pids = [100]
        self.fail_starts = fail_starts
        self.stopped = False

    @property
    def pid(self) -> int | None:
        return self.pids[-1]

    def exit_status(self) -> str | None:
        return None if self.running else "killed by SIGKILL (exit code -9)"

    def restart(self) -> None:
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("port taken")
        self.running = True
        self.pids.append(self.pids[-1] + 1)

    def stop(self) -> None:
        self.running = False
        self.stopped = True


def test_supervisor_restarts_a_dead_service_after_its_backoff_and_says_so() -> None:
    now = [0.0]
    lines: list[str] = []
    worker, server = FakeService("worker", fail_starts=1), FakeService("serve")
    supervisor = Supervisor([worker, server], lines.append, clock=lambda: now[0])
    supervisor.tick()
    assert lines == []
    worker.running = False
    now[0] = 5.0
    supervisor.tick()
    assert lines == [
        "[yellow]![/] worker (pid 100) killed by SIGKILL (exit code -9); restart 1 in 1 s"
    ]
    now[0] = 5.5
    supervisor.tick()  # not due yet
    assert len(lines) == 1
    assert not worker.running
    now[0] = 6.0
    supervisor.tick()  # due, but it fails to start: the next try waits longer
    assert lines[-1] == "[red]✗[/] worker did not start again: port taken; next try in 2 s"
    now[0] = 8.0
    supervisor.tick()
    assert worker.running
    assert worker.pid == 101
    assert lines[-1] == "[green]✓[/] worker restarted (pid 101)"
    # Dying again soon after: a longer pause; after a minute of running: back to 1 s.
    worker.running = False
    now[0] = 9.0
    supervisor.tick()
    assert lines[-1].endswith("restart 2 in 4 s")
    now[0] = 13.0
    supervisor.tick()
    worker.running = False
    now[0] = 80.0
    supervisor.tick()
    assert lines[-1].endswith("restart 3 in 1 s")
    assert server.pids == [100]  # the other one was left alone


def test_a_paused_supervisor_restarts_nothing() -> None:
    worker = FakeService("worker")
    supervisor = Supervisor([worker], lambda _: None, backoff=lambda: Backoff(first_s=0))
    supervisor.pause()
    worker.running = False
    supervisor.tick()
    supervisor.tick()
    assert worker.pids == [100]
    assert not worker.running


def test_the_supervisor_thread_runs_until_closed() -> None:
    worker = FakeService("worker")
    lines: list[str] = []
    supervisor = Supervisor(
        [worker], lines.append, backoff=lambda: Backoff(first_s=0.05), poll_s=0.02
    )
    supervisor.start()
    try:
        worker.running = False
        deadline = time.monotonic() + 5
        while worker.pid == 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.pid == 101, lines
        assert worker.running
    finally:
        supervisor.pause()
        supervisor.close()
    worker.running = False
    time.sleep(0.1)
    assert worker.pid == 101  # closed: nothing restarts any more


def test_output_to_a_pipe_whose_reader_went_away_goes_to_a_file(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(io.FileIO(write_end, "w"), encoding="utf-8", line_buffering=True)
    output = PipeSafeOutput(stream, tmp_path / "logs" / "up.log")
    try:
        output.write("seen by the reader\n")
        output.flush()
        assert os.read(read_end, 100) == b"seen by the reader\n"
        os.close(read_end)
        read_end = -1
        for n in range(3):  # no BrokenPipeError, now or later
            assert output.write(f"after the reader left {n}\n") > 0
            output.flush()
        assert output.broken
        assert not output.isatty()
        log = (tmp_path / "logs" / "up.log").read_text()
        assert "after the reader left 2" in log
        assert "its reader went away" in log
    finally:
        if read_end >= 0:
            os.close(read_end)
        output.close()
        stream.close()  # its descriptor now points at /dev/null: closing cannot fail


# --- the real `leadflow up` --------------------------------------------------------------


def up_args() -> list[str]:
    return ["up", "--no-samples"]


class Output:
    """What a child writes to a pipe, read by a thread until `hang_up()` closes the pipe."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.text = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        os.close(self.write_end)  # the child holds it now
        self.write_end = -1
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.read_end], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                return
            with self._lock:
                self.text += chunk.decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text:
                return
            assert process.poll() is None, f"up exited with {process.returncode}:\n{self.text}"
            time.sleep(0.2)
        raise AssertionError(f"no {needle!r} within {timeout_s:.0f}s:\n{self.text}")

    def hang_up(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.read_end >= 0:
            os.close(self.read_end)
            self.read_end = -1

    def close(self) -> None:
        self.hang_up()
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[1])


def child_pid(data_dir: Path, name: str) -> int:
    return int((data_dir / "logs" / f"{name}.pid").read_text())


def wait_for_new_child(
    data_dir: Path, name: str, old: int, up: subprocess.Popen[bytes], output: Output
) -> int:
    """The pid of `name` once `up` started it again: a new, live child of `up`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = child_pid(data_dir, name)
            if pid != old and pid_alive(pid) and parent_of(pid) == up.pid:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted:\n{output.text}")


def post_lead(base_url: str, auth: dict[str, str], email: str) -> int:
    body = json.dumps({"name": "Supervised", "email": email}).encode()
    status, _ = http_json(
        "POST",
        f"{base_url}/v1/leads/web",
        body,
        {**auth, "Content-Type": "application/json"},
    )
    return status


def wait_for_leads(base_url: str, auth: dict[str, str], emails: list[str]) -> None:
    missing = set(emails)
    deadline = time.monotonic() + 120
    while missing and time.monotonic() < deadline:
        for email in sorted(missing):
            query = urllib.parse.urlencode({"email": email})
            with contextlib.suppress(OSError, ValueError):
                status, answer = http_json("GET", f"{base_url}/v1/leads?{query}", headers=auth)
                if status == 200 and answer.get("leads"):
                    missing.discard(email)
        time.sleep(0.5)
    assert not missing, f"{len(missing)} of {len(emails)} leads never landed: {sorted(missing)}"


def wait_healthz(base_url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if http_json("GET", f"{base_url}/healthz", timeout_s=2)[0] == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"/healthz did not answer within {timeout_s:.0f}s")


def test_up_restarts_killed_children_and_stops_everything_on_sigterm_after_its_reader_left(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LEADFLOW_DATA_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "CLICKHOUSE_FLUSH_INTERVAL_S": "0.2",
        "COLUMNS": "200",
    }
    env.pop("CLICKHOUSE_DSN", None)
    output = Output()
    started: set[int] = set()
    up = subprocess.Popen(
        [sys.executable, "-m", "leadflow", *up_args()],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output.write_end,
        stderr=subprocess.STDOUT,
    )
    try:
        output.start()
        output.wait_for("Press Ctrl-C", 240, up)
        key = (tmp_path / "local-stack.key").read_text().strip()
        assert f"saved in {tmp_path / 'local-stack.key'}" in output.text
        auth = {"Authorization": f"Bearer {key}"}
        worker, server = child_pid(tmp_path, "worker"), child_pid(tmp_path, "serve")
        started |= {worker, server}
        assert parent_of(worker) == up.pid
        assert parent_of(server) == up.pid

        # The worker dies hard: the server keeps taking posts, a new worker turns them into leads.
        os.kill(worker, signal.SIGKILL)
        emails = [f"sup-{n}-{uuid.uuid4().hex[:8]}@example.com" for n in range(20)]
        statuses = [post_lead(base_url, auth, email) for email in emails]
        assert statuses == [202] * len(emails)
        new_worker = wait_for_new_child(tmp_path, "worker", worker, up, output)
        started.add(new_worker)
        output.wait_for("worker restarted", 10, up)
        assert f"worker (pid {worker}) killed by SIGKILL" in output.text
        wait_for_leads(base_url, auth, emails)

        # The server dies hard: a new one answers on the same port.
        os.kill(server, signal.SIGKILL)
        new_server = wait_for_new_child(tmp_path, "serve", server, up, output)
        started.add(new_server)
        wait_healthz(base_url)
        assert f"serve (pid {server}) killed by SIGKILL" in output.text
        after = f"sup-after-{uuid.uuid4().hex[:8]}@example.com"
        assert post_lead(base_url, auth, after) == 202
        wait_for_leads(base_url, auth, [after])
        assert {p for p in started if pid_alive(p)} == {new_worker, new_server}

        # Its reader goes away (tee stopped by Ctrl-C), then SIGTERM: a clean stop all the same.
        output.hang_up()
        up.send_signal(signal.SIGTERM)
        code = up.wait(90)
        assert code == 0
        assert not [p for p in started if pid_alive(p)]
        log = (tmp_path / "logs" / "up.log").read_text()
        assert "stopping ..." in log
        assert "stopped" in log
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in started:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        output.close()
