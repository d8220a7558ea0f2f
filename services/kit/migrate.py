"""Alembic, driven from code so that `together db upgrade` and the tests run the same thing."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from services.kit.db import normalise_url


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolation would choke on % in passwords or options.
    config.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """``alembic check``: raise when the models and the migrated database disagree."""
    command.check(alembic_config(database_url))


def current_heads() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return set(script.get_heads())
