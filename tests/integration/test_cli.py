"""The `leadflow` command as a person runs it: the broker verbs and the main job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from leadflow_tools.broker.local import free_port, pid_alive


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_kafka_start_status_stop(tmp_path: Path) -> None:
    env = {**os.environ, "LEADFLOW_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    env.pop("KAFKA_BOOTSTRAP", None)
    env["KAFKA_LOCAL_PORT"] = str(free_port())
    env["KAFKA_LOCAL_CONTROLLER_PORT"] = str(free_port())
    try:
        started = run_cli("kafka", "start", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "running (pid" in started.stdout
        pid = int((tmp_path / "kafka" / "broker.pid").read_text())
        assert pid_alive(pid)

        status = run_cli("kafka", "status", env=env)
        assert status.returncode == 0
        assert f"127.0.0.1:{env['KAFKA_LOCAL_PORT']}" in status.stdout
        # Starting again is harmless: the running broker is kept.
        assert run_cli("kafka", "start", env=env).returncode == 0
        assert int((tmp_path / "kafka" / "broker.pid").read_text()) == pid
    finally:
        stopped = run_cli("kafka", "stop", env=env)
    assert stopped.returncode == 0
    assert "stopped" in stopped.stdout
    assert not pid_alive(pid)
    after = run_cli("kafka", "status", env=env)
    assert after.returncode == 3
    assert "stopped" in after.stdout


def test_port_conflict_is_a_clear_error(tmp_path: Path, kafka_bootstrap: str) -> None:
    taken = kafka_bootstrap.split(",")[0].rsplit(":", 1)[1]
    env = {**os.environ, "LEADFLOW_DATA_DIR": str(tmp_path), "KAFKA_LOCAL_PORT": taken}
    env.pop("KAFKA_BOOTSTRAP", None)
    result = run_cli("kafka", "start", env=env)
    assert result.returncode == 2
    assert f"port {taken} is taken" in result.stdout


def test_up_shows_sample_leads_from_clickhouse_and_stops_on_ctrl_c(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    env = {
        **os.environ,
        "LEADFLOW_DATA_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "HTTP_PORT": str(free_port()),
        "COLUMNS": "220",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "leadflow", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        lines: list[str] = []
        try:
            deadline = time.monotonic() + 240
            assert process.stdout is not None
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "Press Ctrl-C" in line:
                    break
            output = "".join(lines)
            assert "Press Ctrl-C" in output, output
            assert "leads in ClickHouse (4 shown)" in output, output
            for email in ("foo@example.com", "wang.xm@example.cn", "li.na@example.org"):
                assert email in output
            assert "+8613800138000" in output  # the full-width phone, normalized
            assert "invalid_fields" in output
            assert "no_contact" in output  # refused samples
            assert "cohort funnel" in output
            assert "80,000.00" in output  # the sample deal in the pipeline
            process.send_signal(signal.SIGINT)
            rest, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, rest
    assert "stopped" in rest


def test_children_of_up_die_with_it(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    env = {
        **os.environ,
        "LEADFLOW_DATA_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "HTTP_PORT": str(free_port()),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "leadflow", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as up:
        assert up.stdout is not None
        for line in up.stdout:
            if "worker and server up" in line:
                break
        pids = [
            int((tmp_path / "logs" / f"{name}.pid").read_text()) for name in ("worker", "serve")
        ]
        assert all(pid_alive(pid) for pid in pids)
        up.kill()  # no chance to clean up
        up.wait()
    deadline = time.monotonic() + 60
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if pid_alive(pid)]
