"""Authorization hardening: grant requests awaiting a second person, an hourly Level 3 limit.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Roles that need a second person (Level 3, ig_lead, admin) wait here for an IG lead.
    op.create_table(
        "grant_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("organisation", sa.String(length=100), nullable=False),
        sa.Column("grants", sa.JSON(), nullable=False),
        sa.Column("removals", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("requested_by_org", sa.String(length=100), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grant_requests")),
    )
    op.create_index(op.f("ix_grant_requests_client_id"), "grant_requests", ["client_id"])
    op.create_index(op.f("ix_grant_requests_organisation"), "grant_requests", ["organisation"])
    op.create_index(op.f("ix_grant_requests_state"), "grant_requests", ["state"])
    # Level 3 reads per principal per clock hour, beside the daily count.
    op.create_table(
        "l3_quota_hourly",
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "hour", name=op.f("pk_l3_quota_hourly")),
    )


def downgrade() -> None:
    op.drop_table("l3_quota_hourly")
    op.drop_index(op.f("ix_grant_requests_state"), table_name="grant_requests")
    op.drop_index(op.f("ix_grant_requests_organisation"), table_name="grant_requests")
    op.drop_index(op.f("ix_grant_requests_client_id"), table_name="grant_requests")
    op.drop_table("grant_requests")
