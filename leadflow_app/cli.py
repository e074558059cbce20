"""The `leadflow` command. Each verb builds the settings once and hands them down.

leadflow up                         the local stack with sample leads (Ctrl-C stops it)
leadflow kafka start|stop|status|logs   the project's own Kafka broker
leadflow worker                     the Faust worker (stream stages)
leadflow serve [--roles ...]        HTTP adapters, ClickHouse writer, query API, notifier
leadflow migrate                    apply ClickHouse migrations and exit
leadflow keys create|list|revoke|env  API keys with scopes (shown once, stored hashed)
leadflow leads [--email ...]        leads as ClickHouse holds them (asks a running server)
leadflow explain LEAD_ID            why a lead was merged, scored and routed
leadflow funnel --from D --to D      the funnel: --by source, --mode strict|any, --format csv
leadflow pipeline [--as-of TS]      count, amount, weighted amount per stage
leadflow upload FILE --event NAME  a trade-show export onto leads.raw, with a summary
leadflow schemas [--out DIR]        JSON Schema of every message
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib
import importlib.util
import json
import logging
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from rich.console import Console

from leadflow.errors import BadRecordError, FatalError, LeadflowError
from leadflow.settings import SCOPES, Settings, load_settings
from schemas.limits import configure as configure_limits


def _bootstrap(settings: Settings) -> str:
    """The cluster to use: KAFKA_BOOTSTRAP, else the project's broker (which must be running)."""
    if settings.kafka.bootstrap:
        return settings.kafka.bootstrap
    return f"127.0.0.1:{settings.kafka.local_port}"


