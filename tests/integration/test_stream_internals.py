"""The worker checks the Faust/aiokafka internals it relies on: real Faust, the real broker.

A worker started as `leadflow worker` checks them before it starts and again
once its consumer runs (streams/internals.py). One whose Faust lacks one
refuses with a message naming it; the libraries are changed inside the
child process only (a `python -c` that deletes or overrides the real
attribute, then runs the CLI), never faked. Every process started is
stopped by its pid in `finally`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from leadflow_tools.stack import spawn

CHECKED = "stream internals checked on the running consumer"
REFUSED = "this worker relies on Faust/aiokafka internals that"


def worker_env(bootstrap: str, prefix: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "LEADFLOW_DATA_DIR": str(data_dir),
        "COLUMNS": "1000",  # the refusal on one line
    }


def run_worker_with(patch: str) -> str:
    """`python -c` that applies `patch` to the installed libraries, then `leadflow worker`."""
    return f"import sys\n{patch}\nfrom leadflow_app.cli import main\nsys.exit(main(['worker']))\n"


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The log once `text` is in it; fails if the process ends first, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if text in output:
            return output
        assert process.poll() is None, f"exited with {process.returncode}\n{output[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {timeout_s}s\n{log.read_text()[-4000:]}")


def test_a_started_worker_checks_the_internals_of_its_running_consumer(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = worker_env(kafka_bootstrap, topic_prefix, tmp_path)
    worker = spawn("worker", ["worker"], env, tmp_path / "logs")
    try:
        output = wait_for_line(worker.log_path, CHECKED, worker.process, timeout_s=90)
        assert f"faust-streaming {version('faust-streaming')}" in output
        assert REFUSED not in output
    finally:
        worker.stop()


def test_a_worker_whose_faust_lacks_an_internal_refuses_to_start(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    patch = (
        "from faust.transport.consumer import Consumer\n"
        "import mode\n"
        "del Consumer._add_gap\n"
        "del mode.Worker._on_sigusr1\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", run_worker_with(patch)],
        env=worker_env(kafka_bootstrap, topic_prefix, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert REFUSED in output
    assert "faust Consumer._add_gap" in output
    assert "mode Worker._on_sigusr1" in output
    assert f"faust-streaming {version('faust-streaming')}" in output
    assert f"aiokafka {version('aiokafka')}" in output
    assert "install the versions pinned in pyproject.toml" in output
    # Refused before it touched anything: no state folder, no consumer started.
    assert not (tmp_path / "worker-state").exists()
    assert "Starting..." not in output


def test_a_running_consumer_without_what_the_guard_needs_stops_the_worker(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    # A Faust whose aiokafka driver has an `_add_gap` of its own: present, so the check at
    # start passes, but the running consumer would bypass the stall guard's replacement.
    patch = (
        "from faust.transport.consumer import Consumer\n"
        "from faust.transport.drivers import aiokafka as driver\n"
        "driver.Consumer._add_gap = Consumer._add_gap\n"
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", run_worker_with(patch)],
            env=worker_env(kafka_bootstrap, topic_prefix, tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        code = process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    assert code != 0, output
    assert "[CRITICAL] stopping the worker: " + REFUSED in output
    assert "faust Consumer._add_gap being the stall guard's replacement" in output
    assert CHECKED not in output
