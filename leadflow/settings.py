"""One frozen settings object, built once at start and passed down.

Every knob of leadflow is read here from the environment (or a `.env` file)
and nowhere else. Sections map to environment variables by their first
underscore: `KAFKA_BOOTSTRAP` sets `kafka.bootstrap`, `CLICKHOUSE_DSN` sets
`clickhouse.dsn`, `HTTP_PORT` sets `http.port`, and so on. The table in
`docs/configuration.md` lists them all; a test checks that docker-compose.yml
only sets variables that exist here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from leadflow.errors import ConfigurationError

DEFAULT_DATA_DIR = Path(".leadflow")


def known_time_zone(value: str) -> str:
    """`value` if it names an IANA time zone (Asia/Shanghai); ValueError otherwise."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


SCOPES = ("ingest", "calls", "crm", "upload", "read:analytics", "read:pii", "admin")
Scope = Literal["ingest", "calls", "crm", "upload", "read:analytics", "read:pii", "admin"]


class ApiKeyEntry(BaseModel):
    """One API key as the server keeps it: never the key, only its SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9]{8,32}$")
    name: str = Field(min_length=1, max_length=100)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[Scope, ...] = Field(min_length=1)
    created_at: datetime | None = None


class _Section(BaseModel):
    # Unknown variables that share a section's prefix (HTTP_PROXY, KAFKA_HEAP_OPTS)
    # belong to other programs; they are ignored rather than rejected.
    model_config = ConfigDict(frozen=True, extra="ignore")


class KafkaSettings(_Section):
    bootstrap: str | None = Field(
        default=None,
        description="host:port list of an existing cluster; unset runs the project's own broker.",
    )
    local_port: int = Field(default=19092, description="Client port of the project's own broker.")
    local_controller_port: int = Field(default=19093, description="KRaft controller port.")
    local_heap: str = Field(default="512m", description="Java heap of the project's own broker.")
    topic_prefix: str = Field(
        default="",
        description="Prepended to every topic and consumer group (isolates tests and tenants).",
    )
    partitions: Annotated[int, Field(ge=1, description="Partitions of each declared topic.")] = 4
    replication_factor: Annotated[int, Field(ge=1, description="Topic replication.")] = 1
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    dlq_retention_days: Annotated[int, Field(ge=1)] = Field(
        default=30, description="Days a dead letter is kept on its topic."
    )
    dlq_segment_ms: Annotated[int, Field(ge=1000)] = Field(
        default=3_600_000,
        description="Segment roll of dead-letter topics: an erased letter is gone within this.",
    )


class ClickHouseSettings(_Section):
    dsn: str | None = Field(
        default=None,
        description="chdb:///path (embedded, the default under the data dir) or http(s)://...",
    )
    database: str = "leadflow"
    ca_cert: str | None = Field(
        default=None, description="CA certificate file that signed an https:// server's cert."
    )
    cluster: str | None = Field(
        default=None,
        description="Cluster name: tables become <name>_local shards behind Distributed <name>.",
    )
    replicated: bool = Field(
        default=True, description="With a cluster, shard tables use Replicated*MergeTree engines."
    )
    ddl_on_cluster: bool = Field(
        default=True,
        description="With a cluster, DDL runs ON CLUSTER; false migrates only the node it reaches.",
    )
    keeper_path: str = Field(
        default="/clickhouse/tables/{shard}/{database}/{table}",
        description="Keeper path of Replicated tables ({shard} is a server macro).",
    )
    batch_rows: Annotated[int, Field(ge=1)] = 10_000
    flush_interval_s: Annotated[float, Field(gt=0)] = 0.5
    retry_backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    fault_fail_s: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="Fault drill: every insert fails for this long after the writer starts.",
    )

    @field_validator("database")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError("database must be letters, digits and underscores")
        return value


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    max_upload_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=200 * 1024 * 1024, description="Largest file POST /v1/uploads/tradeshow takes."
    )
    publish_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="A request not answered within this gets 504 (uploads and erasure excepted).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses/CIDRs of reverse proxies whose X-Forwarded-For is believed "
        '(JSON, e.g. ["10.0.0.0/8"]); from anyone else the header is ignored.',
    )
    header_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0,
        description="A connection that has not sent its whole request head by then is closed.",
    )
    keepalive_timeout_s: Annotated[float, Field(ge=0)] = Field(
        default=15.0, description="An idle keep-alive connection is closed after this."
    )
    max_connections: Annotated[int, Field(ge=1)] = Field(
        default=4096, description="Open connections the server holds at once; more are closed."
    )
    max_connections_per_client: Annotated[int, Field(ge=1)] = Field(
        default=128, description="Open connections one client address may hold at once."
    )
    body_min_rate_bytes_s: Annotated[int, Field(ge=0)] = Field(
        default=4096,
        description="Request bodies slower than this (after a 10 s grace) are cut off (408).",
    )
    write_rate_per_s: Annotated[float, Field(gt=0)] = Field(
        default=500.0, description="Sustained writes per second per API key (every POST route)."
    )
    write_rate_burst: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="Writes an API key may send at once before 429s start."
    )
    upload_concurrency: Annotated[int, Field(ge=1)] = Field(
        default=2, description="Uploads processed at once; more get 429 with Retry-After."
    )
    log_lines_per_s: Annotated[float, Field(gt=0)] = Field(
        default=20.0, description="Warnings per second the server logs about refused clients."
    )


class WebSettings(_Section):
    rate_per_s: Annotated[float, Field(gt=0)] = Field(
        default=2.0,
        description="Sustained posts per second per visitor of a public form (token + client).",
    )
    rate_burst: Annotated[int, Field(ge=1)] = Field(
        default=20, description="Posts one visitor may send at once before 429s start."
    )


class AuthSettings(_Section):
    keys: list[ApiKeyEntry] = Field(
        default_factory=list,
        description="API keys as JSON (hashed entries that `leadflow keys env` prints).",
    )
    keys_file: Path | None = Field(
        default=None,
        description="JSON file of hashed API keys that `leadflow keys` manages "
        "(default: keys.json in the data dir).",
    )


class LimitsSettings(_Section):
    earliest_time: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Event times before this are refused (ISO 8601).",
    )
    future_skew_s: Annotated[float, Field(ge=0)] = Field(
        default=86400.0, description="Event times more than this ahead of now are refused."
    )
    max_amount: Annotated[float, Field(gt=0)] = Field(
        default=1e12, description="Largest deal amount accepted (absolute value)."
    )
    max_call_duration_s: Annotated[int, Field(gt=0)] = Field(
        default=86400, description="Longest call duration accepted, in seconds."
    )
    upload_max_rows: Annotated[int, Field(ge=1)] = Field(
        default=2_000_000, description="Rows one upload may hold."
    )
    upload_max_empty_rows: Annotated[int, Field(ge=1)] = Field(
        default=10_000, description="Consecutive empty rows after which an upload stops reading."
    )
    upload_max_columns: Annotated[int, Field(ge=1)] = Field(
        default=256, description="Columns one upload row may have."
    )
    upload_max_cell_chars: Annotated[int, Field(ge=1)] = Field(
        default=32_767, description="Characters one upload cell may hold (Excel's own limit)."
    )


class NormalizeSettings(_Section):
    default_phone_region: str = Field(
        default="CN",
        description="ISO 3166 alpha-2 region for phone numbers written without a country code.",
    )

    @field_validator("default_phone_region")
    @classmethod
    def _region_code(cls, value: str) -> str:
        value = value.strip().upper()
        if len(value) != 2 or not value.isalpha():
            raise ValueError("must be a two-letter region code such as CN or US")
        return value


class CallsSettings(_Section):
    twilio_auth_token: SecretStr | None = Field(
        default=None, description="Twilio auth token; verifies X-Twilio-Signature."
    )
    twilio_public_url: str | None = Field(
        default=None, description="The URL Twilio posts status callbacks to, as Twilio sees it."
    )
    asterisk_timezone: str = Field(
        default="Asia/Shanghai", description="Time zone of the PBX's AMI Cdr times."
    )

    @field_validator("asterisk_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_time_zone(value)


class SocialSettings(_Section):
    meta_verify_token: SecretStr | None = Field(
        default=None,
        description="Meta webhook verify token (echoed hub.challenge when it matches).",
    )
    meta_app_secret: SecretStr | None = Field(
        default=None, description="Meta app secret; verifies X-Hub-Signature-256."
    )
    meta_access_token: SecretStr | None = Field(
        default=None, description="Page access token the fetcher sends to the Graph API."
    )
    meta_graph_url: str = Field(
        default="https://graph.facebook.com/v21.0", description="Graph API base URL."
    )
    linkedin_client_secret: SecretStr | None = Field(
        default=None,
        description="LinkedIn app client secret; answers challengeCode, verifies X-LI-Signature.",
    )
    linkedin_access_token: SecretStr | None = Field(
        default=None, description="OAuth token the fetcher sends to LinkedIn's API."
    )
    linkedin_api_url: str = Field(
        default="https://api.linkedin.com/rest", description="LinkedIn REST API base URL."
    )
    fetch_max_tries: Annotated[
        int, Field(ge=1, description="Fetch attempts per lead before its dead letter.")
    ] = 5
    fetch_backoff_s: Annotated[
        float, Field(ge=0, description="First pause between fetch attempts (doubles).")
    ] = 0.5
    fetch_timeout_s: Annotated[
        float, Field(gt=0, description="Per-request timeout of the fetcher.")
    ] = 10.0


class NotifySettings(_Section):
    max_attempts: Annotated[int, Field(ge=1, description="Delivery attempts per rep notice.")] = 5
    backoff_s: Annotated[float, Field(ge=0, description="First pause between attempts.")] = 1.0
    timeout_s: Annotated[float, Field(gt=0, description="Per-attempt timeout.")] = 10.0
    smtp_host: str = Field(default="127.0.0.1", description="SMTP server for email notices.")
    smtp_port: int = 25
    smtp_from: str = "leadflow@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None


class NurtureSettings(_Section):
    secret: SecretStr | None = Field(
        default=None,
        description="Key that signs tracking links (open, click, unsubscribe). Unset: one is "
        "made at first use and kept in <data dir>/nurture-secret; set it when several servers "
        "answer tracking links.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Base URL of the tracking endpoints as a recipient's mail client reaches it.",
    )
    tick_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=0.5,
        description="How often the nurture agent looks for due steps: the most a due step "
        "waits for its tick.",
    )
    smtp_host: str = Field(default="127.0.0.1", description="SMTP server for nurture email.")
    smtp_port: int = 25
    smtp_from: str = "leadflow@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    webhook_url: str | None = Field(
        default=None,
        description="An email service provider's JSON endpoint; when set, nurture email is "
        "posted there (Idempotency-Key: the send id) instead of SMTP.",
    )
    max_attempts: Annotated[int, Field(ge=1)] = Field(
        default=5, description="Delivery attempts per email before it is dead-lettered."
    )
    backoff_s: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="First pause between delivery attempts (doubles each time)."
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="Per-attempt timeout of the mailer."
    )


class WorkerSettings(_Section):
    app_id: str = "leadflow"
    web_port: int = Field(default=0, description="Faust's own web port; 0 disables it.")
    sla_check_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="How often unaccepted leads are checked against their SLA."
    )
    rules_dir: Path | None = Field(
        default=None, description="Folder of the rule files (default: ./config, else the bundled)."
    )
    batch_size: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="Most events an agent takes from its stream at once."
    )
    batch_within_s: Annotated[float, Field(gt=0)] = Field(
        default=0.02, description="How long an agent waits to fill a batch before it works."
    )
    rocksdb_write_buffer_mb: Annotated[int, Field(ge=1, le=256)] = Field(
        default=4,
        description="Write buffer of each table store (one per table and partition; at most "
        "two in memory per store).",
    )
    rocksdb_block_cache_mb: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=8, description="Read cache of each table store (one per table and partition)."
    )
    frame_max_bytes: Annotated[int, Field(ge=0, le=900_000)] = Field(
        default=262_144,
        description="Largest frame of records an agent sends to one partition of the stream "
        "core's own topics (streams/frames.py); 0 sends every record as its own message.",
    )


class Settings(BaseSettings):
    """Everything configurable, resolved once; pass it, never re-read the environment."""

    model_config = SettingsConfigDict(
        frozen=True,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        validation_alias="LEADFLOW_DATA_DIR",
        description="Broker logs, the embedded ClickHouse data and pid files live here.",
    )
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    http: HttpSettings = HttpSettings()
    normalize: NormalizeSettings = NormalizeSettings()
    web: WebSettings = WebSettings()
    notify: NotifySettings = NotifySettings()
    calls: CallsSettings = CallsSettings()
    social: SocialSettings = SocialSettings()
    worker: WorkerSettings = WorkerSettings()
    nurture: NurtureSettings = NurtureSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias="LEADFLOW_API_KEY",
        description="The key leadflow's own CLI sends to a server (leads, funnel, erase …).",
    )

    @property
    def clickhouse_dsn(self) -> str:
        """The DSN in force: the configured one, or the embedded engine under data_dir."""
        if self.clickhouse.dsn:
            return self.clickhouse.dsn
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def kafka_home(self) -> Path:
        return self.data_dir / "kafka"


SECTIONS: dict[str, type[_Section]] = {
    "kafka": KafkaSettings,
    "clickhouse": ClickHouseSettings,
    "http": HttpSettings,
    "normalize": NormalizeSettings,
    "web": WebSettings,
    "notify": NotifySettings,
    "calls": CallsSettings,
    "social": SocialSettings,
    "worker": WorkerSettings,
    "nurture": NurtureSettings,
    "auth": AuthSettings,
    "limits": LimitsSettings,
}


def environment_variables() -> dict[str, str]:
    """Every environment variable leadflow reads, with its description."""
    names = {
        "LEADFLOW_DATA_DIR": Settings.model_fields["data_dir"].description or "",
        "LEADFLOW_API_KEY": Settings.model_fields["api_key"].description or "",
    }
    for section, model in SECTIONS.items():
        for field_name, info in model.model_fields.items():
            names[f"{section}_{field_name}".upper()] = info.description or ""
    return names


def load_settings() -> Settings:
    """Build the settings from the environment, turning validation errors into one message."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from exc
