"""Time-bound roles: a role assignment may end at `expires_at`.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("client_roles") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_client_roles_expires_at"), "client_roles", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_client_roles_expires_at"), table_name="client_roles")
    with op.batch_alter_table("client_roles") as batch:
        batch.drop_column("expires_at")
