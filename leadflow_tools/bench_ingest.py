"""`leadflow bench ingest`: `POST /v1/leads/web` under load, beside `GET /healthz`.

Starts a broker of its own (free ports, a temporary folder) and `leadflow serve
--roles adapters` as a child process, then drives both endpoints of that one
server from a loopback load generator: closed-loop aiohttp clients, each
connection sending its next request as soon as the last one was answered,
after a short warm-up. Web-form bodies vary (English and Chinese names and
field labels, Chinese and foreign phone numbers, UTM fields); one in twenty
is wrong on purpose and must be refused with 422 and a dead letter.

The server, the broker and the load generator share this machine's cores, so
each phase also reports the CPU each of them used. The load generator runs in
processes of its own; the run is repeated with one and with two of them.
Figures are printed and written as JSON; the targets are reported, never
asserted. Every process started here is stopped by its pid on the way out,
Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import ceil
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

TARGET_REQ_PER_S = 3000
TARGET_P99_MS = 50.0
WARMUP_S = 2.0
BODY_POOL = 1000
INVALID_EVERY = 20  # one body in twenty is refused by design
_LATENCY_KEYS = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
_CPU_ROLES = ("server", "broker", "load generator", "other programs")
HEALTHZ = "GET /healthz"
WEB_FORM = "POST /v1/leads/web"
BENCH_FORM = "contact-us"  # of the bundled config/forms.yaml
BENCH_FORM_TOKEN = "pk_contact_us_3f9a"  # noqa: S105 - a form's public token, in its page
BENCH_FORM_ORIGIN = "https://www.example.com"

_EN_GIVEN = ("Ada", "Grace", "Alan", "Margaret", "Edsger", "Barbara", "Ken", "Frances", "Donald")
_EN_FAMILY = ("Lovelace", "Hopper", "Turing", "Hamilton", "Dijkstra", "Liskov", "Thompson", "Allen")
_ZH_FAMILY = ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴")
_ZH_GIVEN = ("伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "小明", "建国", "思远")
_RENDERED_AT_MS = 1_764_000_000_000  # long before any post: never "filled too fast"
_CN_MOBILE = ("138", "139", "186", "135", "158", "188", "137", "150", "189", "136")
_EN_COMPANIES = ("Contoso Ltd", "Fabrikam, S.A.", "Northwind Traders", "Example Inc", "Tailspin")
_ZH_COMPANIES = ("示例科技有限公司", "华东贸易股份有限公司", "云图软件（上海）有限公司", "北辰制造")
_TITLES = ("Head of Sales", "CTO", "销售总监", "采购经理", "Marketing Manager", "工程师")
_CAMPAIGNS = (
    ("google", "cpc", "spring_sale"),
    ("baidu", "cpc", "品牌词"),
    ("linkedin", "social", "webinar-2026"),
    ("wechat", "social", "新品发布会"),
    ("newsletter", "email", "november"),
)


@dataclass(frozen=True)
class FormBody:
    """One JSON form post and whether the server must accept it (202) or refuse it (422)."""

    body: bytes
    valid: bool


def _person(n: int) -> tuple[str, str, str]:
    """(name, email, phone) for body `n`: two in three Chinese, the rest English-speaking."""
    mix = (n * 7919) % 10_000
    if n % 3:
        name = f"{_ZH_FAMILY[n % 10]}{_ZH_GIVEN[(n // 10) % 11]}"
        email = f"user{n}@corp{n % 97}.example.cn"
        phone = f"{_CN_MOBILE[n % 10]} {mix:04d} {(n * 31) % 10_000:04d}"
    else:
        name = f"{_EN_GIVEN[n % 9]} {_EN_FAMILY[(n // 9) % 8]}"
        email = f" {name.split()[0]}.{n}@Example.COM "
        abroad = (n // 3) % 3
        phone = ("+1 415 555 {:04d}", "+65 9{:03d} 4567", "+49 151 2345{:04d}")[abroad].format(
            mix % 900 if abroad == 1 else mix
        )
    return name, email, phone


def form_body(n: int) -> FormBody:
    """Body `n` of the pool: field names in the spellings real forms use, in four styles."""
    name, email, phone = _person(n)
    source, medium, campaign = _CAMPAIGNS[n % 5]
    company = (_ZH_COMPANIES if n % 3 else _EN_COMPANIES)[n % 4]
    utm = {"utm_source": source, "utm_medium": medium, "utm_campaign": campaign}
    style = n % 4
    fields: dict[str, Any]
    if style == 0:
        fields = {"name": name, "email": email, "phone": phone, "company": company, **utm}
        fields |= {"title": _TITLES[n % 6], "consent": True, "message": "Please call me back."}
    elif style == 1:
        first, _, last = name.partition(" ")
        fields = {"first_name": first, "last_name": last or first, "Email": email}
        fields |= {"mobile": phone, "company_name": company, "employees": 50 + n % 950, **utm}
    elif style == 2:
        fields = {"姓名": name, "手机": phone, "邮箱": email, "公司": company, "职位": "销售总监"}
        fields |= {"留言": "想了解一下价格，谢谢！", "同意": "是", **utm}
    else:
        fields = {"full_name": name, "email_address": email, "tel": phone}
        fields |= {"organization": company, "page_url": f"https://www.example.com/p/{n % 40}"}
        fields |= {"interests": ["crm", "bi"], "referrer": "https://www.baidu.com/", **utm}
    if n % 2:
        # What an embedded form script adds: an empty honeypot and when the page rendered.
        fields |= {"_hp": "", "_started_at": str(_RENDERED_AT_MS + n)}
    valid = n % INVALID_EVERY != INVALID_EVERY - 1
    if not valid:
        kind = (n // INVALID_EVERY) % 4
        if kind == 0:  # no way to reach the person
            fields = {"name": name, "company": company, **utm}
        elif kind == 1:
            fields = {"name": name, "email": email.strip().replace("@", " at "), **utm}
        elif kind == 2:
            fields = {"name": name, "phone": "12345", **utm}
        else:
            fields = {"name": name, "email": email, "consent": "maybe", **utm}
    return FormBody(json.dumps(fields, ensure_ascii=False).encode(), valid)


def form_bodies(count: int) -> list[FormBody]:
    return [form_body(n) for n in range(count)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`th percentile (0 < q <= 100) of values sorted ascending."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    return sorted_values[max(0, ceil(q / 100 * len(sorted_values)) - 1)]


def summarize(latencies_ms: Sequence[float], window_s: float) -> dict[str, float | int | None]:
    """Requests, rate and latency percentiles of one phase."""
    ordered = sorted(latencies_ms)
    figures: dict[str, float | int | None] = {
        "requests": len(ordered),
        "req_per_s": round(len(ordered) / window_s) if window_s > 0 else None,
    }
    for name, q in zip(_LATENCY_KEYS, (50.0, 95.0, 99.0, 100.0), strict=True):
        figures[name] = round(percentile(ordered, q), 2) if ordered else None
    return figures


@dataclass(frozen=True)
class LoadPlan:
    """What one load process sends: `connections` closed loops against `url`."""

    url: str
    method: str
    headers: dict[str, str]
    forms: bool
    connections: int
    first_body: int


@dataclass
class LoadSample:
    """What one load process saw in the measured window."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    last_done: float = 0.0


