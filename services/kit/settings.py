"""One settings object for the whole platform, read from ``TOGETHER_*`` environment variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values an operator might leave in from an example file. Outside development the platform
# refuses to start with any of them rather than run with a guessable secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "placeholder", "secret", "password", "example"}
)


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOGETHER_", extra="ignore")

    env: Environment = Environment.production
    data_dir: Path = Path("./var")
    database_url: str | None = None
    contracts_dir: Path = Field(default_factory=lambda: _repository_root() / "contracts")
    policies_dir: Path = Field(default_factory=lambda: _repository_root() / "policies")
    partnership_file: Path = Field(
        default_factory=lambda: _repository_root() / "config" / "partnership.yaml"
    )
    products_dir: Path = Field(
        default_factory=lambda: _repository_root() / "services" / "products" / "definitions"
    )

    # Keys. Either a key file (JSON written by ``together keys generate``) or the individual
    # values. In development a key file is generated in the data folder on first use.
    key_file: Path | None = None
    hmac_key: str | None = None
    encryption_key: str | None = None
    jwt_private_key: str | None = None

    issuer: str = "together"
    audience: str = "together-api"
    token_lifetime_seconds: int = Field(default=900, ge=60, le=86400)
    token_leeway_seconds: int = Field(default=30, ge=0, le=300)

    upload_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    upload_max_decompressed_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    upload_max_rows: int = Field(default=5_000_000, gt=0)
    idempotency_lease_seconds: int = Field(default=30, ge=1)
    audit_seal_interval_seconds: float = Field(default=2.0, gt=0, le=3600)

    # Delta Sharing (services/sharing): published tables for analysts' own tools.
    sharing_file: Path = Field(
        default_factory=lambda: _repository_root() / "config" / "sharing.yaml",
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
    sharing_refresh_seconds: float = Field(
        default=300,
        ge=0,
        le=86400,
        description="How often each server process materialises published tables whose sources "
        "have a new version; 0: only when recipients ask",
    )

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.env == Environment.development:
            return self
        for name in ("hmac_key", "encryption_key", "jwt_private_key"):
            value = getattr(self, name)
            if value is not None and value.strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"TOGETHER_{name.upper()} holds a placeholder value; set a real secret "
                    "(see `together keys generate`) or TOGETHER_ENV=development"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
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
