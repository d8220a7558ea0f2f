"""One settings object for the whole platform, read from ``TOGETHER_*`` environment variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit import resources

# Values an operator might leave in from an example file. Outside development the platform
# refuses to start with any of them rather than run with a guessable secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "placeholder", "secret", "password", "example"}
)


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


def _is_placeholder(value: SecretStr | None) -> bool:
    return value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS


def _resource(name: resources.Resource, *parts: str) -> Path:
    """A default shipped with the code (a checkout's folder or the installed wheel's copy)."""
    return resources.resource_dir(name).joinpath(*parts)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOGETHER_", extra="ignore")

    env: Environment = Environment.production
    data_dir: Path = Path("./var")
    # A DSN may carry the database password: kept out of reprs and logs like the keys below.
    database_url: SecretStr | None = None
    contracts_dir: Path = Field(default_factory=lambda: _resource("contracts"))
    policies_dir: Path = Field(default_factory=lambda: _resource("policies"))
    partnership_file: Path = Field(default_factory=lambda: _resource("config", "partnership.yaml"))
    products_dir: Path = Field(default_factory=resources.products_dir)

    # Keys. Either a key file (JSON written by ``together keys generate``) or the individual
    # values. In development a key file is generated in the data folder on first use.
    key_file: Path | None = None
    hmac_key: SecretStr | None = None
    encryption_key: SecretStr | None = None
    jwt_private_key: SecretStr | None = None

    issuer: str = "together"
    audience: str = "together-api"
    token_lifetime_seconds: int = Field(default=900, ge=60, le=86400)
    token_leeway_seconds: int = Field(default=30, ge=0, le=300)
    # Client authentication at /oauth/token (services/identity/oauth.py).
    client_secrets_allowed: bool = Field(
        default=True,
        description="accept client secrets; false: only private_key_jwt (signed assertions)",
    )
    token_endpoint_url: str | None = Field(
        default=None,
        description="the token endpoint's public URL, accepted as a client assertion's `aud` "
        "(besides the issuer)",
    )
    token_client_failures_per_minute: int = Field(
        default=5, ge=1, le=1000, description="failed authentications of one client id (429)"
    )
    token_address_failures_per_minute: int = Field(
        default=20, ge=1, le=10000, description="failed authentications from one address (429)"
    )
    token_lockout_failures: int = Field(
        default=20, ge=1, le=10000, description="failures of one client that lock it out"
    )
    token_lockout_seconds: int = Field(
        default=900, ge=60, le=86400, description="over how long, and for how long (429)"
    )
    auth_rejection_window_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="one audit event per kind of refused token and address in this window; "
        "the others are counted and summarised",
    )

    upload_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    upload_max_decompressed_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    upload_max_rows: int = Field(default=5_000_000, gt=0)
    # The child process that parses an upload (services/ingestion/worker.py).
    upload_parse_memory_bytes: int = Field(
        default=4 * 1024 * 1024 * 1024,
        ge=0,
        description="address space the parse child may add to what it inherits (0: no cap)",
    )
    upload_parse_silence_seconds: int = Field(
        default=120, ge=5, description="a parse child silent this long is killed (422)"
    )

    # The HTTP server's own limits (gateway/server.py): what one client may hold or send.
    http_header_max_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, description="request line and headers (431)"
    )
    http_header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="from connection to a complete request head (408)"
    )
    http_body_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="window in which a body must progress (408)"
    )
    http_body_min_bytes_per_second: int = Field(
        default=1024, ge=0, description="slowest average body rate over one window (408)"
    )
    http_keep_alive_seconds: float = Field(
        default=5.0, gt=0, le=300, description="idle time before a kept-alive connection closes"
    )
    http_max_connections: int = Field(
        default=1000, ge=2, description="open connections per worker; the oldest idle one yields"
    )
    http_max_requests_in_flight: int = Field(
        default=1000, ge=1, description="requests being answered per worker at once (503)"
    )
    http_access_log: bool = Field(
        default=True, description="one JSON line per request: route template, status, duration"
    )
    idempotency_lease_seconds: int = Field(default=30, ge=1)
    audit_seal_interval_seconds: float = Field(default=2.0, gt=0, le=3600)

    # Information-governance review: sign-in, sessions and alert rules.
    ig_session_idle_seconds: int = Field(
        default=1800, ge=60, le=86400, description="sign-out after this long without a request"
    )
    ig_session_max_seconds: int = Field(
        default=43200, ge=300, le=604800, description="sign-out this long after signing in"
    )
    ig_cookie_secure: bool | None = Field(
        default=None,
        description="mark the session cookie Secure; unset: Secure except in development and test",
    )
    ig_lockout_attempts: int = Field(
        default=5, ge=1, le=100, description="failed sign-ins of one account that lock it"
    )
    ig_lockout_seconds: int = Field(
        default=900, ge=1, le=86400, description="the window the failed sign-ins are counted in"
    )
    ig_oidc_metadata_url: str | None = Field(
        default=None, description="OpenID Connect discovery document of the organisation's provider"
    )
    ig_oidc_client_id: str | None = Field(default=None, description="OpenID Connect client id")
    ig_oidc_client_secret: SecretStr | None = Field(
        default=None, description="OpenID Connect client secret"
    )
    ig_oidc_username_claim: str = Field(
        default="email", description="ID-token claim matched to a user's name"
    )
    ig_oidc_org_claim: str = Field(
        default="org", description="ID-token claim that names the person's organisation"
    )
    ig_oidc_org_map: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: org-claim value -> organisation id; other values are refused",
    )
    audit_timezone: str = Field(
        default="Europe/London", description="time zone of office hours and daily volumes"
    )
    audit_office_start_hour: int = Field(
        default=8, ge=0, le=23, description="office hours start (Monday to Friday)"
    )
    audit_office_end_hour: int = Field(
        default=18, ge=1, le=24, description="office hours end (Monday to Friday)"
    )
    audit_volume_factor: float = Field(
        default=3.0, gt=1, description="flag a reader's day above this multiple of their median"
    )
    audit_volume_minimum: int = Field(
        default=50, ge=1, description="a day below this many reads is never flagged for volume"
    )
    audit_volume_history_days: int = Field(
        default=28, ge=3, le=366, description="days of history a reader's median is taken over"
    )
    audit_denials_threshold: int = Field(
        default=5, ge=2, description="denials of one actor within the window that raise a flag"
    )
    audit_denials_window_seconds: int = Field(
        default=600, ge=1, description="the window repeated denials are counted in"
    )
    audit_level3_burst_reads: int = Field(
        default=20,
        ge=2,
        description="Level 3 reads of one actor within the window that raise a flag",
    )
    audit_level3_burst_window_seconds: int = Field(
        default=600, ge=1, description="the window a burst of Level 3 reads is counted in"
    )

    # Audit checkpoints (services/audit/checkpoints.py).
    audit_checkpoint_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=3600,
        description="Most seconds between two signed audit checkpoints, even when idle",
    )
    audit_stall_window_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86400,
        description="How long an audit event may wait for its seal (and a checkpoint past its "
        "cadence) before Level 2 and 3 reads answer 503 and /readyz says why",
    )
    audit_key_file: Path | None = Field(
        default=None,
        description="PEM Ed25519 private key signing audit checkpoints (`together audit keygen`)",
    )
    audit_signing_key: SecretStr | None = Field(
        default=None, description="The audit checkpoint signing key as a PEM value"
    )
    audit_retired_public_keys: str | None = Field(
        default=None,
        description="Comma-separated base64 Ed25519 public keys of earlier checkpoint keys",
    )
    benchmark_only_skip_audit: bool = Field(
        default=False,
        description="BENCHMARK ONLY: product reads skip their audit write; development only",
    )

    @model_validator(mode="after")
    def _audit_settings(self) -> Settings:
        if self.benchmark_only_skip_audit and self.env != Environment.development:
            raise ValueError(
                "TOGETHER_BENCHMARK_ONLY_SKIP_AUDIT turns the audit of reads off and is refused "
                "unless TOGETHER_ENV=development"
            )
        key = self.audit_signing_key
        if self.env != Environment.development and _is_placeholder(key):
            raise ValueError("TOGETHER_AUDIT_SIGNING_KEY holds a placeholder value")
        return self

    # Delta Sharing (services/sharing): published tables for analysts' own tools.
    sharing_file: Path = Field(
        default_factory=lambda: _resource("config", "sharing.yaml"),
        description="The published tables: shares, schemas and tables of Level 1 and 2 products",
    )
    sharing_endpoint: str | None = Field(
        default=None,
        description="Public URL of the sharing endpoint (ending /delta-sharing), put in profiles "
        "and file URLs; default: taken from each request",
    )
    sharing_token_lifetime_seconds: int = Field(
        default=7 * 86400,
        ge=300,
        le=366 * 86400,
        description="Lifetime of the bearer token in a sharing profile (usable on the sharing "
        "endpoint only)",
    )
    sharing_url_lifetime_seconds: int = Field(
        default=300,
        ge=10,
        le=900,
        description="Lifetime of a file URL given in a sharing query's answer (bound to its "
        "recipient; refused once the recipient is disabled); at most 15 minutes",
    )
    retention_interval_seconds: float = Field(
        default=86400,
        ge=0,
        le=7 * 86400,
        description="How often the servers run retention (one replica at a time), removing rows "
        "past their contract's retention with a signed certificate; 0: only `together "
        "retention run`",
    )
    deleted_copies_interval_seconds: float = Field(
        default=60,
        gt=0,
        le=3600,
        description="How soon each server process removes its local copies of data that "
        "another replica deleted (cached object copies, cached product results)",
    )
    sharing_refresh_seconds: float = Field(
        default=300,
        ge=0,
        le=86400,
        description="How often each server process materialises published tables whose sources "
        "have a new version; 0: only when recipients ask",
    )

    # Where dataset versions, Delta Sharing materialisations and their caches live
    # (services/storage/objects.py). Staging of upload bodies always stays in the data folder.
    storage_url: str | None = Field(
        default=None,
        description="unset or file:///path: a local folder (default: datasets/ in the data "
        "folder); s3://bucket/prefix: S3-compatible object storage",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint, e.g. http://seaweedfs:8333 (default: AWS)"
    )
    s3_region: str | None = Field(default=None, description="S3 region (default: us-east-1)")
    s3_access_key_id: SecretStr | None = Field(
        default=None, description="S3 access key id (default: the standard AWS variables)"
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret access key (default: the standard AWS variables)"
    )
    storage_cache_max_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=0,
        description="local read-through cache of objects (immutable files, never stale) in "
        "the data folder's cache/; the least recently used go beyond this size; 0: no cache",
    )

    # Operations (gateway/metrics.py, services/kit/logs.py, gateway/server.py).
    log_format: str = Field(
        default="text",
        pattern="^(text|json)$",
        description="text: readable lines; json: one JSON object a line",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="on SIGTERM, how long requests in flight may take to finish",
    )

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.env == Environment.development:
            return self
        for name in ("hmac_key", "encryption_key", "jwt_private_key"):
            if _is_placeholder(getattr(self, name)):
                raise ValueError(
                    f"TOGETHER_{name.upper()} holds a placeholder value; set a real secret "
                    "(see `together keys generate`) or TOGETHER_ENV=development"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'together.db').resolve()}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def is_development(self) -> bool:
        return self.env == Environment.development


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
