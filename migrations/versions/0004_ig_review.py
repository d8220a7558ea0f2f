"""Information-governance review: local accounts for people, alert reviews (append-only)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # People who sign in to the review pages. Local accounts carry an Argon2id password hash;
    # accounts that sign in through an OpenID Connect provider have none.
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("organisation", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=50), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_index(op.f("ix_users_organisation"), "users", ["organisation"])

    # Every review of an alert is kept; the latest one is the alert's state.
    op.create_table(
        "audit_alert_reviews",
        sa.Column("id", _BIG, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.String(length=80), nullable=False),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(length=100), nullable=False),
        sa.Column("reviewer_org", sa.String(length=100), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_seq", _BIG, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_alert_reviews")),
        sa.ForeignKeyConstraint(
            ["event_seq"],
            ["audit_events.seq"],
            name=op.f("fk_audit_alert_reviews_event_seq_audit_events"),
        ),
    )
    op.create_index(
        op.f("ix_audit_alert_reviews_alert_id"), "audit_alert_reviews", ["alert_id"]
    )

    table = "audit_alert_reviews"
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        )


def downgrade() -> None:
    table = "audit_alert_reviews"
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
    elif dialect == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    op.drop_index(op.f("ix_audit_alert_reviews_alert_id"), table_name=table)
    op.drop_table(table)
    op.drop_index(op.f("ix_users_organisation"), table_name="users")
    op.drop_table("users")
