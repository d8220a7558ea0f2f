"""Level 3: audit subjects, habitual knife carrier assessments, Level 3 read quotas

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_APPEND_ONLY = ("audit_subjects", "hkc_assessments")


def upgrade() -> None:
    # The pseudonymous people an audited read returned: "who looked at me" without scanning JSON.
    op.create_table(
        "audit_subjects",
        sa.Column("event_seq", _BIG, nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_seq"], ["audit_events.seq"], name=op.f("fk_audit_subjects_event_seq_audit_events")
        ),
        sa.PrimaryKeyConstraint("event_seq", "person_id", name=op.f("pk_audit_subjects")),
    )
    op.create_index(op.f("ix_audit_subjects_person_id"), "audit_subjects", ["person_id"])

    # Partnership review of the habitual knife carrier list: every grading kept, latest wins.
    op.create_table(
        "hkc_assessments",
        sa.Column("id", _BIG, autoincrement=True, nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("rag", sa.String(length=10), nullable=False),
        sa.Column("lead_agency", sa.String(length=100), nullable=False),
        sa.Column("previous_rag", sa.String(length=10), nullable=True),
        sa.Column("previous_lead_agency", sa.String(length=100), nullable=True),
        sa.Column("graded_by", sa.String(length=100), nullable=False),
        sa.Column("graded_by_org", sa.String(length=100), nullable=False),
        sa.Column("graded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purpose", sa.String(length=60), nullable=False),
        sa.Column("case_reference", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hkc_assessments")),
    )
    op.create_index(op.f("ix_hkc_assessments_person_id"), "hkc_assessments", ["person_id"])

    # Level 3 reads per principal per day (Europe/London), counted atomically.
    op.create_table(
        "l3_quota_usage",
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "day", name=op.f("pk_l3_quota_usage")),
    )

    dialect = op.get_bind().dialect.name
    for table in _APPEND_ONLY:
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
    dialect = op.get_bind().dialect.name
    for table in _APPEND_ONLY:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
        elif dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    op.drop_table("l3_quota_usage")
    op.drop_index(op.f("ix_hkc_assessments_person_id"), table_name="hkc_assessments")
    op.drop_table("hkc_assessments")
    op.drop_index(op.f("ix_audit_subjects_person_id"), table_name="audit_subjects")
    op.drop_table("audit_subjects")