def cmd_worker(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from streams.app import run_worker

    run_worker(settings, _bootstrap(settings), loglevel=args.loglevel)
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.server import Roles, serve

    roles = Roles.parse(args.roles.split(","))
    asyncio.run(serve(settings, _bootstrap(settings), roles))
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from sinks.clickhouse.client import ClickHouse
    from sinks.clickhouse.layout import Layout
    from sinks.clickhouse.migrations import migrate

    async def run() -> list[str]:
        clickhouse = ClickHouse(
            settings.clickhouse_dsn,
            settings.clickhouse.database,
            Layout.from_settings(settings.clickhouse),
            settings.clickhouse.ca_cert,
        )
        try:
            return await migrate(clickhouse)
        finally:
            await clickhouse.close()

    applied = asyncio.run(run())
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _key_header(settings: Settings) -> dict[str, str]:
    """The CLI's credential: LEADFLOW_API_KEY, else the key `leadflow up` made here."""
    from leadflow.auth import local_key

    key = local_key(settings)
    return {"Authorization": f"Bearer {key}"} if key else {}


def cmd_keys(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Create, list and revoke API keys in the keys file the server reads."""
    from rich.table import Table

    from leadflow import auth

    path = auth.keys_file(settings)
    if args.action == "create":
        if not args.scope:
            console.print(f"[red]give at least one --scope ({', '.join(SCOPES)})[/]")
            return 2
        key, entry = auth.add_key(path, args.name, args.scope)
        console.print(f"added key {entry.id} ({args.name}) to {path}", highlight=False)
        console.print(
            f"key (shown once, store it as a secret): [bold]{key}[/]\n"
            f"scopes: {', '.join(entry.scopes)}; send it as Authorization: Bearer <key>",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    if args.action == "revoke":
        if not args.id:
            console.print("[red]give the key's id (leadflow keys list)[/]")
            return 2
        if not auth.revoke_key(path, args.id):
            console.print(f"[red]no key {args.id} in {path}[/]", highlight=False)
            return 1
        console.print(f"revoked key {args.id}; servers stop taking it within a second")
        return 0
    if args.action == "env":  # the line alone on stdout: `leadflow keys env > leadflow.env`
        print(auth.env_line([*settings.auth.keys, *auth.read_keys_file(path)]), flush=True)
        return 0
    table = Table(title=f"API keys ({path}; AUTH_KEYS adds {len(settings.auth.keys)})")
    for column in ("id", "name", "scopes", "created", "from"):
        table.add_column(column)
    for entry, origin in [(e, "AUTH_KEYS") for e in settings.auth.keys] + [
        (e, "keys file") for e in auth.read_keys_file(path)
    ]:
        created = entry.created_at.isoformat() if entry.created_at else ""
        table.add_row(entry.id, entry.name, ", ".join(entry.scopes), created, origin)
    console.print(table)
    return 0


def _ask_server(
    settings: Settings, args: argparse.Namespace, path: str, console: Console
) -> dict[str, Any] | None:
    """GET a query route of the running server. None when the answer was already printed
    (`--format json` or `csv`); otherwise the answer, for a rendering for people."""
    from leadflow_app.client import http_json

    base = args.url or f"http://{settings.http.host}:{settings.http.port}"
    status, answer = http_json("GET", base + path, headers=_key_header(settings))
    if status != 200:
        console.print(f"[red]{status}[/] {answer.get('message', answer)}")
        raise SystemExit(1)
    if args.format == "json":
        print(json.dumps(answer, ensure_ascii=False, indent=2))
        return None
    if args.format == "csv":
        from ingest_adapters.tradeshow import neutralise_cell

        rows = answer.get("rows") or answer.get("leads") or []
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        # Text that a spreadsheet would run as a formula (a source or campaign named
        # "=HYPERLINK(…)") gets a leading ' (OWASP CSV injection); numbers stay numbers.
        writer.writerows(
            {k: neutralise_cell(v) if isinstance(v, str) else v for k, v in row.items()}
            for row in rows
        )
        return None
    return answer


def cmd_leads(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.views import lead_table

    query = {
        k: v
        for k, v in (
            ("email", args.email),
            ("phone", args.phone),
            ("lead_id", args.lead_id),
            ("limit", str(args.limit)),
        )
        if v
    }
    answer = _ask_server(settings, args, f"/v1/leads?{urllib.parse.urlencode(query)}", console)
    if answer is not None:
        title = f"leads ({len(answer['leads'])} of {answer['total']})"
        console.print(lead_table(answer["leads"], title))
    return 0


def cmd_erase(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Erase a person through the running server and print what was erased."""
    from rich.table import Table

    from leadflow_app.client import http_json

    who = {
        k: v
        for k, v in (("email", args.email), ("phone", args.phone), ("lead_id", args.lead_id))
        if v
    }
    if not who:
        console.print("[red]give --email, --phone or --lead-id[/]")
        return 2
    body: dict[str, Any] = dict(who)
    if args.country:
        body["country"] = args.country
    if args.dry_run:
        body["dry_run"] = True
    headers = {"Content-Type": "application/json", **_key_header(settings)}
    base = args.url or f"http://{settings.http.host}:{settings.http.port}"
    status, report = http_json(
        "POST", base + "/v1/privacy/erase", json.dumps(body).encode(), headers, timeout_s=600
    )
    if status != 200:
        console.print(f"[red]{status}[/] {report.get('message', report)}")
        return 1
    if args.format == "json":
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    verb = "would erase (dry run, nothing changed)" if report.get("dry_run") else "erased"
    table = Table(
        title=f"{verb} {', '.join(f'{k} {v}' for k, v in who.items())}", show_header=False
    )
    table.add_column("what")
    table.add_column("how many", justify="right")
    table.add_row("leads (merged records included)", str(len(report["lead_ids"])))
    table.add_row("identifiers suppressed", str(report["identifiers_suppressed"]))
    table.add_row("state erase commands", str(report["state_erase_commands"]))
    for name, count in report["rows_deleted"].items():
        table.add_row(f"rows deleted from {name}", str(count))
    for topic, count in report["dead_letters_tombstoned"].items():
        table.add_row(f"dead letters tombstoned on {topic}", str(count))
    console.print(table)
    return 0


def cmd_duplicates(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Suggested duplicates: pairs to look at, with the ids `merge` takes."""
    from rich.table import Table

    answer = _ask_server(settings, args, f"/v1/duplicates?limit={args.limit}", console)
    if answer is None:
        return 0
    table = Table(title=f"suggested duplicates ({len(answer['duplicates'])})")
    for column in ("lead", "name", "email", "other lead", "name ", "email ", "rule", "score"):
        table.add_column(column, overflow="fold")
    for pair in answer["duplicates"]:
        lead, other = pair["lead"], pair["other"]
        table.add_row(
            lead["lead_id"],
            lead["full_name"],
            lead["email"],
            other["lead_id"],
            other["full_name"],
            other["email"],
            pair["rule"],
            f"{pair['score']:g}",
        )
    console.print(table)
    if answer["duplicates"]:
        console.print("merge a pair: leadflow merge LEAD --with OTHER_LEAD")
    return 0


def _post_command(
    settings: Settings,
    args: argparse.Namespace,
    verb: str,
    body: dict[str, Any] | None,
    console: Console,
) -> dict[str, Any] | None:
    """POST `/v1/leads/{args.lead_id}/{verb}` to the running server: its 202 answer, or
    None once the refusal was printed."""
    from leadflow_app.client import http_json

    base = args.url or f"http://{settings.http.host}:{settings.http.port}"
    path = f"/v1/leads/{urllib.parse.quote(args.lead_id, safe='')}/{verb}"
    headers = {"Content-Type": "application/json", **_key_header(settings)}
    data = json.dumps(body).encode() if body is not None else None
    status, answer = http_json("POST", base + path, data, headers)
    if status != 202:
        console.print(f"[red]{status}[/] {answer.get('message', answer)}")
        return None
    return answer


def cmd_merge(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    answer = _post_command(settings, args, "merge", {"with": args.other}, console)
    if answer is None:
        return 1
    console.print(
        f"merging {answer['merged_id']} into {answer['survivor_id']} (the lead that came "
        f"first keeps its id and owner); event {answer['event_id']}"
    )
    return 0


def cmd_unmerge(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    answer = _post_command(settings, args, "unmerge", None, console)
    if answer is None:
        return 1
    console.print(
        f"unmerging {answer['lead_id']} from {answer['survivor_id']}: both leads come back "
        f"with their own touches and owners; event {answer['event_id']}"
    )
    return 0


def cmd_explain(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.views import explain_panels

    path = f"/v1/leads/{urllib.parse.quote(args.lead_id)}/explain"
    answer = _ask_server(settings, args, path, console)
    for panel in explain_panels(answer) if answer is not None else []:
        console.print(panel)
    return 0


def cmd_funnel(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.views import funnel_table

    query = {
        "from": args.start,
        "to": args.end,
        "mode": args.mode,
        "kind": args.kind,
        "window_days": str(args.window_days),
    }
    if args.by:
        query["by"] = args.by
    answer = _ask_server(settings, args, f"/v1/funnel?{urllib.parse.urlencode(query)}", console)
    if answer is not None:
        what = (
            "leads entering each stage"
            if args.kind == "activity"
            else f"cohort funnel ({args.mode} order, {args.window_days}-day window)"
        )
        console.print(funnel_table(answer, f"{what}, {args.start} to {args.end}"))
    return 0


def cmd_pipeline(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.views import pipeline_table

    query = {k: v for k, v in (("as_of", args.as_of), ("by", args.by)) if v}
    answer = _ask_server(settings, args, f"/v1/pipeline?{urllib.parse.urlencode(query)}", console)
    if answer is not None:
        console.print(pipeline_table(answer))
    return 0


def cmd_nurture(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.views import nurture_table, tasks_table

    if args.what == "tasks":
        query = {"as_of": args.as_of} if args.as_of else {}
        path = f"/v1/nurture/tasks?{urllib.parse.urlencode(query)}"
        answer = _ask_server(settings, args, path, console)
        if answer is not None:
            console.print(tasks_table(answer))
        return 0
    query = {"sequence": args.sequence} if args.sequence else {}
    path = f"/v1/nurture/sequences?{urllib.parse.urlencode(query)}"
    answer = _ask_server(settings, args, path, console)
    if answer is not None:
        console.print(nurture_table(answer))
    return 0


def cmd_scoring(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from leadflow_app.views import evaluation_table

    if args.what == "backtest":
        return _backtest(settings, args, console)
    path = f"/v1/scoring/evaluation?by={args.by}"
    answer = _ask_server(settings, args, path, console)
    if answer is not None:
        console.print(evaluation_table(answer))
    return 0


def _backtest(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from datetime import UTC, datetime

    from rich.table import Table

    from leadflow.rules import load_rules
    from leadflow_app.scoring_backtest import backtest

    if not args.start or not args.end:
        console.print("[red]backtest needs --from and --to (ISO dates)[/]")
        return 2
    try:
        start, end = (datetime.fromisoformat(v) for v in (args.start, args.end))
    except ValueError as exc:
        console.print(f"[red]--from/--to must be ISO dates: {exc}[/]")
        return 2
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
    model = load_rules(settings.worker.rules_dir).scoring.model
    with console.status("replaying the outcomes ..."):
        report = asyncio.run(backtest(settings, _bootstrap(settings), start, end, model))
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"backtest {args.start} .. {args.end}: {report['judged']} outcomes judged")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in (
        "learned_before_end",
        "won",
        "model_auc",
        "rules_auc",
        "combined_auc",
        "model_log_loss",
        "unreadable",
    ):
        table.add_row(key.replace("_", " "), "—" if report[key] is None else str(report[key]))
    console.print(table)
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from ingest_adapters.social.backfill import backfill

    if not args.file.is_file():
        console.print(f"[red]error:[/] no such file: {args.file}")
        return 2
    try:
        summary = asyncio.run(backfill(settings, _bootstrap(settings), args.file))
    except BadRecordError as exc:
        console.print(f"[red]error:[/] {args.file.name}: {exc.message}")
        return 2
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(summary.rejected.items())) or "none"
    console.print(f"{summary.file}: {summary.published:,} leads published; rejected: {rejected}")
    return 0


def cmd_upload(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from ingest_adapters.tradeshow import parse_timezone
    from ingest_adapters.upload import UploadRefusedError, problems_table, summary_table, upload

    if not args.file.is_file():
        console.print(f"[red]error:[/] no such file: {args.file}")
        return 2
    errors_out: Path | None = args.errors_out
    try:
        zone = parse_timezone(args.timezone)
    except BadRecordError as exc:
        console.print(f"[red]error:[/] --timezone: {exc.message}")
        return 2
    try:
        summary = asyncio.run(
            upload(
                settings,
                _bootstrap(settings),
                args.file,
                args.event,
                args.mapping,
                console,
                errors_out=errors_out,
                timezone=zone,
            )
        )
    except UploadRefusedError as exc:
        console.print(f"[red]error:[/] {args.file.name}: {exc.message} (dead-lettered)")
        if errors_out is not None and exc.summary.problem_rows:
            console.print(f"rows rejected or warned before that: {errors_out}")
        return 2
    except BadRecordError as exc:
        console.print(f"[red]error:[/] {args.file.name}: {exc.message} (dead-lettered)")
        return 2
    console.print(summary_table(summary))
    problems = problems_table(summary)
    if problems is not None:
        console.print(problems)
    if errors_out is not None:
        if summary.problem_rows:
            console.print(
                f"{summary.problem_rows:,} rejected or warned rows written to {errors_out} "
                "(original columns and a reason; fix them and upload that file)"
            )
        elif not summary.already_uploaded_at:
            console.print(f"no row was rejected or warned; {errors_out} not written")
    return 0


def cmd_schemas(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from schemas import json_schemas

    documents = json_schemas()
    if args.out is None:
        print(json.dumps(documents, indent=2, ensure_ascii=False))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in documents.items():
        (args.out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    console.print(f"wrote {len(documents)} schemas to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    worker = verbs.add_parser("worker", help="run the Faust worker")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(fn=cmd_worker)

    serve = verbs.add_parser("serve", help="run HTTP adapters, ClickHouse writer, query API")
    serve.add_argument(
        "--roles",
        default="adapters,sink,query,notifier",
        help="comma-separated: adapters, sink, query, notifier",
    )
    serve.set_defaults(fn=cmd_serve)

    verbs.add_parser("migrate", help="apply ClickHouse migrations").set_defaults(fn=cmd_migrate)

    keys = verbs.add_parser(
        "keys",
        help="API keys: create (shown once), list, revoke, env (AUTH_KEYS=… for an env file)",
        description="Keys live hashed in the keys file (AUTH_KEYS_FILE, default keys.json in "
        "the data dir) or in AUTH_KEYS. Scopes: " + ", ".join(SCOPES) + ".",
    )
    keys.add_argument("action", choices=["create", "list", "revoke", "env"])
    keys.add_argument("id", nargs="?", help="revoke: the key's id")
    keys.add_argument("--name", default="unnamed", help="create: who uses the key")
    keys.add_argument("--scope", action="append", choices=SCOPES, help="create: repeatable")
    keys.set_defaults(fn=cmd_keys)

    leads = verbs.add_parser("leads", help="show leads from ClickHouse via a running server")
    leads.add_argument("--email")
    leads.add_argument("--phone")
    leads.add_argument("--lead-id")
    leads.add_argument("--limit", type=int, default=20)
    leads.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    leads.add_argument("--format", choices=["table", "json"], default="table")
    leads.set_defaults(fn=cmd_leads)

    erase = verbs.add_parser("erase", help="erase a person everywhere (GDPR / PIPL)")
    whom = erase.add_mutually_exclusive_group()
    whom.add_argument("--email")
    whom.add_argument("--phone")
    whom.add_argument("--lead-id")
    erase.add_argument("--country", help="region of a phone given in national format, e.g. US")
    erase.add_argument(
        "--dry-run", action="store_true", help="show what would be erased; change nothing"
    )
    erase.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    erase.add_argument("--format", choices=["table", "json"], default="table")
    erase.set_defaults(fn=cmd_erase)

    duplicates = verbs.add_parser(
        "duplicates", help="suggested duplicates: similar leads whose email or phone differ"
    )
    duplicates.add_argument("--limit", type=int, default=50)
    duplicates.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    duplicates.add_argument("--format", choices=["table", "json"], default="table")
    duplicates.set_defaults(fn=cmd_duplicates)

    merge = verbs.add_parser("merge", help="merge two leads you know are one person")
    merge.add_argument("lead_id")
    merge.add_argument("--with", dest="other", required=True, help="the other lead's id")
    merge.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    merge.set_defaults(fn=cmd_merge)

    unmerge = verbs.add_parser("unmerge", help="undo the merge of a lead")
    unmerge.add_argument("lead_id", help="the lead that was merged into another")
    unmerge.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    unmerge.set_defaults(fn=cmd_unmerge)

    explain = verbs.add_parser("explain", help="why a lead was merged, scored and routed")
    explain.add_argument("lead_id")
    explain.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(fn=cmd_explain)

    funnel = verbs.add_parser("funnel", help="the funnel for a cohort or an activity period")
    funnel.add_argument("--from", dest="start", required=True, help="ISO date, e.g. 2026-03-01")
    funnel.add_argument("--to", dest="end", required=True, help="ISO date, exclusive")
    funnel.add_argument("--by", choices=["channel", "source", "campaign", "team", "owner"])
    funnel.add_argument("--mode", choices=["any", "strict"], default="any")
    funnel.add_argument("--window-days", type=int, default=90)
    funnel.add_argument("--kind", choices=["cohort", "activity"], default="cohort")
    funnel.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    funnel.add_argument("--format", choices=["table", "json", "csv"], default="table")
    funnel.set_defaults(fn=cmd_funnel)

    pipeline = verbs.add_parser("pipeline", help="count and amount per stage, now or as of")
    pipeline.add_argument("--as-of", help="ISO time; default: now")
    pipeline.add_argument("--by", choices=["channel", "source", "campaign", "team", "owner"])
    pipeline.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    pipeline.add_argument("--format", choices=["table", "json", "csv"], default="table")
    pipeline.set_defaults(fn=cmd_pipeline)

    nurture = verbs.add_parser(
        "nurture", help="follow-up sequences: `status` (steps), `tasks` (calls per rep)"
    )
    nurture.add_argument("what", choices=["status", "tasks"])
    nurture.add_argument("--sequence", help="status: one sequence only")
    nurture.add_argument("--as-of", help="tasks: ISO time; default: now")
    nurture.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    nurture.add_argument("--format", choices=["table", "json", "csv"], default="table")
    nurture.set_defaults(fn=cmd_nurture)

    scoring = verbs.add_parser(
        "scoring",
        help="the learned score: `status` (AUC of model and rules on its outcomes), "
        "`backtest --from D --to D` (replayed with today's settings)",
    )
    scoring.add_argument("what", choices=["status", "backtest"])
    scoring.add_argument("--by", choices=["version", "week"], default="version")
    scoring.add_argument("--from", dest="start", help="backtest: ISO date, inclusive")
    scoring.add_argument("--to", dest="end", help="backtest: ISO date, exclusive")
    scoring.add_argument("--url", help="server base URL (default: from HTTP_HOST/HTTP_PORT)")
    scoring.add_argument("--format", choices=["table", "json", "csv"], default="table")
    scoring.set_defaults(fn=cmd_scoring)

    upload = verbs.add_parser("upload", help="publish a trade-show export (CSV or XLSX)")
    upload.add_argument("file", type=Path)
    upload.add_argument("--event", required=True, help="the trade show, e.g. 'CIIE 2026'")
    upload.add_argument("--mapping", type=Path, help="YAML: column in the file: field name")
    upload.add_argument(
        "--errors-out",
        type=Path,
        metavar="FILE",
        help="write the rejected and warned rows here as CSV (their columns and a reason)",
    )
    upload.add_argument(
        "--timezone",
        default="UTC",
        help="zone of scan times written without an offset: Asia/Shanghai, +08:00 (default UTC)",
    )
    upload.set_defaults(fn=cmd_upload)

    backfill = verbs.add_parser(
        "backfill", help="publish a Meta Ads Manager lead export (leads a webhook missed)"
    )
    backfill.add_argument("file", type=Path)
    backfill.set_defaults(fn=cmd_backfill)

    schemas = verbs.add_parser("schemas", help="print or write JSON Schemas")
    schemas.add_argument("--out", type=Path)
    schemas.set_defaults(fn=cmd_schemas)
    _tool_verbs(verbs)
    return parser


TOOL_VERBS = {
    "up": "run the local stack with sample leads",
    "kafka": "the project's own Kafka broker",
    "bench": "benchmarks that print figures",
}


def tools_installed() -> bool:
    return importlib.util.find_spec("leadflow_tools") is not None


def _tool_verbs(verbs: Any) -> None:
    """`up`, `kafka` and `bench` come with the development tools (`leadflow_tools`, in a
    source checkout), which plug them in; an installation without them (the production
    image) still lists them, and says why they cannot run."""
    if tools_installed():
        importlib.import_module("leadflow_tools.verbs").register(verbs)
        return
    for name, what in TOOL_VERBS.items():
        stub = verbs.add_parser(name, help=f"{what} (development tools: not installed here)")
        stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        stub.set_defaults(fn=_no_tools)


def _no_tools(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    console.print(
        f"[red]error:[/] `leadflow {args.verb}` is a development tool, not installed here "
        "(the production image ships without them): run it from a source checkout "
        "(`make up`, `make bench`)."
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    console = Console(stderr=False)
    try:
        settings = load_settings()
        configure_limits(settings.limits)  # every verb validates input with the same domains
        code: int = args.fn(settings, args, console)
    except FatalError as exc:
        console.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        return 2
    except LeadflowError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
