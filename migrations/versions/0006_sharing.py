"""Delta Sharing: materialised versions of published tables and their files

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sharing_table_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("table_key", sa.String(length=310), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("product", sa.String(length=100), nullable=False),
        sa.Column("suppressed", sa.Boolean(), nullable=False),
        sa.Column("areas", sa.JSON(), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("row_count", _BIG, nullable=False),
        sa.Column("schema_string", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sharing_table_versions")),
        sa.UniqueConstraint(
            "table_key", "version", name=op.f("uq_sharing_table_versions_table_key_version")
        ),
        sa.UniqueConstraint(
            "table_key",
            "fingerprint",
            name=op.f("uq_sharing_table_versions_table_key_fingerprint"),
        ),
    )
    op.create_index(
        op.f("ix_sharing_table_versions_table_key"), "sharing_table_versions", ["table_key"]
    )
    op.create_table(
        "sharing_files",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("version_pk", sa.String(length=36), nullable=False),
        sa.Column("path", sa.String(length=300), nullable=False),
        sa.Column("row_count", _BIG, nullable=False),
        sa.Column("size_bytes", _BIG, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_pk"],
            ["sharing_table_versions.id"],
            name=op.f("fk_sharing_files_version_pk_sharing_table_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sharing_files")),
    )
    op.create_index(op.f("ix_sharing_files_version_pk"), "sharing_files", ["version_pk"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sharing_files_version_pk"), table_name="sharing_files")
    op.drop_table("sharing_files")
    op.drop_index(op.f("ix_sharing_table_versions_table_key"), table_name="sharing_table_versions")
    op.drop_table("sharing_table_versions")
