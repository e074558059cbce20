"""The project's own Apache Kafka broker: one KRaft node built from Maven Central jars.

`pom.xml` beside this file pins the Kafka version; Maven resolves it and its
dependencies into a cache outside the source tree (`LEADFLOW_CACHE_DIR`, by
default `~/.cache/leadflow`). The broker runs as combined broker+controller
bound to 127.0.0.1, with its data, log and pid file under one home folder.
It is stopped by the pid it was started with, never by name.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from leadflow.errors import FatalError

READY_LINE = "Kafka Server started"


def cache_root() -> Path:
    return Path(os.environ.get("LEADFLOW_CACHE_DIR", Path.home() / ".cache" / "leadflow"))


def _pom_text() -> str:
    return resources.files("leadflow_tools.broker").joinpath("pom.xml").read_text("utf-8")


def ensure_jars(progress: bool = True) -> Path:
    """The folder of broker jars, resolved by Maven on first use and cached by pom digest."""
    pom = _pom_text()
    digest = hashlib.sha256(pom.encode()).hexdigest()[:12]
    libs = cache_root() / f"kafka-{digest}" / "libs"
    stamp = libs / ".complete"
    if stamp.exists():
        return libs
    if shutil.which("mvn") is None:
        raise FatalError("Maven (mvn) is needed once to fetch the Kafka broker jars")
    if shutil.which("java") is None:
        raise FatalError("Java 17 or newer is needed to run the Kafka broker")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(pom, "utf-8")
    if libs.exists():
        shutil.rmtree(libs)
    if progress:
        print(f"fetching the Kafka broker jars into {libs} (once) ...", flush=True)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise FatalError(f"Maven could not fetch the Kafka jars:\n{result.stdout}{result.stderr}")
    stamp.write_text(digest)
    return libs


def _cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, as Kafka's own tool makes it.

    Ids that start with "-" are valid but read like options to some tools; leadflow
    draws again rather than hand one out.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process was already given.

    The OS may hand the same ephemeral port to two binds in a row once the
    first socket is closed; a broker given it for both its listeners fails.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass(frozen=True)
class LocalKafka:
    """One broker's home folder and ports. Every method is safe to call repeatedly."""

    home: Path
    port: int = 19092
    controller_port: int = 19093
    heap: str = "512m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        return (
            f"running (pid {pid}, {self.bootstrap})"
            if port_open(self.port)
            else f"starting (pid {pid})"
        )

    def _write_config(self) -> Path:
        config = self.home / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir.resolve()}",
                    "num.partitions=4",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            ),
            "utf-8",
        )
        return config

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        log4j = resources.files("leadflow_tools.broker").joinpath("log4j2.yaml")
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={log4j}",
            "-Djava.awt.headless=true",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the broker unless it runs; return once it accepts connections."""
        running = self.pid()
        if running is not None:
            self._wait_ready(running, timeout_s, since=0)
            return
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise FatalError(
                    f"port {port} is taken by another program; "
                    "set KAFKA_LOCAL_PORT / KAFKA_LOCAL_CONTROLLER_PORT"
                )
        libs = ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            formatted = subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    # `=` keeps an id that starts with "-" from reading as an option.
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(config),
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise FatalError(f"formatting Kafka storage failed:\n{formatted.stderr}")
        since = self.log_file.stat().st_size if self.log_file.exists() else 0
        # Launched through sh so the broker is not our child: it outlives `kafka start`,
        # and no process of ours holds a handle to it. It is stopped by its pid.
        launcher = subprocess.run(
            [
                "sh",
                "-c",
                'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!',
                "sh",
                str(self.log_file),
                *self._java(libs, "kafka.Kafka", str(config)),
            ],
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
        )
        pid = int(launcher.stdout.strip())
        self.pid_file.write_text(str(pid))
        self._wait_ready(pid, timeout_s, since=since)

    def _wait_ready(self, pid: int, timeout_s: float, since: int) -> None:
        """Wait for the port and, in the log written since `since`, the ready line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise FatalError(
                    f"the Kafka broker exited; see {self.log_file}:\n" + self.tail_log(30)
                )
            if port_open(self.port) and READY_LINE in self._log_since(since):
                return
            time.sleep(0.2)
        raise FatalError(
            f"the Kafka broker did not start within {timeout_s:.0f}s; see {self.log_file}"
        )

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker by its pid (SIGTERM, then SIGKILL). True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail_log(self, lines: int = 50) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
