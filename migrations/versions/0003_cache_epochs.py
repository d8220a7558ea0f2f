"""Cache epochs: counters the database bumps whenever principals or dataset versions change

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 08:30:00

Each server process keeps principals and current dataset versions in memory, keyed by these
counters; a request reads the counters (one small query) and reuses what it has while they are
unchanged. Triggers bump them in the same transaction as the change, whoever makes it (the API,
the CLI, or an operator with SQL), so a disabled client or a new version is seen by the very
next request in every process.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# table -> the epoch its changes bump
_WATCHED = {
    "clients": "principals",
    "client_roles": "principals",
    "datasets": "datasets",
    "dataset_versions": "datasets",
    "version_files": "datasets",
}


def upgrade() -> None:
    op.create_table(
        "cache_epochs",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cache_epochs")),
    )
    op.execute("INSERT INTO cache_epochs (name, value) VALUES ('principals', 0), ('datasets', 0)")
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION bump_cache_epoch() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN UPDATE cache_epochs SET value = value + 1 WHERE name = TG_ARGV[0]; "
            "RETURN NULL; END $$"
        )
    for table, epoch in _WATCHED.items():
        if dialect == "postgresql":
            op.execute(
                f"CREATE TRIGGER {table}_bump_epoch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_epoch('{epoch}')"
            )
        elif dialect == "sqlite":
            for verb in ("INSERT", "UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_bump_epoch_{verb.lower()} AFTER {verb} ON {table} "
                    f"BEGIN UPDATE cache_epochs SET value = value + 1 WHERE name = '{epoch}'; END"
                )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in _WATCHED:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_bump_epoch ON {table}")
        elif dialect == "sqlite":
            for verb in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_bump_epoch_{verb}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS bump_cache_epoch()")
    op.drop_table("cache_epochs")
