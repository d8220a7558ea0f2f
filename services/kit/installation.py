"""Whether the configured data folder and database hold an installation of the platform.

Asked before a command touches either: opening a SQLite URL creates the file and building the
platform writes development keys into the data folder, so a command run from the wrong folder
would otherwise leave a fresh, empty installation behind and fail later on a missing table.
Nothing here creates anything.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from services.kit.db import normalise_url
from services.kit.settings import Settings


def display_url(url: str) -> str:
    """The database URL as it may be shown to a person: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unreadable database URL)"


def _database_problem(url: str) -> str | None:
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        return "is not a database URL"
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        # Connecting to a missing SQLite file would create it.
        if database and database != ":memory:" and not Path(database).is_file():
            return "is not migrated"
    engine = create_engine(parsed, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return "is not migrated"
            if connection.execute(text("SELECT version_num FROM alembic_version")).first() is None:
                return "is not migrated"
    except SQLAlchemyError:
        # The driver's message may quote the URL, password included: say only what failed.
        return "cannot be reached"
    finally:
        engine.dispose()
    return None


def missing_installation(settings: Settings) -> str | None:
    """None when the data folder exists and the database is migrated; otherwise one line saying
    which folder and database were looked at and what to do."""
    data_dir = settings.data_dir.resolve()
    problems = []
    if not data_dir.is_dir():
        problems.append("the folder does not exist")
    url = settings.resolved_database_url
    database = _database_problem(url)
    if database is not None:
        problems.append(f"database {display_url(url)} {database}")
    if not problems:
        return None
    return (
        f"no Together installation at data folder {data_dir} ({'; '.join(problems)}): "
        "run 'together db upgrade' first or set TOGETHER_DATA_DIR"
    )
