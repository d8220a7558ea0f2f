"""Alembic, driven from code so that `together db upgrade` and the tests run the same thing."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from services.kit.db import normalise_url
from services.kit.resources import resource_dir


def migrations_dir() -> Path:
    """The repository's migrations/ in a checkout; the wheel's copy once installed."""
    return resource_dir("migrations")


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


@functools.cache
def _code_heads() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.get_heads())


def current_heads() -> set[str]:
    """The head revision(s) of the migrations this code ships."""
    return set(_code_heads())


def database_revisions(engine: Engine) -> set[str]:
    """The revision(s) the database is at (empty when it was never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def schema_problem(engine: Engine) -> str | None:
    """None when the database is at this code's head revision; otherwise one sentence naming
    both revisions and what to do. The code must not run against another schema: a missing
    column or trigger would surface as wrong answers or a missing audit guarantee."""
    expected = ", ".join(sorted(_code_heads()))
    found = database_revisions(engine)
    if found == set(_code_heads()):
        return None
    if not found:
        return (
            f"the database is not migrated (this code needs revision {expected}): "
            "run `together db upgrade`"
        )
    return (
        f"the database is at revision {', '.join(sorted(found))} but this code needs revision "
        f"{expected}: run `together db upgrade`"
    )
