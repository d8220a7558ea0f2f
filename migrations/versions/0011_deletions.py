"""Deletions with signed certificates (retention, withdrawal, erasure, rectification), the
lease that lets one replica at a time run retention, and purged or withdrawn dataset versions.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_deletions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.String(100), nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_by", sa.String(100), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("case_reference", sa.String(100), nullable=True),
        sa.Column("contract_version", sa.String(40), nullable=True),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("rows_removed", sa.BigInteger(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("sharing_files", sa.JSON(), nullable=False),
        sa.Column("audit_seq_start", sa.BigInteger(), nullable=True),
        sa.Column("audit_seq_end", sa.BigInteger(), nullable=True),
        sa.Column("certified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("signature", sa.String(200), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_deletions")),
    )
    op.create_index(op.f("ix_data_deletions_dataset_id"), "data_deletions", ["dataset_id"])
    op.create_index(op.f("ix_data_deletions_state"), "data_deletions", ["state"])
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("purged_by", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_column("purged_by")
        batch.drop_column("purged_at")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("withdrawn_at")
    op.drop_table("job_leases")
    op.drop_index(op.f("ix_data_deletions_state"), table_name="data_deletions")
    op.drop_index(op.f("ix_data_deletions_dataset_id"), table_name="data_deletions")
    op.drop_table("data_deletions")
