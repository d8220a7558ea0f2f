"""Contract lifecycle: versions of each contract (draft, approved, active, retired) and the
sign-offs that approve them.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contract_versions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.String(100), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("yaml_text", sa.Text(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("classification", sa.JSON(), nullable=True),
        sa.Column("validation", sa.JSON(), nullable=True),
        sa.Column("loaded_by", sa.String(100), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("activated_by", sa.String(100), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contract_versions")),
        sa.UniqueConstraint(
            "dataset_id", "version", name=op.f("uq_contract_versions_dataset_id_version")
        ),
        sa.UniqueConstraint(
            "dataset_id",
            "content_sha256",
            name=op.f("uq_contract_versions_dataset_id_content_sha256"),
        ),
    )
    op.create_index(op.f("ix_contract_versions_dataset_id"), "contract_versions", ["dataset_id"])
    op.create_index(op.f("ix_contract_versions_state"), "contract_versions", ["state"])
    op.create_table(
        "contract_signoffs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version_id", sa.String(36), nullable=False),
        sa.Column("capacity", sa.String(10), nullable=False),
        sa.Column("organisation", sa.String(100), nullable=False),
        sa.Column("signed_by", sa.String(100), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["contract_versions.id"],
            name=op.f("fk_contract_signoffs_version_id_contract_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contract_signoffs")),
        sa.UniqueConstraint(
            "version_id", "capacity", name=op.f("uq_contract_signoffs_version_id_capacity")
        ),
        sa.UniqueConstraint(
            "version_id", "signed_by", name=op.f("uq_contract_signoffs_version_id_signed_by")
        ),
    )
    op.create_index(op.f("ix_contract_signoffs_version_id"), "contract_signoffs", ["version_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_contract_signoffs_version_id"), table_name="contract_signoffs")
    op.drop_table("contract_signoffs")
    op.drop_index(op.f("ix_contract_versions_state"), table_name="contract_versions")
    op.drop_index(op.f("ix_contract_versions_dataset_id"), table_name="contract_versions")
    op.drop_table("contract_versions")