async def _connection_loop(
    session: aiohttp.ClientSession,
    plan: LoadPlan,
    bodies: list[FormBody],
    slot: int,
    warm_until: float,
    measure_until: float,
    sample: LoadSample,
) -> None:
    n = plan.first_body + slot
    while (sent_at := time.time()) < measure_until:
        body = bodies[n % len(bodies)] if bodies else None
        n += plan.connections
        started = time.perf_counter()
        try:
            async with session.request(
                plan.method, plan.url, data=body.body if body else None
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            if sent_at >= warm_until:
                sample.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.01)  # a refused connection must not spin this loop
            continue
        latency_ms = (time.perf_counter() - started) * 1000
        if sent_at < warm_until:
            continue
        sample.latencies_ms.append(latency_ms)
        sample.statuses[status] += 1
        expected = 200 if body is None else 202 if body.valid else 422
        sample.unexpected += status != expected
    sample.last_done = max(sample.last_done, time.time())


async def _drive(plan: LoadPlan, warm_until: float, measure_until: float) -> LoadSample:
    bodies = form_bodies(BODY_POOL) if plan.forms else []
    sample = LoadSample()
    connector = aiohttp.TCPConnector(limit=plan.connections)
    async with aiohttp.ClientSession(
        connector=connector, headers=plan.headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        await asyncio.gather(
            *(
                _connection_loop(session, plan, bodies, slot, warm_until, measure_until, sample)
                for slot in range(plan.connections)
            )
        )
    return sample


def _load_process(plan: LoadPlan, pipe: Connection) -> None:
    """A load process: say ready, take the schedule, run it, send back what it saw."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, by pid
    pipe.send("ready")
    warm_until, measure_until = pipe.recv()
    pipe.send(asyncio.run(_drive(plan, warm_until, measure_until)))


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all cores since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes, and `ticks` of the whole machine."""
    snapshot = {role: sum(_cpu_seconds(p) or 0.0 for p in group) for role, group in pids.items()}
    ticks = _machine_ticks()
    if ticks is not None:
        snapshot["machine busy"], snapshot["machine total"] = ticks
    return snapshot


def cpu_percent(
    before: dict[str, float], after: dict[str, float], seconds: float, cpus: int
) -> dict[str, int]:
    """Each role's CPU over the window, the whole machine's, and what other programs took;
    all in % of one core (so up to 100 × cpus)."""
    use = {
        role: round(100 * (after[role] - before[role]) / seconds)
        for role in after
        if not role.startswith("machine")
    }
    total = after.get("machine total", 0) - before.get("machine total", 0)
    if total > 0:
        busy = round(100 * cpus * (after["machine busy"] - before["machine busy"]) / total)
        use["machine"] = busy
        use["other programs"] = max(0, busy - sum(v for k, v in use.items() if k != "machine"))
    return use


def _receive(pipe: Connection, timeout_s: float, what: str) -> Any:
    try:
        if pipe.poll(timeout_s):
            return pipe.recv()
    except EOFError:
        pass
    raise RuntimeError(f"a load process did not {what}")


def _run_phase(
    endpoint: str,
    base_url: str,
    connections: int,
    processes: int,
    seconds: float,
    pids: dict[str, int],
    started: list[BaseProcess],
) -> dict[str, Any]:
    """Drive one endpoint for `seconds` after a warm-up; return its figures."""
    context = multiprocessing.get_context("spawn")
    forms = endpoint == WEB_FORM
    method, path = endpoint.split(" ", 1)
    headers = (
        {
            "Content-Type": "application/json",
            # A browser's post from the form's page: its public token and an origin the
            # form lists in config/forms.yaml (without them every answer is a 401).
            "Origin": BENCH_FORM_ORIGIN,
            "X-Form-Token": BENCH_FORM_TOKEN,
            "User-Agent": "leadflow-bench",
        }
        if forms
        else {"User-Agent": "leadflow-bench"}
    )
    if forms:
        path += f"?form_id={BENCH_FORM}"
    pipes: list[Connection] = []
    workers: list[BaseProcess] = []
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    for i, share in enumerate(shares):
        ours, theirs = context.Pipe()
        plan = LoadPlan(base_url + path, method, headers, forms, share, first_body=i * share)
        worker = context.Process(
            target=_load_process, args=(plan, theirs), name=f"leadflow-bench-load-{i}", daemon=True
        )
        worker.start()
        started.append(worker)
        workers.append(worker)
        theirs.close()
        pipes.append(ours)
    for pipe in pipes:
        _receive(pipe, 120, "start")
    warm_until = time.time() + WARMUP_S
    measure_until = warm_until + seconds
    for pipe in pipes:
        pipe.send((warm_until, measure_until))
    watched = {
        "server": [pids["server"]],
        "broker": [pids["broker"]],
        "load generator": [w.pid for w in workers if w.pid is not None],
    }
    time.sleep(max(0.0, warm_until - time.time()))
    cpu_before = cpu_snapshot(watched)
    time.sleep(max(0.0, measure_until - time.time()))
    cpu_after = cpu_snapshot(watched)
    samples: list[LoadSample] = [_receive(pipe, 60, "report") for pipe in pipes]
    for finished in workers:
        finished.join(10)
    latencies = [ms for s in samples for ms in s.latencies_ms]
    statuses: Counter[int] = sum((s.statuses for s in samples), Counter())
    errors: Counter[str] = sum((s.errors for s in samples), Counter())
    window_s = max(s.last_done for s in samples) - warm_until
    cpu = cpu_percent(cpu_before, cpu_after, seconds, os.cpu_count() or 1)
    return {
        "endpoint": endpoint,
        "load_processes": processes,
        **summarize(latencies, window_s),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "unexpected_status": sum(s.unexpected for s in samples),
        "client_errors": dict(errors),
        "cpu_percent": cpu,
        # What one answer costs the server, whoever else shares the cores: its ceiling.
        "server_cpu_ms_per_request": round(
            1000 * (cpu_after["server"] - cpu_before["server"]) / len(latencies), 3
        )
        if latencies
        else None,
    }


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
    }


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_ingest_bench(
    seconds: float, connections: int, load_processes: Sequence[int], console: Console
) -> dict[str, Any]:
    """Broker, server, then each endpoint with each count of load processes; stop all."""
    from leadflow.errors import FatalError
    from leadflow_tools.broker.local import LocalKafka, free_port
    from leadflow_tools.stack import Child, spawn, wait_healthy

    server: Child | None = None
    workers: list[BaseProcess] = []
    results: list[dict[str, Any]] = []
    # Ctrl-C, kill -INT (even when started with SIGINT ignored, as a background job) and
    # SIGTERM all end the run through the clean-up below.
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    with tempfile.TemporaryDirectory(prefix="leadflow-bench-ingest-") as folder:
        broker = LocalKafka(Path(folder) / "kafka", port=free_port(), controller_port=free_port())
        try:
            with console.status("starting a broker for the run ..."):
                broker.start()
            port = free_port()
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP": broker.bootstrap,
                "KAFKA_TOPIC_PREFIX": "bench.",
                "LEADFLOW_DATA_DIR": folder,
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(port),
                # One client address sends everything here; the per-address limit would
                # answer 429 after the first hundred posts, and the limiter is not measured.
                "WEB_RATE_PER_S": "1000000000",
                "WEB_RATE_BURST": "1000000000",
            }
            base_url = f"http://127.0.0.1:{port}"
            server = spawn("serve", ["serve", "--roles", "adapters"], env, Path(folder) / "logs")
            with console.status("starting leadflow serve --roles adapters ..."):
                try:
                    wait_healthy(base_url, [server])
                except FatalError as exc:
                    raise FatalError(f"{exc}\n{server.log_path.read_text()[-3000:]}") from exc
            broker_pid = broker.pid()
            assert broker_pid is not None
            pids = {"server": server.process.pid, "broker": broker_pid}
            for processes in load_processes:
                for endpoint in (HEALTHZ, WEB_FORM):
                    with console.status(
                        f"{endpoint}: {connections} connections from {processes} load "
                        f"process(es), {WARMUP_S:.0f} s warm-up + {seconds:.0f} s ..."
                    ):
                        results.append(
                            _run_phase(
                                endpoint, base_url, connections, processes, seconds, pids, workers
                            )
                        )
                    if server.process.poll() is not None:
                        raise FatalError(
                            "the server exited during the run:\n"
                            + server.log_path.read_text()[-3000:]
                        )
        finally:
            # A second Ctrl-C must not cut the clean-up short.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
                worker.join(10)
            if server is not None:
                server.stop()
            broker.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return _report(seconds, connections, results, console)


