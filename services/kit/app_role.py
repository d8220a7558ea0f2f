"""The application's least-privilege PostgreSQL role.

Migrations run as the schema owner; the application connects as another role that may read and
write ordinary tables but only read and append to the append-only ones (the audit tables and
any other table that carries a `<table>_no_change` trigger): no UPDATE, DELETE or TRUNCATE, no
DDL, no change to `alembic_version`. The triggers refuse changes as well, so a grant given by
mistake is still not enough; and an owner who disables them breaks the signed checkpoints.
Run `together db grant-app-role ROLE` as the owner after every `together db upgrade`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Engine, text

from services.kit.errors import BadRequest

_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass
class RoleGrants:
    role: str
    schema: str
    read_write: list[str]
    append_only: list[str]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def grant_app_role(engine: Engine, role: str) -> RoleGrants:
    """Give `role` exactly what the application needs in the current schema (PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        raise BadRequest("roles and grants exist on PostgreSQL only; SQLite relies on triggers")
    if not _ROLE.match(role):
        raise BadRequest("a role name is letters, digits and underscores")
    with engine.begin() as connection:
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        exists = connection.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).first()
        if exists is None:
            raise BadRequest(f"role {role} does not exist: create it first (CREATE ROLE ... LOGIN)")
        owner = connection.execute(
            text(
                "SELECT 1 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
                "WHERE n.nspname = :s AND r.rolname = :r"
            ),
            {"s": schema, "r": role},
        ).first()
        if owner is not None:
            raise BadRequest(f"role {role} owns schema {schema}: the app must not be the owner")
        tables = list(
            connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY tablename"),
                {"s": schema},
            ).scalars()
        )
        append_only = set(
            connection.execute(
                text(
                    "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND t.tgname = c.relname || '_no_change'"
                ),
                {"s": schema},
            ).scalars()
        )
        r, s = _quote(role), _quote(schema)
        connection.execute(text(f"GRANT USAGE ON SCHEMA {s} TO {r}"))
        connection.execute(text(f"REVOKE CREATE ON SCHEMA {s} FROM {r}"))
        read_write, appended = [], []
        for table in tables:
            t = f"{s}.{_quote(table)}"
            connection.execute(text(f"REVOKE ALL ON {t} FROM {r}"))
            if table == "alembic_version":
                connection.execute(text(f"GRANT SELECT ON {t} TO {r}"))
            elif table in append_only:
                connection.execute(text(f"GRANT SELECT, INSERT ON {t} TO {r}"))
                appended.append(table)
            else:
                connection.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {r}"))
                read_write.append(table)
        connection.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}"))
    return RoleGrants(role, schema, read_write, appended)