def _ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Web-form req/s over healthz req/s, per count of load processes."""
    rates = {(r["endpoint"], r["load_processes"]): r["req_per_s"] for r in results}
    ratios: dict[str, float | None] = {}
    for (endpoint, processes), rate in rates.items():
        base = rates.get((HEALTHZ, processes))
        if endpoint == WEB_FORM:
            ratios[str(processes)] = round(rate / base, 2) if rate and base else None
    return ratios


def _report(
    seconds: float, connections: int, results: list[dict[str, Any]], console: Console
) -> dict[str, Any]:
    machine = _machine()
    forms = [r for r in results if r["endpoint"] == WEB_FORM]
    best = max(forms, key=lambda r: r["req_per_s"] or 0, default=None)
    met = bool(
        best
        and (best["req_per_s"] or 0) >= TARGET_REQ_PER_S
        and best["p99_ms"] is not None
        and best["p99_ms"] <= TARGET_P99_MS
    )
    ratios = _ratios(results)
    report = {
        "machine": machine,
        "seconds": seconds,
        "warmup_seconds": WARMUP_S,
        "connections": connections,
        "kafka_acks": "all",
        "results": results,
        "web_form_over_healthz": ratios,
        "targets": {"req_per_s": TARGET_REQ_PER_S, "p99_ms": TARGET_P99_MS, "met": met},
    }
    table = Table(
        title=f"ingest endpoints of one server, {connections} connections, {seconds:.0f} s "
        f"each after {WARMUP_S:.0f} s warm-up, Kafka acks=all",
        caption=f"server, broker and load generator share the {machine['cpus']} cores "
        f"of this machine ({machine['cpu_model']}); CPU in % of one core",
    )
    for column in ("endpoint", "load procs", "req/s", "p50", "p95", "p99", "max (ms)"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for column in ("answers", "CPU: server / broker / load / others", "server ms/req"):
        table.add_column(column, justify="left" if column == "answers" else "right")
    for r in results:
        cpu = r["cpu_percent"]
        answers = [f"{count:,}×{status}" for status, count in r["statuses"].items()]
        answers += [f"{count:,}×{error}" for error, count in r["client_errors"].items()]
        table.add_row(
            r["endpoint"],
            str(r["load_processes"]),
            f"{r['req_per_s'] or 0:,}",
            *(f"{r[k]:.1f}" if r[k] is not None else "-" for k in _LATENCY_KEYS),
            " ".join(answers),
            " / ".join(str(cpu.get(k, "-")) for k in _CPU_ROLES),
            f"{r['server_cpu_ms_per_request'] or 0:.2f}",
        )
    console.print(table)
    for processes, ratio in ratios.items():
        console.print(f"web form ÷ healthz with {processes} load process(es): {ratio}")
    if best is not None:
        console.print(
            f"targets ≥ {TARGET_REQ_PER_S:,} req/s and p99 ≤ {TARGET_P99_MS:.0f} ms: "
            + ("[green]met[/]" if met else "[yellow]not met[/]")
            + f" (best web-form run: {best['req_per_s'] or 0:,} req/s, p99 {best['p99_ms']} ms)"
        )
    unexpected = sum(r["unexpected_status"] for r in results)
    if unexpected:
        console.print(f"[red]{unexpected:,} answers had another status than expected[/]")
    return report


def bench_ingest(
    seconds: float,
    connections: int,
    out: Path | None,
    console: Console,
    load_processes: Sequence[int] = (1, 2),
) -> dict[str, Any]:
    report = run_ingest_bench(seconds, connections, load_processes, console)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        console.print(f"figures written to {out}")
    return report
